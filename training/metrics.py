"""Evaluation metrics as plain numpy functions, each with its definition (intervals: `stats`).

Every metric that averages over rows accepts `sample_weight`, a non-negative weight per row. The bootstrap
uses it: a bootstrap resample of n rows is the same as weighting each row by the number of times it was
drawn, so `bootstrap_ci` draws those counts and calls the statistic with them, never copying the data.

Recommendation metrics are computed per row (rows with no relevant item get NaN and are left out of every
average) against the full catalogue: `top_items` is the scorer's ranking over every item, not over a sample.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stats.averages import unthreaded_dot, weighted_nanmean

# Rows compared at once when matching ranked items against relevant items (bounds a (rows, k, m) array).
_CHUNK_ROWS = 4096


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


def roc_auc(y: np.ndarray, p: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties count 1/2.

    Computed from ranks in O(n log n), equal to scikit-learn's `roc_auc_score` (weights included). NaN when
    the rows hold only one class.

    Args:
        y: (n,) 0/1 labels.
        p: (n,) scores.
        sample_weight: (n,) weights.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    order = np.argsort(p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    group = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1  # one group per distinct score, ascending
    pos = np.bincount(group, weights=ws * ys)
    neg = np.bincount(group, weights=ws * (1 - ys))
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
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if len(y) == 0:
        return float("nan")
    order = np.argsort(-p, kind="stable")
    ps, ys, ws = p[order], y[order], w[order]
    group = np.cumsum(np.r_[True, ps[1:] != ps[:-1]]) - 1  # distinct scores, descending
    tp = np.cumsum(np.bincount(group, weights=ws * ys))
    fp = np.cumsum(np.bincount(group, weights=ws * (1 - ys)))
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


@dataclass(frozen=True)
class ReliabilityCurve:
    """Calibration by equal-width bins of the predicted probability.

    Attributes:
        edges: (n_bins + 1,) bin edges on [0, 1].
        count: (n_bins,) rows (or weight) per bin.
        mean_predicted: (n_bins,) mean predicted probability per bin, NaN where empty.
        fraction_positive: (n_bins,) observed share of positives per bin, NaN where empty.
    """

    edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds b/n_bins <= p < (b+1)/n_bins; p = 1 falls in the last bin."""
    return np.clip(np.floor(np.asarray(p, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_curve(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10, sample_weight: np.ndarray | None = None
) -> ReliabilityCurve:
    """Per equal-width bin of p: the number of rows, mean(p) and mean(y) (a reliability diagram's data)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    b = _bins(p, n_bins)
    count = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, np.bincount(b, weights=w * p, minlength=n_bins) / count, np.nan)
        frac = np.where(count > 0, np.bincount(b, weights=w * y, minlength=n_bins) / count, np.nan)
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), count, mean_p, frac)


def expected_calibration_error(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10, sample_weight: np.ndarray | None = None
) -> float:
    """ECE = sum_b (n_b / N) * |mean(y)_b - mean(p)_b| over `n_bins` equal-width bins of p on [0, 1].

    Empty bins contribute nothing. NaN for no rows.
    """
    curve = reliability_curve(y, p, n_bins, sample_weight)
    total = curve.count.sum()
    if total <= 0:
        return float("nan")
    gap = np.abs(np.nan_to_num(curve.fraction_positive - curve.mean_predicted))
    return unthreaded_dot(curve.count / total, gap)


# --------------------------------------------------------------------------------------------------------
# Recommendations, ranked against the full catalogue


def _padded(rows: Sequence[np.ndarray], fill: int) -> np.ndarray:
    """A list of 1-D int arrays as an (n, max_len) matrix padded with `fill` (at least one column)."""
    width = max([len(r) for r in rows], default=0) or 1
    out = np.full((len(rows), width), fill, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


# Fill values that never equal each other nor a real item index.
_FILL_A = np.iinfo(np.int64).min
_FILL_B = np.iinfo(np.int64).min + 1


def _contains(candidates: np.ndarray, members: np.ndarray) -> np.ndarray:
    """out[i, j] = candidates[i, j] is among members[i, :] (row-wise isin), chunked to bound memory.

    Args:
        candidates: (n, k) int.
        members: (n, m) int, padded with a value that does not occur in candidates.
    """
    out = np.zeros(candidates.shape, dtype=bool)
    for start in range(0, len(candidates), _CHUNK_ROWS):
        c = candidates[start : start + _CHUNK_ROWS]
        m = members[start : start + _CHUNK_ROWS]
        out[start : start + _CHUNK_ROWS] = (c[:, :, None] == m[:, None, :]).any(axis=2)  # (rows, k, m)
    return out


def unique_relevant(relevant: Sequence[np.ndarray], min_item: int = 0) -> list[np.ndarray]:
    """Each row's relevant items as distinct ints, without ids below `min_item` (padding, unknown)."""
    return [np.unique(np.asarray(r, dtype=np.int64)[np.asarray(r) >= min_item]) for r in relevant]


def relevance_hits(top_items: np.ndarray, relevant: Sequence[np.ndarray]) -> np.ndarray:
    """hits[i, j] = the item at rank j + 1 of row i is relevant to row i.

    Args:
        top_items: (n, k) ranked item indices, best first (any negative id is treated as "no item").
        relevant: n arrays of relevant item indices (distinct).

    Returns:
        (n, k) bool.
    """
    top = np.asarray(top_items, dtype=np.int64)
    if len(top) != len(relevant):
        raise ValueError(f"top_items has {len(top)} rows but relevant has {len(relevant)}")
    top = np.where(top < 0, _FILL_B, top)
    return _contains(top, _padded(relevant, _FILL_A))


def _check_k(hits: np.ndarray, k: int) -> None:
    if not 1 <= k <= hits.shape[1]:
        raise ValueError(f"k={k} but the ranking holds {hits.shape[1]} items per row")


def recall_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Recall@K per row: |top-K ∩ relevant| / |relevant|; NaN where the row has no relevant item.

    Args:
        hits: (n, >= k) from `relevance_hits`.
        n_relevant: (n,) number of relevant items per row.
        k: cut-off.

    Returns:
        (n,) float.
    """
    _check_k(hits, k)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, hits[:, :k].sum(axis=1) / n_rel, np.nan)


def ndcg_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """NDCG@K per row with binary relevance: DCG / IDCG, DCG = sum_{r <= K, relevant} 1 / log2(r + 1),
    IDCG = sum_{r <= min(K, |relevant|)} 1 / log2(r + 1); NaN where the row has no relevant item.

    Returns:
        (n,) float.
    """
    _check_k(hits, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))  # (k,) rank r -> 1 / log2(r + 1)
    dcg = hits[:, :k].astype(np.float64) @ discount
    ideal_cum = np.r_[0.0, np.cumsum(discount)]  # IDCG for 0 .. k relevant items
    n_rel = np.asarray(n_relevant, dtype=np.int64)
    idcg = ideal_cum[np.minimum(n_rel, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_rel > 0, dcg / idcg, np.nan)


def mrr_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """Reciprocal rank per row: 1 / rank of the first relevant item in the top K, 0 if none there;
    NaN where the row has no relevant item. Its mean is MRR@K.

    Returns:
        (n,) float.
    """
    _check_k(hits, k)
    top = hits[:, :k]
    first = top.argmax(axis=1)  # index of the first True (0 if none)
    rr = np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)
    return np.where(np.asarray(n_relevant) > 0, rr, np.nan)


def hit_rate_at_k(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> np.ndarray:
    """1 if any relevant item is in the top K, else 0; NaN where the row has no relevant item.

    Returns:
        (n,) float.
    """
    _check_k(hits, k)
    return np.where(np.asarray(n_relevant) > 0, hits[:, :k].any(axis=1).astype(np.float64), np.nan)


def catalogue_coverage(top_items: np.ndarray, k: int, catalogue_size: int) -> float:
    """Distinct items recommended in the top K over all rows, divided by the catalogue size.

    Negative ids (no item) are not counted.

    Args:
        top_items: (n, >= k) ranked item indices.
        k: cut-off.
        catalogue_size: number of recommendable items.
    """
    top = np.asarray(top_items)[:, :k]
    if catalogue_size <= 0:
        return float("nan")
    return float(np.unique(top[top >= 0]).size / catalogue_size)


RANKING_METRICS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "hit": hit_rate_at_k,
}


def ranking_metrics(
    top_items: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-row Recall, NDCG, reciprocal rank and hit at each K, keyed like "recall_at_10".

    Rows with no relevant item hold NaN (left out of the averages: take `weighted_nanmean`).

    Args:
        top_items: (n, k_max) ranked item indices.
        relevant: n arrays of distinct relevant item indices.
        ks: cut-offs, each at most k_max.

    Returns:
        name -> (n,) float.
    """
    hits = relevance_hits(top_items, relevant)
    n_rel = np.array([len(r) for r in relevant], dtype=np.int64)
    return {f"{name}_at_{k}": fn(hits, n_rel, k) for k in ks for name, fn in RANKING_METRICS.items()}


def split_repeat_explore(
    relevant: Sequence[np.ndarray], history: np.ndarray | Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Splits each row's relevant items into "repeat" (in the row's history) and "explore" (new) items.

    Scoring a ranking against one of the parts treats the other part as not relevant, so a model that only
    re-recommends past items shows high repeat and zero explore metrics (NOTES.md).

    Args:
        relevant: n arrays of relevant item indices.
        history: (n, L) item indices the customer interacted with before the cutoff, padding allowed (any
            value not in `relevant`), or n arrays.

    Returns:
        (repeat, explore): two lists of n arrays.
    """
    hist = _padded(list(history), _FILL_B) if not isinstance(history, np.ndarray) else history
    hist = np.asarray(hist, dtype=np.int64)
    rel = _padded(relevant, _FILL_A)
    seen = _contains(rel, hist)  # (n, m): relevant item j of row i was in its history
    repeat, explore = [], []
    for i, r in enumerate(relevant):
        s = seen[i, : len(r)]
        repeat.append(np.asarray(r)[s])
        explore.append(np.asarray(r)[~s])
    return repeat, explore
