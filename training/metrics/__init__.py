"""Evaluation metrics as plain numpy functions, each with its definition (intervals: `stats`).

Every metric that averages over rows accepts `sample_weight`, a non-negative weight per row. The bootstrap
uses it: a bootstrap resample of n rows is the same as weighting each row by the number of times it was
drawn, so `bootstrap_ci` draws those counts and calls the statistic with them, never copying the data.

Recommendation metrics are computed per row (rows with no relevant item get NaN and are left out of every
average) against the full catalogue: `top_items` is the scorer's ranking over every item, not over a sample.
"""

from training.metrics.calibration import ReliabilityCurve, expected_calibration_error, reliability_curve
from training.metrics.classification import (
    accuracy,
    average_precision,
    confusion_matrix,
    f1_from_confusion,
    f1_per_class,
    log_loss,
    macro_f1,
    multiclass_log_loss,
    roc_auc,
)
from training.metrics.ranking import (
    RANKING_METRICS,
    catalogue_coverage,
    hit_rate_at_k,
    mrr_at_k,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    relevance_hits,
    split_repeat_explore,
    unique_relevant,
)

__all__ = [
    "RANKING_METRICS",
    "ReliabilityCurve",
    "accuracy",
    "average_precision",
    "catalogue_coverage",
    "confusion_matrix",
    "expected_calibration_error",
    "f1_from_confusion",
    "f1_per_class",
    "hit_rate_at_k",
    "log_loss",
    "macro_f1",
    "mrr_at_k",
    "multiclass_log_loss",
    "ndcg_at_k",
    "ranking_metrics",
    "recall_at_k",
    "relevance_hits",
    "reliability_curve",
    "roc_auc",
    "split_repeat_explore",
    "unique_relevant",
]
