"""The one small interface every model family sits behind, so that evaluation treats them alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from training.data import FeatureData


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


@runtime_checkable
class Scorer(Protocol):
    """fit on the training window (validation for early stopping), predict any split."""

    name: str

    def fit(self, train: FeatureData, valid: FeatureData) -> Scorer: ...

    def predict(self, data: FeatureData, k: int = 50) -> Predictions: ...
