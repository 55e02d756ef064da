"""The composite model: per head, the network or the baseline that beat it on the validation window.

The network answers every head; a head where a baseline of the same training run did better on the
validation window, beyond that window's noise, is answered by that baseline instead (a LightGBM booster, a
logistic regression or a BG/NBD model on the aggregates: `predictor.served_heads`). The choice is made by
`training.composite.choose_heads` on the validation window and reported on the test window, so the service
never serves a head that a baseline of its own run clearly beat on validation. Items stay the network's.

Files (in the predictor's folder): `composite.json` (which scorer serves each head, the validation evidence,
each served head's entry) and `composite/` (LightGBM boosters, one text file each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from features.schema import ACTIONS, STAGES
from predictor.interface import Predictions
from predictor.served_heads import AggregateHead

NETWORK = "sequence"
COMPOSITE_FILE, COMPOSITE_DIR = "composite.json", "composite"
# The action-outcome head is chosen as one ("action"); it is served as one model per action.
ACTION = "action"


@dataclass
class Composite:
    """Which scorer serves each head, and the served heads that are not the network's.

    Attributes:
        sources: head ("stage", a propensity head, "action") -> the scorer that serves it (`NETWORK` or a
            baseline's name).
        heads: the served baseline heads: "stage", a propensity head, or "outcome_<action>" for every action
            when the action head is a baseline's.
        evidence: head -> {"metric": its validation metric, scorer -> value}: why each was chosen.
    """

    sources: dict[str, str] = field(default_factory=dict)
    heads: dict[str, AggregateHead] = field(default_factory=dict)
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)

    def apply(self, pred: Predictions, aggregates: np.ndarray) -> Predictions:
        """The network's predictions with each baseline-served head replaced by its baseline's answer.

        Args:
            pred: the network's predictions for n rows.
            aggregates: (n, n_aggregates) the same rows' aggregates, in `AGGREGATE_NAMES` order.
        """
        if not self.heads:
            return pred
        x = np.asarray(aggregates, dtype=np.float64)
        n = len(x)
        out = replace(pred, propensity=dict(pred.propensity))
        if "stage" in self.heads:
            out.stage_proba = self.heads["stage"].predict(x).reshape(n, len(STAGES))
        for name in list(out.propensity):
            if name in self.heads:
                out.propensity[name] = self.heads[name].predict(x)
        if self.sources.get(ACTION, NETWORK) != NETWORK:
            out.action_outcome = np.column_stack(
                [self.heads[f"outcome_{a}"].predict(x) for a in ACTIONS]
            ).reshape(n, len(ACTIONS))
        return out

    @property
    def needs_lightgbm(self) -> bool:
        """A served head is a LightGBM booster (the registered model then requires lightgbm)."""
        return any(h.booster is not None for h in self.heads.values())

    def describe(self) -> str:
        """One line: head -> scorer, for logs and the run's tags."""
        return ", ".join(f"{head}: {source}" for head, source in self.sources.items())

    # -- persistence -----------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        entries = {name: head.to_entry(folder / COMPOSITE_DIR, name) for name, head in self.heads.items()}
        document = {"sources": self.sources, "evidence": self.evidence, "heads": entries}
        (folder / COMPOSITE_FILE).write_text(json.dumps(document, indent=2, default=float))

    @classmethod
    def load(cls, folder: Path) -> Composite | None:
        """The composite saved in a predictor's folder; None for a predictor saved without one."""
        path = folder / COMPOSITE_FILE
        if not path.exists():
            return None
        document = json.loads(path.read_text())
        heads = {
            name: AggregateHead.from_entry(entry, folder / COMPOSITE_DIR)
            for name, entry in document["heads"].items()
        }
        return cls(document["sources"], heads, document.get("evidence", {}))
