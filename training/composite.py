"""Choosing, per head, the scorer the registered model serves: on the validation window only.

For each head the network and every baseline of the run that has it and can be served from the
aggregates (`LightGBMAggregates`, `LogisticRF`, `BGNBD`: they expose `served(head)`) are scored on the
validation rows with the head's gate metric. A baseline takes a head from the network only when it is
better beyond the validation window's noise: the paired bootstrap interval (rows resampled, both scorers on
the same resamples) of its metric minus the network's lies above zero; among such baselines the best point
value wins. The margin matters: the validation window also early-stopped and calibrated the baselines
(LightGBM's rounds, the calibrators), so a small edge there is optimistic, and on UCI Online Retail edges of
about 0.01 AUC on validation reversed on the test window. The test window never takes part: the
composite's test figures report a choice made before them (`predictor.composite.Composite`).

Metrics (all higher is better, the gate's): stage, macro-F1 of the most probable stage on every row; a
binary head, ROC AUC on its labelled rows (unsubscribe: rows with a logged send; cart abandonment: rows with
an open cart); the action-outcome head, the negative log loss of the predicted outcome of the logged action,
on rows with a logged decision and its outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np

from features.schema import ACTIONS, STAGES
from predictor.composite import ACTION, NETWORK, Composite
from predictor.served_heads import AggregateHead
from stats import paired_bootstrap
from training.baselines.logistic import propensity_labels
from training.data import FeatureData
from training.interface import Predictions
from training.metrics import log_loss, macro_f1, roc_auc
from training.sequence import SequenceScorer

log = logging.getLogger(__name__)

# The name of the registered model's result when it is a composite.
SERVED = "composite"
# Each head's validation metric (the gate's), where it is not ROC AUC.
METRICS = {"stage": "macro_f1", ACTION: "-log_loss of the logged action's outcome"}


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


# A head's validation rows for one scorer: row-aligned columns, and the statistic over them (it takes
# `sample_weight`, as the bootstrap passes a resample as weights).
Rows = tuple[tuple[np.ndarray, ...], Callable[..., float]]


def _stage_f1(y: np.ndarray, pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return macro_f1(y, pred, len(STAGES), sample_weight)


def _neg_log_loss(y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    return -log_loss(y, p, sample_weight)


def _rows(head: str, data: FeatureData, answer: np.ndarray | None) -> Rows | None:
    """The rows a head is judged on, for one scorer's answer (None: no answer, or no rows to judge)."""
    if answer is None or not len(data):
        return None
    if head == "stage":
        return (data.stage, np.asarray(answer).reshape(len(data), -1).argmax(axis=1)), _stage_f1
    if head == ACTION:
        logged = np.flatnonzero((data.logged_action >= 0) & np.isfinite(data.outcome))
        if not len(logged):
            return None
        p = np.asarray(answer)[logged, data.logged_action[logged]]
        return (data.outcome[logged].astype(np.float64), p), _neg_log_loss
    label = propensity_labels(data, head)
    known = np.isfinite(label)
    if len(np.unique(label[known])) < 2:
        return None
    return (label[known], np.asarray(answer, dtype=np.float64)[known]), roc_auc


def _answer(head: str, network: Predictions, served: dict[str, AggregateHead] | None, x: np.ndarray) -> Any:
    """A scorer's answer for a head: the network's, or the served baseline model's."""
    if head == "stage":
        return network.stage_proba if served is None else served["stage"].predict(x)
    if head == ACTION:
        if served is None:
            return network.action_outcome
        return np.column_stack([served[f"outcome_{a}"].predict(x) for a in ACTIONS])
    return network.propensity.get(head) if served is None else served[head].predict(x)


def choose_heads(
    network: Predictions,
    baselines: Mapping[str, Any],
    valid: FeatureData,
    *,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> Composite:
    """Per head, the network unless a baseline beats it on validation beyond noise (see the module
    docstring); the evidence records every scorer's validation value and each baseline's paired interval.

    Args:
        network: the network's predictions on the validation rows.
        baselines: the run's fitted baselines by name (those without `served` are not candidates).
        valid: the validation split.
        n_boot, alpha, seed: the paired bootstrap of each baseline against the network.
    """
    x = valid.aggregates.astype(np.float64)
    composite = Composite()
    for head in ["stage", *network.propensity, ACTION]:
        evidence: dict[str, Any] = {"metric": METRICS.get(head, "roc_auc")}
        net_rows = _rows(head, valid, _answer(head, network, None, x))
        evidence[NETWORK] = net_rows[1](*net_rows[0]) if net_rows else float("nan")
        best, best_value, chosen = NETWORK, -np.inf, None
        for name, baseline in _servable(baselines).items():
            served = _served_heads(baseline, head)
            rows = None if served is None else _rows(head, valid, _answer(head, network, served, x))
            if rows is None:
                continue
            value = rows[1](*rows[0])
            evidence[name] = value
            if net_rows is None:
                continue  # nothing to compare with: the network keeps the head
            diff = paired_bootstrap(rows[0], net_rows[0], rows[1], net_rows[1], n_boot=n_boot, seed=seed,
                                    alpha=alpha)  # fmt: skip
            evidence[f"{name} - {NETWORK}"] = [diff.point, diff.lo, diff.hi]
            if np.isfinite(diff.lo) and diff.lo > 0 and value > best_value:
                best, best_value, chosen = name, value, served
        composite.sources[head] = best
        composite.evidence[head] = evidence
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
