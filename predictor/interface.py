"""What a model says about customers (`Predictions`), and what the service needs of a served model
(`InferenceUnit`): the service types against the protocol, not against the network's classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from features.encoder import EncodedBatch, EncoderConfig
from features.vocab import Vocabulary


@dataclass
class Predictions:
    """What a scorer says about each row; a head it does not have stays None (or absent).

    Attributes:
        stage_proba: (n, len(STAGES)) probabilities over `schema.STAGES`.
        propensity: target -> (n,) probabilities; the build's label targets and "unsubscribe".
        top_items: (n, k) vocabulary item indices, best first, ranked over the whole catalogue.
        top_scores: optional (n, k) score of each top item (for the sequence model, its probability of
            being the next item under the softmax over the whole catalogue).
        action_outcome: (n, len(ACTIONS)) predicted probability of the outcome (a purchase in the
            decision's window) if that action were taken; column `no_send` is the baseline for uplift.
    """

    stage_proba: np.ndarray | None = None
    propensity: dict[str, np.ndarray] = field(default_factory=dict)
    top_items: np.ndarray | None = None
    top_scores: np.ndarray | None = None
    action_outcome: np.ndarray | None = None

    def rows(self, lo: int, hi: int, k: int | None = None) -> Predictions:
        """Rows lo..hi (and at most the first `k` items of each), e.g. one request's share of a batch."""

        def cut(a: np.ndarray | None, items: bool = False) -> np.ndarray | None:
            if a is None:
                return None
            return a[lo:hi, :k] if items and k is not None else a[lo:hi]

        return Predictions(
            stage_proba=cut(self.stage_proba),
            propensity={name: p[lo:hi] for name, p in self.propensity.items()},
            top_items=cut(self.top_items, items=True),
            top_scores=cut(self.top_scores, items=True),
            action_outcome=cut(self.action_outcome),
        )


@runtime_checkable
class InferenceUnit(Protocol):
    """A served model: scores encoded customers and knows its vocabularies and catalogue."""

    @property
    def vocab(self) -> Vocabulary: ...

    @property
    def encoder_config(self) -> EncoderConfig: ...

    @property
    def items(self) -> np.ndarray:
        """Item id per vocabulary index (pad and OOV are empty strings)."""
        ...

    @property
    def catalogue_size(self) -> int: ...

    @property
    def head_sources(self) -> dict[str, str]:
        """Which scorer answers each head where it is not the network (a composite's baseline heads)."""
        ...

    def score(self, batch: EncodedBatch, k: int) -> Predictions:
        """Every head's calibrated answer for each row of the encoder's output; the top `k` items."""
        ...

    def score_arrays(
        self,
        tokens: Mapping[str, np.ndarray],
        aggregates: np.ndarray,
        k: int,
        history: Mapping[str, np.ndarray] | None = None,
    ) -> Predictions:
        """The same from padded (n, max_len) tokens, (n, n_aggregates) aggregates and the (n, H) item
        profile (a features split: `training.data.FeatureData.history`; None: empty profiles)."""
        ...

    def weight_problems(self) -> list[str]:
        """Non-finite weights or calibration (empty: none), for the smoke test."""
        ...
