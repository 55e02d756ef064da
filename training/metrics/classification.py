"""Classification metrics: the stage (confusion, F1, accuracy, log loss) and binary propensities (ROC AUC,
average precision, log loss). Every one accepts `sample_weight` (see the package doc)."""

from __future__ import annotations

import numpy as np

from stats.averages import unthreaded_dot, weighted_nanmean

# --------------------------------------------------------------------------------------------------------
# Classification: the stage


def confusion_matrix(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """C[i, j] = number (or total weight) of rows of true class i predicted as class j.

    Args:
        y_true: (n,) int class indices in [0, n_classes).
        y_pred: (n,) int class indices in [0, n_classes).
        n_classes: number of classes.
        sample_weight: (n,) weights; None counts rows (then C is int64).

    Returns:
        (n_classes, n_classes) matrix, rows = true class, columns = predicted class.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cells = np.bincount(y_true * n_classes + y_pred, weights=sample_weight, minlength=n_classes * n_classes)
    return cells.reshape(n_classes, n_classes)


def f1_from_confusion(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1 = 2 TP / (2 TP + FP + FN) from a confusion matrix (rows true, columns predicted).

    A class that is neither in the truth nor predicted has no F1 (NaN); a class that is only in one of them
    has F1 0.

    Returns:
        (n_classes,) float.
    """
    c = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(c)
    denominator = c.sum(axis=0) + c.sum(axis=1)  # (2 TP + FP + FN)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * tp / denominator, np.nan)


def f1_per_class(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None
) -> np.ndarray:
    """Per-class F1 (see `f1_from_confusion`): (n_classes,), NaN for a class neither true nor predicted."""
    return f1_from_confusion(confusion_matrix(y_true, y_pred, n_classes, sample_weight))


def macro_f1(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, sample_weight: np.ndarray | None = None
) -> float:
    """Unweighted mean of the per-class F1 over the classes present in the truth or the predictions.

    The same as scikit-learn's `f1_score(average="macro", zero_division=0)` with its default labels.
    """
    f1 = f1_per_class(y_true, y_pred, n_classes, sample_weight)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")


def accuracy(y_true: np.ndarray, y_pred: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Share (or weighted share) of rows whose predicted class is the true class."""
    return weighted_nanmean((np.asarray(y_true) == np.asarray(y_pred)).astype(np.float64), sample_weight)


def multiclass_log_loss(
    y_true: np.ndarray, proba: np.ndarray, sample_weight: np.ndarray | None = None, eps: float = 1e-7
) -> float:
    """-mean_i log p_i[y_i], probabilities clipped to [eps, 1].

    Args:
        y_true: (n,) class indices.
        proba: (n, n_classes) predicted probabilities (rows summing to 1).
        sample_weight: (n,) weights.
        eps: lower clip, so that a confident mistake costs -log(eps) rather than infinity.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    p = np.clip(np.asarray(proba, dtype=np.float64)[np.arange(len(y_true)), y_true], eps, 1.0)
    return weighted_nanmean(-np.log(p), sample_weight)


# --------------------------------------------------------------------------------------------------------
# Binary propensities


def _tied_groups(
    y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None, descending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The weight of positives and of negatives in each group of tied scores, groups in score order
    (ascending, or descending): what the ranking metrics below are sums over."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    order = np.argsort(-p if descending else p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    group = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1  # one group per distinct score
    return np.bincount(group, weights=ws * ys), np.bincount(group, weights=ws * (1 - ys))


def roc_auc(y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count 1/2.

    Computed from ranks in O(n log n), equal to scikit-learn's `roc_auc_score` (weights included). NaN when
    the rows hold only one class.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        sample_weight: (n,) weights.
    """
    if len(y) == 0:
        return float("nan")
    pos, neg = _tied_groups(y, p, sample_weight, descending=False)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos <= 0 or n_neg <= 0:
        return float("nan")
    neg_below = np.cumsum(neg) - neg
    return unthreaded_dot(pos, neg_below + 0.5 * neg) / (n_pos * n_neg)


def average_precision(y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """PR AUC as average precision: sum over thresholds t (distinct scores, descending) of
    (R_t - R_{t-1}) * P_t, with precision P and recall R of "score >= t".

    Equal to scikit-learn's `average_precision_score` (no interpolation). NaN when there is no positive.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        sample_weight: (n,) weights.
    """
    if len(y) == 0:
        return float("nan")
    pos, neg = _tied_groups(y, p, sample_weight, descending=True)
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    if tp.size == 0 or tp[-1] <= 0:
        return float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    recall = tp / tp[-1]
    return unthreaded_dot(np.diff(recall, prepend=0.0), precision)


def log_loss(
    y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None, eps: float = 1e-7
) -> float:
    """Binary cross-entropy: -mean_i [y_i log p_i + (1 - y_i) log(1 - p_i)], p clipped to [eps, 1 - eps].

    The clip (1e-7 rather than float64's machine epsilon) keeps float32 predictions of exactly 0 or 1 from
    costing infinity.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return weighted_nanmean(-(y * np.log(p) + (1 - y) * np.log1p(-p)), sample_weight)
