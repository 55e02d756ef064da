"""Recommendation metrics, ranked against the full catalogue: Recall, NDCG, MRR and hit rate at K per row,
catalogue coverage, and the split of the relevant items into repeat and explore."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Rows compared at once when matching ranked items against relevant items (bounds a (rows, k, m) array).
_CHUNK_ROWS = 4096


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
