"""Choosing, per head, the scorer the registered model serves: on the validation window only.

For each head the network and every baseline of the run that has it and can be served from the
aggregates (`LightGBMAggregates`, `LogisticRF`: they expose `served(head)`) are scored on the validation
rows with the head's metric; the best wins, the network on ties (`predictor.composite.Composite`). The
test window never takes part: the composite's test figures are then an honest report of a choice made
before them.

Metrics (all higher is better): stage, the negative multiclass log loss on every row; a binary head, ROC
AUC on its labelled rows (unsubscribe: rows with a logged send); the action-outcome head, the negative
log loss of the predicted outcome of the logged action, on rows with a logged decision and its outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from features.schema import ACTIONS
from predictor.composite import ACTION, NETWORK, Composite
from predictor.served_heads import AggregateHead
from training.baselines.logistic import propensity_labels
from training.data import FeatureData
from training.interface import Predictions
from training.metrics import log_loss, multiclass_log_loss, roc_auc
from training.sequence import SequenceScorer

log = logging.getLogger(__name__)

# The name of the registered model's result when it is a composite.
SERVED = "composite"

Served = Callable[[str], AggregateHead]


def _servable(baselines: Mapping[str, Any]) -> dict[str, Any]:
    """The baselines that can serve a head from the aggregates."""
    return {name: b for name, b in baselines.items() if callable(getattr(b, "served", None))}


def _served_heads(baseline: Any, head: str) -> dict[str, AggregateHead] | None:
    """A baseline's served model(s) for a head, keyed as `Composite.heads` keys them; None: it has none."""
    try:
        if head == ACTION:
            return {f"outcome_{a}": baseline.served(f"outcome_{a}") for a in ACTIONS}
        return {head: baseline.served(head)}
    except KeyError:
        return None


def _stage_score(data: FeatureData, proba: np.ndarray | None) -> float:
    if proba is None or not len(data):
        return float("nan")
    return -multiclass_log_loss(data.stage, proba)


def _binary_score(data: FeatureData, head: str, proba: np.ndarray | None) -> float:
    if proba is None:
        return float("nan")
    label = propensity_labels(data, head)
    known = np.isfinite(label)
    if known.sum() == 0 or len(np.unique(label[known])) < 2:
        return float("nan")
    return roc_auc(label[known], np.asarray(proba)[known])


def _action_score(data: FeatureData, outcome: np.ndarray | None) -> float:
    if outcome is None:
        return float("nan")
    logged = (data.logged_action >= 0) & np.isfinite(data.outcome)
    if not logged.any():
        return float("nan")
    rows = np.flatnonzero(logged)
    p = np.asarray(outcome)[rows, data.logged_action[rows]]
    return -log_loss(data.outcome[rows].astype(np.float64), p)


def choose_heads(network: Predictions, baselines: Mapping[str, Any], valid: FeatureData) -> Composite:
    """Per head, the scorer with the best validation metric (the network on ties or where no baseline
    has a finite metric).

    Args:
        network: the network's predictions on the validation rows.
        baselines: the run's fitted baselines by name (those without `served` are not candidates).
        valid: the validation split.
    """
    x = valid.aggregates.astype(np.float64)
    composite = Composite()
    heads: list[str] = ["stage", *network.propensity, ACTION]
    for head in heads:
        candidates: dict[str, dict[str, AggregateHead] | None] = {NETWORK: None}
        for name, baseline in _servable(baselines).items():
            served = _served_heads(baseline, head)
            if served is not None:
                candidates[name] = served
        scores: dict[str, float] = {}
        for name, served in candidates.items():
            if head == "stage":
                proba = network.stage_proba if served is None else served["stage"].predict(x)
                scores[name] = _stage_score(valid, None if proba is None else proba.reshape(len(x), -1))
            elif head == ACTION:
                outcome = (
                    network.action_outcome
                    if served is None
                    else np.column_stack([served[f"outcome_{a}"].predict(x) for a in ACTIONS])
                )
                scores[name] = _action_score(valid, outcome)
            else:
                proba = network.propensity.get(head) if served is None else served[head].predict(x)
                scores[name] = _binary_score(valid, head, proba)
        metric = {"stage": "-log_loss", ACTION: "-log_loss of the logged action"}.get(head, "roc_auc")
        best = NETWORK
        for name, value in scores.items():
            best_value = scores[best]
            if np.isfinite(value) and (not np.isfinite(best_value) or value > best_value):
                best = name
        composite.sources[head] = best
        composite.evidence[head] = {"metric": metric, **scores}
        chosen = candidates[best]
        if chosen is not None:
            composite.heads.update(chosen)
    log.info("composite (chosen on validation): %s", composite.describe())
    return composite


@dataclass
class CompositeScorer:
    """The network with the composite's baseline heads in place: what the registered model serves, as a
    scorer of the evaluation (the same `Composite.apply` as the service's)."""

    network: SequenceScorer
    composite: Composite
    name: str = SERVED

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        return self.composite.apply(self.network.predict(data, k), data.aggregates)


def log_composite(composite: Composite) -> None:
    """Which scorer serves each head, and the validation evidence of the choice."""
    mlflow.set_tag("composite", composite.describe()[:5000])
    mlflow.log_dict({"sources": composite.sources, "validation": composite.evidence}, "composite.json")
