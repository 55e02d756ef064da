"""TIFU-KNN (Hu et al. 2020, arXiv 2006.00556): time-decayed personal item frequencies and user k-NN.

A strong next-basket baseline (Li et al. 2023 found it beats most neural models under a fair protocol,
NOTES.md): the customer's own repeat purchases, decayed by basket and by group of baskets, mixed with the
mean frequency vector of the most similar customers, which brings in items the customer never bought.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.preprocessing import normalize

from features.encoder import DT_EDGES_S
from features.vocab import FIRST
from training.baselines.common import (
    _BLOCK_CELLS,
    CART_TOKEN,
    PURCHASE_TOKEN,
    VIEW_TOKEN,
    _check_items,
    _kth_largest,
    _Saveable,
    _with_next_items,
    rank_items,
    ranking_quality,
)
from training.baselines.popularity import Popularity
from training.data import FeatureData
from training.interface import Predictions

log = logging.getLogger(__name__)

# The first dt_bucket token of a gap of a day or more (`features.encoder` buckets the time since the
# previous event by DT_EDGES_S; FIRST marks a customer's first event).
DAY_BUCKET = FIRST + 1 + int(np.searchsorted(DT_EDGES_S, 86_400, side="right"))


def personal_vectors(
    data: FeatureData,
    n_items: int,
    within_decay: float,
    group_decay: float,
    group_size: int,
    browse_weight: float = 0.0,
) -> sp.csr_matrix:
    """Each row's personal item-frequency vector over its purchase baskets (TIFU-KNN's u).

    A basket is the set of items a row's sequence shows bought on one UTC day. The events carry no
    timestamps, only tokens: two consecutive events fall on the same day when their weekday token is the
    same and the gap token says under a day (a week-long gap keeps the weekday, so the gap is needed too).
    Baskets, oldest first b_1 .. b_n, are cut into groups of `group_size` (m) counted from the most recent
    basket; the oldest group holds the remainder. With j = 0 for the most recent basket, basket j is in
    group g = j // m at place t = j % m, and

        u = (1 / K) * sum_g group_decay ** g * (1 / |group g|) * sum_{j in g} within_decay ** t * b_j

    with K = ceil(n / m) groups and b_j the basket's 0/1 item vector (an item bought twice on a day
    counts once). This is the paper's formula (its section 4.1); the authors' code differs in details
    (a fixed number of groups, within-decay over the whole history) that we do not follow.

    With `browse_weight` > 0, add-to-carts and product views count too: a basket is then a day's item
    events, an item weighing 1 if bought that day and `browse_weight` if only carted or viewed. Outside
    next-basket data the next purchase often follows what the customer looked at (OwnHistory weighs
    views and carts for the same reason); 0 is the paper's method.

    Args:
        data: rows whose item, event-type, weekday and gap token sequences are read.
        n_items: item index space (items outside FIRST .. n_items - 1 are dropped).
        within_decay: r_b in (0, 1], the decay between the baskets of a group.
        group_decay: r_g in (0, 1], the decay between groups.
        group_size: m >= 1, baskets per group.
        browse_weight: weight of an add-to-cart or product view in a basket (0: purchases only).

    Returns:
        (n, n_items) CSR of non-negative values.
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, not {group_size}")
    item, event = data.tokens["item_id"], data.tokens["event_type"]
    weekday, gap = data.tokens["weekday"], data.tokens["dt_bucket"]
    n, width = item.shape
    real = np.arange(width)[None, :] >= (width - data.length)[:, None]
    new_day = real.copy()
    new_day[:, 1:] &= (~real[:, :-1]) | (weekday[:, 1:] != weekday[:, :-1]) | (gap[:, 1:] >= DAY_BUCKET)
    day = np.cumsum(new_day, axis=1)
    by_type = np.zeros(max(int(event.max(initial=0)) + 1, PURCHASE_TOKEN + 1))
    by_type[[CART_TOKEN, VIEW_TOKEN]] = browse_weight
    by_type[PURCHASE_TOKEN] = 1.0
    weight = by_type[event]
    counted = real & (weight > 0) & (item >= FIRST) & (item < n_items)
    rows, cols = np.nonzero(counted)  # row-major: each row's counted events oldest first
    if len(rows) == 0:
        return sp.csr_matrix((n, n_items))
    days = day[rows, cols]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = (rows[1:] != rows[:-1]) | (days[1:] != days[:-1])
    basket = np.cumsum(first) - 1  # a global basket number, oldest first within a row
    row_start = np.searchsorted(rows, np.arange(n))
    first_basket = np.zeros(n, dtype=np.int64)
    has = row_start < len(rows)
    first_basket[has] = basket[row_start[has]]
    n_baskets = np.bincount(rows, weights=first, minlength=n).astype(np.int64)
    j = n_baskets[rows] - 1 - (basket - first_basket[rows])  # 0 for the row's most recent basket
    group, place = j // group_size, j % group_size
    n_groups = -(-n_baskets[rows] // group_size)
    size = np.where(group < n_groups - 1, group_size, n_baskets[rows] - group_size * (n_groups - 1))
    value = weight[rows, cols] * within_decay**place / size * group_decay**group / n_groups
    items = item[rows, cols].astype(np.int64)
    key = basket * n_items + items
    order = np.lexsort((-value, key))  # an item once per basket, at its largest weight that day
    once = order[np.r_[True, key[order][1:] != key[order][:-1]]]
    matrix = sp.coo_matrix((value[once], (rows[once], items[once])), shape=(n, n_items)).tocsr()
    matrix.sum_duplicates()
    return matrix


def nearest_customers(
    query: sp.csr_matrix,
    pool: sp.csr_matrix,
    neighbours: int,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """The `neighbours` pool rows most similar (cosine) to each query row, best first.

    Only pool rows sharing an item with the query row qualify (cosine 0 says nothing about a customer);
    ties go to the lower pool index. Computed a block of query rows at a time as a sparse product, so
    memory stays near one block of the (query x pool) similarity.

    Args:
        query: (n, n_items) non-negative vectors.
        pool: (p, n_items) non-negative vectors.
        neighbours: k.
        exclude: optional (n,) pool index never returned for that row (the same customer), -1 for none.

    Returns:
        (n, neighbours) int64 pool indices, -1 where a row has fewer qualifying neighbours.
    """
    q, pl = (
        normalize(sp.csr_matrix(query, dtype=np.float64)),
        normalize(sp.csr_matrix(pool, dtype=np.float64)),
    )
    n = q.shape[0]
    out = np.full((n, neighbours), -1, dtype=np.int64)
    if neighbours == 0 or n == 0 or pl.shape[0] == 0:
        return out
    pool_t = sp.csr_matrix(pl.T)
    skip = np.full(n, -1, dtype=np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    block = max(1, _BLOCK_CELLS // max(1, pl.shape[0]))
    for lo in range(0, n, block):
        sim = sp.csr_matrix(q[lo : lo + block] @ pool_t)  # (b, p) cosine
        row = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
        sim.data[(sim.indices == skip[lo + row]) | (sim.data <= 0)] = 0.0
        sim.eliminate_zeros()
        row = np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))
        col, val = sim.indices.astype(np.int64), sim.data
        # Only entries at or above a row's k-th largest similarity can be among its k nearest: sorting
        # those alone, not every customer who shares an item, is what makes the search fast.
        keep = val >= _kth_largest(sim, neighbours)[row]
        row, col, val = row[keep], col[keep], val[keep]
        order = np.lexsort((col, -val, row))
        row, col = row[order], col[order]
        within = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        top = within < neighbours
        out[lo + row[top], within[top]] = col[top]
    return out


def neighbour_mean(nearest: np.ndarray, k: int, pool: sp.csr_matrix) -> sp.csr_matrix:
    """(n, n_items) mean vector of each row's first k neighbours (zero for a row with none)."""
    ids = nearest[:, :k]
    found = ids >= 0
    count = found.sum(axis=1)
    rows = np.nonzero(found)[0]
    weight = sp.csr_matrix((1.0 / count[rows], (rows, ids[found])), shape=(len(nearest), pool.shape[0]))
    return sp.csr_matrix(weight @ pool)


class TIFUKNN(_Saveable):
    """TIFU-KNN: the customer's decayed basket frequencies mixed with those of similar customers.

    A row's score is `alpha * u + (1 - alpha) * mean(u of its k nearest customers)` (`personal_vectors`
    for u, cosine for nearness). The neighbours come from the training split: each training customer's
    vector at their last training cutoff, the customer themself excluded (their own vector is already the
    `alpha` part). Items the score leaves at zero follow by popularity, so the whole catalogue is ranked.
    k, alpha, r_b, r_g, m and the weight of browsing are chosen together on the validation split from the
    grids (NDCG@tune_k, on at most `max_tune_rows` validation rows with next items, a seeded sample).

    Limit: the build keeps each row's last `max_len` events of every type, so the baskets are only the
    purchases among them (a long browsing session can push older purchases out); the aggregates count
    purchases but keep no items. A longer `encoder.max_len` in the features config lengthens the history.
    On the simulated demo shop (20,000 customers) purchases alone reach a test NDCG@10 of 0.30 against
    own_history's 0.37, which also reads carts and views; with carts and views at 0.3 in a day's basket
    (`browse_weight_grid`, chosen on validation like the rest) TIFU-KNN matches it (0.37).

    Args:
        neighbours_grid: candidate k.
        alpha_grid: candidate weights of the customer's own vector (1: own history only).
        within_decay_grid: candidate r_b.
        group_decay_grid: candidate r_g.
        group_size_grid: candidate m.
        browse_weight_grid: candidate weights of carts and views in a basket (0: purchases only, the
            paper's method; see `personal_vectors`).
        popularity_weeks_grid: windows of the popularity fill (see `Popularity`).
        tune_k: cut-off of the validation metric.
        max_tune_rows: validation rows used to choose the knobs at most.
        seed: seed of that sample.
    """

    name = "tifu_knn"

    def __init__(
        self,
        neighbours_grid: Sequence[int] = (100, 300),
        alpha_grid: Sequence[float] = (0.7, 0.9, 1.0),
        within_decay_grid: Sequence[float] = (0.9, 1.0),
        group_decay_grid: Sequence[float] = (0.6, 0.8),
        group_size_grid: Sequence[int] = (2, 4),
        browse_weight_grid: Sequence[float] = (0.0, 0.3),
        popularity_weeks_grid: Sequence[int | None] = (None, 8, 4, 2, 1),
        tune_k: int = 10,
        max_tune_rows: int = 5_000,
        seed: int = 0,
    ) -> None:
        self.neighbours_grid = neighbours_grid
        self.alpha_grid = alpha_grid
        self.within_decay_grid = within_decay_grid
        self.group_decay_grid = group_decay_grid
        self.group_size_grid = group_size_grid
        self.browse_weight_grid = browse_weight_grid
        self.popularity_weeks_grid = popularity_weeks_grid
        self.tune_k = tune_k
        self.max_tune_rows = max_tune_rows
        self.seed = seed

    def fit(self, train: FeatureData, valid: FeatureData) -> TIFUKNN:
        """Fits the popularity fill and the neighbour pool; picks the knobs on the validation split."""
        grids = ("neighbours", "alpha", "within_decay", "group_decay", "group_size", "browse_weight")
        empty = [f"{name}_grid" for name in grids if len(getattr(self, f"{name}_grid")) == 0]
        if empty:
            raise ValueError(f"tifu_knn: {', '.join(empty)} need a value each")
        self.n_items_ = train.n_items
        self.popularity_ = Popularity(self.popularity_weeks_grid, tune_k=self.tune_k).fit(train, valid)
        last = _last_row_per_customer(train)
        pool_rows = train.subset(last)
        target = _with_next_items(valid)
        if len(target) > self.max_tune_rows:
            rng = np.random.default_rng(self.seed)
            target = target.subset(np.sort(rng.choice(len(target), self.max_tune_rows, replace=False)))
        vector_grid = list(
            itertools.product(
                self.within_decay_grid, self.group_decay_grid, self.group_size_grid, self.browse_weight_grid
            )
        )
        mix_grid = list(itertools.product(self.neighbours_grid, self.alpha_grid))
        self.validation_: dict[str, float] = {}
        chosen = (*vector_grid[0], *mix_grid[0])
        best = float("nan")
        if len(target) and len(vector_grid) * len(mix_grid) > 1:
            best = -1.0
            for within, between, size, browse in vector_grid:
                pool = personal_vectors(pool_rows, self.n_items_, within, between, size, browse)
                own = personal_vectors(target, self.n_items_, within, between, size, browse)
                exclude = _pool_index(pool_rows.customer_id, target.customer_id)
                nearest = nearest_customers(own, pool, max(self.neighbours_grid), exclude)
                for k, alpha in mix_grid:
                    top = _mix_and_rank(own, nearest, pool, k, alpha, self.popularity_.order_, self.tune_k)
                    ndcg = ranking_quality(top, target.next_items, self.tune_k)["ndcg"]
                    key = f"k={k},alpha={alpha},r_b={within},r_g={between},m={size},browse={browse}"
                    self.validation_[key] = ndcg
                    if ndcg > best:
                        best, chosen = ndcg, (within, between, size, browse, k, alpha)
        (
            self.within_decay_, self.group_decay_, self.group_size_, self.browse_weight_,
            self.neighbours_, self.alpha_,
        ) = chosen  # fmt: skip
        self.pool_ = self._vectors(pool_rows)
        self.pool_ids_ = np.asarray(pool_rows.customer_id, dtype=str)
        log.info(
            "tifu_knn: k %d alpha %.2f r_b %.2f r_g %.2f m %d browse %.2f (valid NDCG@%d %.4f, %d rows)",
            self.neighbours_, self.alpha_, self.within_decay_, self.group_decay_, self.group_size_,
            self.browse_weight_, self.tune_k, best, len(target),
        )  # fmt: skip
        return self

    def _vectors(self, data: FeatureData) -> sp.csr_matrix:
        return personal_vectors(
            data, self.n_items_, self.within_decay_, self.group_decay_, self.group_size_, self.browse_weight_
        )

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        """Ranks the catalogue for each row, a block of rows at a time (bounded memory)."""
        _check_items(data, self.n_items_)
        order = self.popularity_.order_
        batch = _rows_per_block(self.pool_, self.neighbours_)
        tops = [rank_items(sp.csr_matrix((0, self.n_items_)), order, k)]
        for lo in range(0, len(data), batch):
            rows = data.subset(np.arange(lo, min(lo + batch, len(data))))
            own = self._vectors(rows)
            nearest = np.full((len(rows), 0), -1, dtype=np.int64)
            if self.alpha_ < 1:
                exclude = _pool_index(self.pool_ids_, rows.customer_id)
                nearest = nearest_customers(own, self.pool_, self.neighbours_, exclude)
            tops.append(_mix_and_rank(own, nearest, self.pool_, self.neighbours_, self.alpha_, order, k))
        return Predictions(top_items=np.concatenate(tops))

    def save(self, path: Path) -> None:
        """Writes `meta.json`, the pool's vectors (scipy sparse `.npz`), its customer ids (`.npz`) and the
        popularity fill (a sub-directory)."""
        path = Path(path)
        fitted = {
            "n_items": self.n_items_,
            "neighbours": self.neighbours_,
            "alpha": self.alpha_,
            "within_decay": self.within_decay_,
            "group_decay": self.group_decay_,
            "group_size": self.group_size_,
            "browse_weight": self.browse_weight_,
            "validation": self.validation_,
        }
        self._write_meta(path, fitted)
        sp.save_npz(path / "pool.npz", self.pool_)
        np.savez(path / "pool_ids.npz", ids=self.pool_ids_)
        self.popularity_.save(path / "popularity")

    @classmethod
    def load(cls, path: Path) -> TIFUKNN:
        """Reads what `save` wrote."""
        path = Path(path)
        self, fitted = cls._read_meta(path)
        self.n_items_, self.validation_ = fitted["n_items"], fitted["validation"]
        self.neighbours_, self.alpha_ = fitted["neighbours"], fitted["alpha"]
        self.within_decay_, self.group_decay_ = fitted["within_decay"], fitted["group_decay"]
        self.group_size_, self.browse_weight_ = fitted["group_size"], fitted["browse_weight"]
        self.pool_ = sp.csr_matrix(sp.load_npz(path / "pool.npz"))
        with np.load(path / "pool_ids.npz", allow_pickle=False) as arrays:
            self.pool_ids_ = np.asarray(arrays["ids"])
        self.popularity_ = Popularity.load(path / "popularity")
        return self


def _rows_per_block(pool: sp.csr_matrix, neighbours: int) -> int:
    """Rows whose neighbours' vectors (about k x the mean items of a pool vector each) fit one block."""
    per_row = max(1, neighbours) * max(1, pool.nnz // max(1, pool.shape[0]))
    return max(1, _BLOCK_CELLS // per_row)


def _mix_and_rank(
    own: sp.csr_matrix,
    nearest: np.ndarray,
    pool: sp.csr_matrix,
    neighbours: int,
    alpha: float,
    order: np.ndarray,
    k: int,
) -> np.ndarray:
    """Top-k items of `alpha * own + (1 - alpha) * neighbour mean`, a block of rows at a time."""
    if alpha >= 1:
        return rank_items(own, order, k)
    batch = _rows_per_block(pool, neighbours)
    tops = [rank_items(sp.csr_matrix((0, own.shape[1])), order, k)]
    for lo in range(0, own.shape[0], batch):
        hi = min(lo + batch, own.shape[0])
        mixed = own[lo:hi] * alpha + neighbour_mean(nearest[lo:hi], neighbours, pool) * (1 - alpha)
        tops.append(rank_items(mixed, order, k))
    return np.concatenate(tops)


def _last_row_per_customer(data: FeatureData) -> np.ndarray:
    """Indices of each customer's row with the latest cutoff (their longest history in the split)."""
    if len(data) == 0:
        return np.zeros(0, dtype=np.int64)
    customer = np.asarray(data.customer_id, dtype=str)
    order = np.lexsort((data.cutoff_ms, customer))
    last = np.ones(len(order), dtype=bool)
    last[:-1] = customer[order][1:] != customer[order][:-1]
    return np.sort(order[last])


def _pool_index(pool_ids: np.ndarray, customers: np.ndarray) -> np.ndarray:
    """(n,) each customer's index in the pool, -1 where they are not in it."""
    pool_ids = np.asarray(pool_ids, dtype=str)
    customers = np.asarray(customers, dtype=str)
    if len(pool_ids) == 0:
        return np.full(len(customers), -1, dtype=np.int64)
    order = np.argsort(pool_ids, kind="stable")
    at = np.clip(np.searchsorted(pool_ids[order], customers), 0, len(pool_ids) - 1)
    found = pool_ids[order][at] == customers
    return np.where(found, order[at], -1).astype(np.int64)
