"""One evaluation for the model and every baseline: the same metrics, names and intervals for all.

`evaluate(pred, data, ...)` scores what a `Scorer` predicted on a split and returns an `EvaluationResult`:
a flat dict of metrics with stable, MLflow-valid names, the row-level data behind them (for paired
comparisons between scorers on the same rows), and the data of the plots (`reports.plots`). Heads a scorer
does not have are skipped. `training.results` compares results and puts several side by side.

Metric names (K in `ks`, <t> a propensity target, <s> a stage, <p> a policy, <e> an estimator); a name with
an interval also has `<name>_lo` and `<name>_hi` (95 % percentile bootstrap over rows by default):

* stage (against the hindsight label): `stage/macro_f1`, `stage/accuracy`, `stage/log_loss` (intervals),
  `stage/f1/<s>`; `stage_true/...` the same against the simulator's latent stage when `truth` is given.
* propensities: `<t>/roc_auc`, `<t>/pr_auc`, `<t>/log_loss`, `<t>/ece` (intervals), `<t>/base_rate`,
  `<t>/mean_predicted`, `<t>/n_rows`. <t> is a key of `Predictions.propensity` (purchase_7d,
  purchase_30d, churn_30d, cart_abandon_24h: on the rows with an open cart only, where it has a label;
  unsubscribe: on the rows with a logged send only, as it means "if mailed"). `info["population"]["heads"]`
  names the rows of a head labelled on some rows only.
* recommendations (full catalogue; rows without a relevant item left out): `rec/recall_at_K`,
  `rec/ndcg_at_K`, `rec/mrr_at_K`, `rec/hit_at_K` (intervals), `rec/coverage_at_K`, `rec/n_rows`; and the
  same under `rec/repeat/` and `rec/explore/` (relevant items the customer had / had not interacted with
  before the cutoff: in the last events the model sees, or in its whole-history item profile).
* policies (logged decisions of the split): `policy/<p>/<e>` with <e> in ips, snips, dm, dr (intervals;
  dm and dr need `action_outcome`), `policy/<p>/ess` (effective sample size share of the importance
  weights), `policy/<p>/send_rate`, `policy/<p>/true_value` (simulated data);
  `policy/logging/value` (mean logged reward, interval) and `policy/logging/true_value`;
  `policy/learned_minus_<q>/<e>` paired differences of the learned policy against no_send, best_constant and
  logging (intervals), and their `true_value`; `policy/n_decisions`.
  Policies: no_send, uniform, playbook, playbook_hindsight (knows the future: a reference, not deployable),
  playbook_true_stage (simulated data), learned, best_constant (the single action, sent wherever allowed,
  with the highest SNIPS value on these rows: chosen on the test rows, so slightly optimistic).
* segments (rows of a build: `features.snapshots.BuildConfig`): every metric above once more on each
  segment's rows, as `segment/<g>/<metric>` for <g> in active, lapsed, new (lapsed customers are in the
  validation and test windows, and their figures differ), and `segment/<g>/n_rows`, which add up to the
  split's rows. The metrics without a prefix, which the gate reads, stay on all rows.

`info["population"]` says who was evaluated (split, cutoffs, rows, the build's rule, rows per segment);
`training.results.population_line` turns it into the line every comparison table carries.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from features.policy import NO_SEND, RuleConfig, eligibility
from features.schema import STAGES
from features.snapshots import SEGMENTS
from features.vocab import FIRST
from stats import RowStatistic, bootstrap_means
from training.data import FeatureData
from training.interface import Predictions
from training.metrics import (
    accuracy,
    average_precision,
    catalogue_coverage,
    confusion_matrix,
    expected_calibration_error,
    f1_per_class,
    log_loss,
    macro_f1,
    multiclass_log_loss,
    ranking_metrics,
    reliability_curve,
    roc_auc,
    split_repeat_explore,
    unique_relevant,
)
from training.ope import (
    ESTIMATORS,
    LoggedBandit,
    aggregates_dict,
    constant_policies,
    effective_sample_size,
    estimator_terms,
    importance_weights,
    logging_terms,
    send_rate,
    standard_policies,
    true_logging_value,
    true_policy_value,
)
from training.results import EvaluationResult, is_valid_metric_name
from training.sim_truth import SimTruth


def evaluate(
    pred: Predictions,
    data: FeatureData,
    *,
    catalogue_size: int,
    ks: Sequence[int] = (5, 10, 20, 50),
    truth: SimTruth | None = None,
    rules: RuleConfig | None = None,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    n_bins: int = 10,
    name: str = "scorer",
    segments: bool = True,
) -> EvaluationResult:
    """Scores one scorer's predictions on one split: stage, propensities, recommendations and policies,
    on all rows and on each segment's.

    Args:
        pred: the scorer's predictions for `data`'s rows.
        data: the split.
        catalogue_size: number of recommendable items (for coverage), e.g. `len(FeatureBuild.catalogue)`.
        ks: cut-offs of the recommendation metrics (those above the ranking's length are skipped).
        truth: the simulator's truth for these rows (`load_sim_truth`), or None on real data.
        rules: business rules the policies obey.
        n_boot: bootstrap resamples per interval (0: no intervals).
        seed: bootstrap seed (the same for every scorer, so their resamples coincide).
        alpha: 1 - coverage of the intervals.
        n_bins: equal-width bins of the calibration error and reliability curves.
        name: the scorer's name.
        segments: also every metric on each segment's rows (when `data.segment` is known).
    """
    if truth is not None and len(truth.stage) != len(data):
        raise ValueError(f"truth has {len(truth.stage)} rows, the data {len(data)}")
    settings: dict[str, Any] = {"catalogue_size": catalogue_size, "ks": ks, "rules": rules, "n_bins": n_bins,
                "boot": {"n_boot": n_boot, "seed": seed, "alpha": alpha}}  # fmt: skip
    result = _evaluate_rows(pred, data, truth, name=name, **settings)
    result.info["population"] = population(data)
    if segments and data.segment is not None:
        for g in SEGMENTS:
            rows = data.segment == g
            result.put(f"segment/{g}/n_rows", int(rows.sum()))
            if not rows.any():
                continue
            part = _evaluate_rows(_take(pred, rows), data.subset(rows), _take_truth(truth, rows), name=name,
                                  **settings)  # fmt: skip
            result.metrics.update({f"segment/{g}/{k}": v for k, v in part.metrics.items()})
            result.rows.update({f"segment/{g}/{k}": v for k, v in part.rows.items()})
            result.info.setdefault("segments", {})[g] = part.info
    bad = [k for k in result.metrics if not is_valid_metric_name(k)]
    if bad:  # a programming error: every name above is built from fixed parts
        raise AssertionError(f"invalid metric names: {bad}")
    return result


def population(data: FeatureData) -> dict[str, Any]:
    """Who is evaluated: the split, its cutoffs and rows, the build's rule, the rows per segment, and for
    a propensity head labelled on some rows only (cart abandonment), the rows its figures cover."""
    counts = {} if data.segment is None else {g: int(np.sum(data.segment == g)) for g in SEGMENTS}
    heads = {t: {"rows": int(np.isfinite(y).sum()), "who": _LABELLED.get(t.split("_")[0], "with a label")}
             for t, y in data.targets.items() if not np.isfinite(y).all()}  # fmt: skip
    return {"split": data.split, "n_cutoffs": len(np.unique(data.cutoff_ms)), "n_rows": len(data),
            "rule": data.population, "segments": counts, "heads": heads}  # fmt: skip


# Who a partly labelled head's figures cover, by the first part of its name.
_LABELLED = {"cart": "with an open cart at the cutoff"}


def _take(pred: Predictions, rows: np.ndarray) -> Predictions:
    """The predictions of some rows (a boolean mask)."""

    def take(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a)[rows]

    return Predictions(stage_proba=take(pred.stage_proba),
                       propensity={k: np.asarray(v)[rows] for k, v in pred.propensity.items()},
                       top_items=take(pred.top_items), top_scores=take(pred.top_scores),
                       action_outcome=take(pred.action_outcome))  # fmt: skip


def _take_truth(truth: SimTruth | None, rows: np.ndarray) -> SimTruth | None:
    return None if truth is None else SimTruth(stage=truth.stage[rows], p_convert=truth.p_convert[rows])


def _evaluate_rows(
    pred: Predictions,
    data: FeatureData,
    truth: SimTruth | None,
    *,
    name: str,
    catalogue_size: int,
    ks: Sequence[int],
    rules: RuleConfig | None,
    n_bins: int,
    boot: Mapping[str, Any],
) -> EvaluationResult:
    """Every metric on these rows (`evaluate` without segments)."""
    result = EvaluationResult(name=name, info={"n_rows": len(data)})
    if pred.stage_proba is not None:
        proba = np.asarray(pred.stage_proba)
        _stage(result, proba, data.stage, "stage", boot)
        if truth is not None and (truth.stage >= 0).any():
            known = truth.stage >= 0
            _stage(result, proba[known], truth.stage[known], "stage_true", boot)
    for target, p in pred.propensity.items():
        labels = _propensity_labels(data, target)
        if labels is not None:
            _propensity(result, target, labels, np.asarray(p, dtype=np.float64), n_bins, boot)
    if pred.top_items is not None:
        _recommendations(result, np.asarray(pred.top_items), data, catalogue_size, ks, boot)
    if data.has_decisions.any():
        _policies(result, pred, data, truth, rules, boot)
    return result


def _stage(
    result: EvaluationResult, proba: np.ndarray, y: np.ndarray, prefix: str, boot: Mapping[str, Any]
) -> None:
    n_classes = len(STAGES)
    y_hat = proba.argmax(axis=1)
    stats = {
        "macro_f1": RowStatistic((y, y_hat), partial(macro_f1, n_classes=n_classes)),
        "accuracy": RowStatistic((y, y_hat), accuracy),
        "log_loss": RowStatistic((y, proba), multiclass_log_loss),
    }
    for metric, stat in stats.items():
        result.rows[f"{prefix}/{metric}"] = stat
        result.put(f"{prefix}/{metric}", stat.ci(**boot))
    for s, f1 in zip(STAGES, f1_per_class(y, y_hat, n_classes), strict=True):
        result.put(f"{prefix}/f1/{s}", f1)
    result.put(f"{prefix}/n_rows", len(y))
    confusion = confusion_matrix(y, y_hat, n_classes)
    if prefix == "stage":
        result.plots.confusion = confusion
    else:
        result.plots.confusion_true = confusion


def _propensity_labels(data: FeatureData, target: str) -> np.ndarray | None:
    """The 0/1 labels of a propensity target (NaN where unknown), or None if the data has none."""
    if target in data.targets:
        return np.asarray(data.targets[target], dtype=np.float64)
    if target == "unsubscribe":
        # "Unsubscribe if mailed", as the models learn it: only rows with a logged send (not no_send) have
        # the label; a row sent nothing has an outcome of 0 that says nothing about the head.
        sent = (data.logged_action >= 0) & (data.logged_action != NO_SEND)
        return np.where(sent, np.asarray(data.unsubscribed, dtype=np.float64), np.nan)
    return None


def _propensity(
    result: EvaluationResult,
    target: str,
    labels: np.ndarray,
    p: np.ndarray,
    n_bins: int,
    boot: Mapping[str, Any],
) -> None:
    known = np.isfinite(labels) & np.isfinite(p)
    if not known.any():
        return
    y, p = labels[known], p[known]
    ece = partial(expected_calibration_error, n_bins=n_bins)
    stats = {
        "roc_auc": RowStatistic((y, p), roc_auc),
        "pr_auc": RowStatistic((y, p), average_precision),
        "log_loss": RowStatistic((y, p), log_loss),
        "ece": RowStatistic((y, p), ece),
    }
    # Intervals on a copy sorted by score: every resample then sorts an already sorted array, in O(n).
    order = np.argsort(p, kind="stable")
    for metric, stat in stats.items():
        result.rows[f"{target}/{metric}"] = stat
        sorted_stat = RowStatistic((y[order], p[order]), stat.statistic)
        result.put(f"{target}/{metric}", sorted_stat.ci(**boot))
    result.put(f"{target}/base_rate", float(y.mean()) if len(y) else float("nan"))
    result.put(f"{target}/mean_predicted", float(p.mean()) if len(p) else float("nan"))
    result.put(f"{target}/n_rows", len(y))
    result.plots.reliability[target] = reliability_curve(y, p, n_bins)


def _recommendations(
    result: EvaluationResult,
    top_items: np.ndarray,
    data: FeatureData,
    catalogue_size: int,
    ks: Sequence[int],
    boot: Mapping[str, Any],
) -> None:
    usable = [k for k in ks if k <= top_items.shape[1]]
    if len(usable) < len(ks):
        result.info["rec_skipped_ks"] = [k for k in ks if k > top_items.shape[1]]
    if not usable:
        return
    # Padding and out-of-vocabulary items can never be recommended: they are not relevant either.
    relevant = unique_relevant(data.next_items, min_item=FIRST)
    # Repeat: an item the customer touched before the cutoff, in the last events or in the whole-history
    # profile (`features.history`): an item bought a year ago is not a discovery.
    seen = data.tokens["item_id"]
    if data.history and data.history["item"].shape[1]:
        seen = np.concatenate([seen, data.history["item"].astype(seen.dtype)], axis=1)
    repeat, explore = split_repeat_explore(relevant, seen)
    per_row: dict[str, np.ndarray] = {}
    for part, rel in (("rec/", relevant), ("rec/repeat/", repeat), ("rec/explore/", explore)):
        for metric, values in ranking_metrics(top_items, rel, usable).items():
            per_row[part + metric] = values
        result.put(part + "n_rows", int(sum(len(r) > 0 for r in rel)))
    intervals = bootstrap_means(per_row, **boot)
    for metric, values in per_row.items():
        result.rows[metric] = RowStatistic((values,))
        result.put(metric, intervals[metric])
    recommendable = np.where(top_items >= FIRST, top_items, -1)  # padding / unknown ids cover nothing
    for k in usable:
        result.put(f"rec/coverage_at_{k}", catalogue_coverage(recommendable, k, catalogue_size))
        result.plots.recall_at_k[k] = intervals[f"rec/recall_at_{k}"]


def _policies(
    result: EvaluationResult,
    pred: Predictions,
    data: FeatureData,
    truth: SimTruth | None,
    rules: RuleConfig | None,
    boot: Mapping[str, Any],
) -> None:
    logged, rows = LoggedBandit.from_feature_data(data)
    if len(logged) == 0:
        return
    sub = data.subset(rows)
    q_hat = None if pred.action_outcome is None else np.asarray(pred.action_outcome, dtype=np.float64)[rows]
    policies = standard_policies(
        sub,
        stage_proba=None if pred.stage_proba is None else np.asarray(pred.stage_proba)[rows],
        action_outcome=q_hat,
        true_stage=None if truth is None else truth.stage[rows],
        rules=rules,
    )
    # The best constant policy, by SNIPS on these rows (NOTES.md: compare against it, paired).
    allowed = eligibility(aggregates_dict(sub), rules).allowed
    constants = constant_policies(allowed)
    best = max(constants, key=lambda a: estimator_terms("snips", logged, constants[a]).value())
    policies["best_constant"] = constants[best]
    result.info["best_constant_action"] = best
    result.put("policy/n_decisions", len(logged))

    p_convert = None if truth is None else truth.p_convert[rows]
    estimators = [e for e in ESTIMATORS if q_hat is not None or e in ("ips", "snips")]
    terms: dict[str, dict[str, RowStatistic]] = {}
    for policy, pi in policies.items():
        terms[policy] = {e: estimator_terms(e, logged, pi, q_hat) for e in estimators}
        for e, stat in terms[policy].items():
            value = stat.ci(**boot)
            result.rows[f"policy/{policy}/{e}"] = stat
            result.put(f"policy/{policy}/{e}", value)
            result.plots.policy_values.setdefault(e, {})[policy] = value
        w = importance_weights(logged, pi)
        result.put(f"policy/{policy}/ess", effective_sample_size(w) / len(w))
        result.put(f"policy/{policy}/send_rate", send_rate(pi))
        if p_convert is not None:
            result.put(f"policy/{policy}/true_value", true_policy_value(pi, p_convert))
            result.plots.true_values[policy] = result.metrics[f"policy/{policy}/true_value"]

    logging = logging_terms(logged)
    result.rows["policy/logging/value"] = logging
    result.put("policy/logging/value", logging.ci(**boot))
    result.put("policy/logging/send_rate", float(np.mean(logged.action != NO_SEND)))
    result.plots.policy_values.setdefault("value", {})["logging"] = result.interval("policy/logging/value")
    if p_convert is not None:
        result.put("policy/logging/true_value", true_logging_value(logged.action, p_convert))
        result.plots.true_values["logging"] = result.metrics["policy/logging/true_value"]

    if "learned" in policies:
        learned = terms["learned"]
        for other in ("no_send", "best_constant", "logging"):
            for e in ("snips", "dr"):
                if e not in learned:
                    continue
                base = logging if other == "logging" else terms[other][e]
                result.put(f"policy/learned_minus_{other}/{e}", learned[e].minus(base, **boot))
            if p_convert is not None:
                result.put(
                    f"policy/learned_minus_{other}/true_value",
                    result.metrics["policy/learned/true_value"]
                    - result.metrics[f"policy/{other}/true_value"],
                )
