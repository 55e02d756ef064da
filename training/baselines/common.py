"""What every baseline shares: parameters and `meta.json`, ranking the whole catalogue, the tuning metric.

`rank_items` puts a row's scored items first and fills the rest of its list by popularity; `history_matrix`
scores a row's own items by event type and recency (the own-history, item k-NN and popularity families all
build on it); `ranking_quality` is the NDCG the recommenders pick their knobs by on the validation split.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy.sparse as sp

from features.schema import EVENT_TYPES, EventType
from features.vocab import FIRST
from training.data import FeatureData

MS_PER_WEEK = 7 * 86_400_000
META = "meta.json"
# Cells of a dense (rows x items) block held at once while ranking: bounds memory on big catalogues.
_BLOCK_CELLS = 1 << 23

_S = TypeVar("_S", bound="_Saveable")


def _event_token(event_type: EventType) -> int:
    """The event-type token of an event type (the enum vocabulary keeps the contract order)."""
    return EVENT_TYPES.index(event_type) + FIRST


PURCHASE_TOKEN = _event_token(EventType.PURCHASE)
CART_TOKEN = _event_token(EventType.ADD_TO_CART)
VIEW_TOKEN = _event_token(EventType.PRODUCT_VIEW)


class _Saveable:
    """sklearn-style parameters (`get_params`) and the `meta.json` every saved baseline starts with."""

    name: str = "baseline"

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters and their current values."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {p: getattr(self, p) for p in names}

    def _write_meta(self, path: Path, fitted: dict[str, Any]) -> None:
        path.mkdir(parents=True, exist_ok=True)
        meta = {"kind": type(self).__name__, "name": self.name, "params": self.get_params(), "fitted": fitted}
        (path / META).write_text(json.dumps(meta, indent=2, default=_json_default))

    @classmethod
    def _read_meta(cls: type[_S], path: Path) -> tuple[_S, dict[str, Any]]:
        meta = json.loads((Path(path) / META).read_text())
        if meta["kind"] != cls.__name__:
            raise ValueError(f"{path} holds a {meta['kind']}, not a {cls.__name__}")
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["params"].items()}
        return cls(**params), meta["fitted"]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _check_items(data: FeatureData, n_items: int) -> None:
    if data.n_items != n_items:
        raise ValueError(f"data has {data.n_items} item indices, the scorer was fitted on {n_items}")


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """Catalogue items (indices >= FIRST), most counted first; ties by index (the vocabulary puts more
    frequent items first, so a tie goes to the item seen more often in the training window)."""
    items = np.arange(FIRST, len(counts))
    return items[np.lexsort((items, -counts[FIRST:]))]


def rank_items(
    scores: sp.csr_matrix, order: np.ndarray, k: int, prior: np.ndarray | None = None
) -> np.ndarray:
    """Top-k items per row over the whole catalogue: scored items first, then the popular fill.

    Items with a positive score come first, by score, ties broken by popularity; the rest of the list is
    `order` (the popularity ranking) without the items already listed. The ordering is exact (a sort on
    (score, popularity rank) rather than a small epsilon added to the scores), so every row gets
    `min(k, len(order))` distinct catalogue items. Only the non-zero scores are sorted, never a dense
    (rows x catalogue) block: with a `prior`, an item a row did not score can only make its list through
    its prior, so the k items of highest prior are the only extra candidates.

    Args:
        scores: (n, n_items) non-negative scores.
        order: (n_catalogue,) every catalogue item, most popular first; other indices are never ranked.
        k: list length.
        prior: optional (n_items,) non-negative score added to every row.

    Returns:
        (n, min(k, len(order))) int64 item indices, best first.
    """
    scores = sp.csr_matrix(scores, dtype=np.float64)
    n, n_items = scores.shape
    k = min(k, len(order))
    out = np.empty((n, k), dtype=np.int64)
    if k == 0 or n == 0:
        return out
    pop_rank = np.full(n_items, len(order), dtype=np.int64)
    pop_rank[order] = np.arange(len(order))
    catalogue = pop_rank < len(order)
    if prior is not None:
        prior = np.where(catalogue, np.asarray(prior, dtype=np.float64), 0.0)
        by_prior = order[np.lexsort((np.arange(len(order)), -prior[order]))][:k]
        by_prior = by_prior[prior[by_prior] > 0]
    head = order[: min(len(order), 2 * k)]  # holds at least k items missing from any row's scored part
    m = len(head)
    batch = max(1, min(8192, _BLOCK_CELLS // (k * m)))
    for lo in range(0, n, batch):
        block = scores[lo : lo + batch]
        b = block.shape[0]
        if prior is not None:
            block = sp.csr_matrix(block, copy=True)
            block.data += prior[block.indices]
            extra = sp.csr_matrix(
                (np.tile(prior[by_prior], b), (np.repeat(np.arange(b), len(by_prior)), np.tile(by_prior, b))),
                shape=block.shape,
            )
            block = sp.csr_matrix(block.maximum(extra))  # a scored item keeps score + prior >= prior
        row = np.repeat(np.arange(b), np.diff(block.indptr))
        col, val = block.indices.astype(np.int64), block.data
        keep = (val > 0) & catalogue[col]
        if block.nnz > 4 * b * k:
            # Many candidates per row (k-NN): only those at or above the row's k-th largest score (ties
            # included) can make the list, and sorting fewer entries is what makes ranking fast.
            keep &= val >= _kth_largest(block, k)[row]
        row, col, val = row[keep], col[keep], val[keep]
        sort = np.lexsort((pop_rank[col], -val, row))
        row, col = row[sort], col[sort]
        within = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        top = within < k
        kept = np.full((b, k), -1, dtype=np.int64)
        kept[row[top], within[top]] = col[top]
        n_kept = np.bincount(row[top], minlength=b)
        # The fill: the head of the popularity order without the items kept, in order.
        taken = (kept[:, :, None] == head[None, None, :]).any(axis=1)  # (b, m)
        fill = head[np.argsort(taken, axis=1, kind="stable")]  # free items first, in popularity order
        j = np.arange(k)[None, :]
        fill_at = np.clip(j - n_kept[:, None], 0, m - 1)
        out[lo : lo + b] = np.where(j < n_kept[:, None], kept, np.take_along_axis(fill, fill_at, axis=1))
    return out


def _kth_largest(matrix: sp.csr_matrix, k: int) -> np.ndarray:
    """(n_rows,) the k-th largest stored value of each row (-inf where a row stores fewer than k)."""
    counts = np.diff(matrix.indptr)
    out = np.full(matrix.shape[0], -np.inf)
    full = np.flatnonzero(counts >= k)
    if len(full) == 0:
        return out
    step = max(1, _BLOCK_CELLS // int(counts.max()))
    for lo in range(0, len(full), step):
        rows = full[lo : lo + step]
        sizes = counts[rows]
        padded = np.full((len(rows), int(sizes.max())), -np.inf)  # (rows, longest row)
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        starts = np.repeat(matrix.indptr[rows], sizes)
        padded[np.repeat(np.arange(len(rows)), sizes), within] = matrix.data[starts + within]
        out[rows] = -np.partition(-padded, k - 1, axis=1)[:, k - 1]
    return out


def ranking_quality(top_items: np.ndarray, next_items: Sequence[np.ndarray], k: int) -> dict[str, float]:
    """Recall@k and NDCG@k against the items bought next, over rows that bought something.

    Recall is hits over the row's distinct next items (out-of-vocabulary ones included: they cannot be
    recommended, and count as misses); the ideal DCG places min(k, n_next) hits at the top. Used to pick
    knobs on the validation split; the evaluation reports its own metrics.

    Args:
        top_items: (n, >= k) ranked item indices.
        next_items: n arrays of item indices.
        k: cut-off.

    Returns:
        {"recall": ..., "ndcg": ..., "rows": ...}; NaN when no row has next items.
    """
    distinct = [np.unique(np.asarray(x, dtype=np.int64)) for x in next_items]
    sizes = np.array([len(x) for x in distinct], dtype=np.int64)
    rows = np.flatnonzero(sizes > 0)
    if len(rows) == 0:
        return {"recall": float("nan"), "ndcg": float("nan"), "rows": 0.0}
    top = np.asarray(top_items)[rows, :k].astype(np.int64)
    width = max(int(top.max(initial=0)), *(int(distinct[r][-1]) for r in rows)) + 1
    wanted = np.concatenate([i * width + distinct[r] for i, r in enumerate(rows)])
    hits = np.isin(np.arange(len(rows))[:, None] * width + top, wanted)
    discount = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    ideal = np.cumsum(discount)[np.minimum(sizes[rows], top.shape[1]) - 1]
    return {
        "recall": float(np.mean(hits.sum(axis=1) / sizes[rows])),
        "ndcg": float(np.mean((hits * discount).sum(axis=1) / ideal)),
        "rows": float(len(rows)),
    }


def history_matrix(
    data: FeatureData,
    n_items: int,
    purchase_weight: float,
    cart_weight: float,
    view_weight: float,
    decay: float,
) -> sp.csr_matrix:
    """Each row's own items, weighted by event type and decayed by recency.

    The weight of an event is its type's weight times `decay ** j`, where j counts the weighted item
    events after it in the sequence (0 for the most recent one); an item's score sums its events. Decay
    runs over item events rather than over all events so that e-mails and page views between two product
    events do not age them.

    Args:
        data: rows whose item and event-type token sequences are scored.
        n_items: item index space (scores outside FIRST .. n_items - 1 are dropped).
        purchase_weight: weight of a purchase.
        cart_weight: weight of an add-to-cart.
        view_weight: weight of a product view.
        decay: per-event recency factor in (0, 1].

    Returns:
        (n, n_items) CSR of non-negative scores.
    """
    item = data.tokens["item_id"]
    event = data.tokens["event_type"]
    by_type = np.zeros(max(int(event.max(initial=0)) + 1, PURCHASE_TOKEN + 1))
    by_type[[PURCHASE_TOKEN, CART_TOKEN, VIEW_TOKEN]] = [purchase_weight, cart_weight, view_weight]
    weight = by_type[event]
    scored = (item >= FIRST) & (item < n_items) & (weight > 0)
    after = np.cumsum(scored[:, ::-1], axis=1)[:, ::-1] - scored  # weighted item events after each one
    rows, cols = np.nonzero(scored)
    values = weight[rows, cols] * np.power(decay, after[rows, cols])
    matrix = sp.coo_matrix((values, (rows, item[rows, cols])), shape=(len(item), n_items)).tocsr()
    matrix.sum_duplicates()
    return matrix


def _row_max_normalise(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Divides each row by its largest value (rows of zeros stay zero)."""
    matrix = sp.csr_matrix(matrix, copy=True)
    counts = np.diff(matrix.indptr)
    row_max = np.zeros(matrix.shape[0])
    nonempty = counts > 0
    row_max[nonempty] = np.maximum.reduceat(matrix.data, matrix.indptr[:-1][nonempty])
    matrix.data = matrix.data / np.repeat(np.where(row_max > 0, row_max, 1.0), counts)
    return matrix


def _with_next_items(data: FeatureData) -> FeatureData:
    return data.subset(np.array([len(x) > 0 for x in data.next_items], dtype=bool))
