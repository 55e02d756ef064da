"""Baselines behind the same small interface as the model (issue 4).

Four families, each a `training.interface.Scorer` with `save` / `load`:

* `Popularity`: the items bought most in the training window (optionally only its last weeks), the same
  list for every row.
* `OwnHistory`: the customer's own past items (P-TopFreq / TIFU-KNN-like repeat purchases), purchases
  weighing most, carts next, views least, decayed by recency; the rest of the list filled by popularity.
* `ItemKNN`: item-item co-occurrence within customers' histories (cosine, top-M neighbours per item); a
  row's score sums the similarities of its recent items, optionally mixed with its own-history score.
* `LightGBMAggregates`: LightGBM on the aggregate (RFM and engagement) features for the stage, each
  propensity, unsubscribing, and a T-learner of the outcome of each action (inverse-propensity weighted).

The recommenders rank the whole catalogue (vocabulary indices FIRST .. n_items - 1), never a sample.
Their knobs are chosen on the validation split from small grids inside `fit` (the chosen values end in
`_`, like every fitted attribute). `all_baselines` builds the default set from a `BaselineConfig`.

Nothing here pickles objects: arrays go to `.npz` / scipy's sparse `.npz`, LightGBM models to its text
format, and everything else to `meta.json`.
"""

from __future__ import annotations

import inspect
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import lightgbm as lgb
import numpy as np
import scipy.sparse as sp
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from features.encoder import AGGREGATE_NAMES
from features.schema import ACTIONS, EVENT_TYPES, STAGES, Action, EventType
from features.vocab import FIRST
from training.data import FeatureData
from training.interface import Predictions, Scorer

log = logging.getLogger(__name__)

MS_PER_WEEK = 7 * 86_400_000
NO_SEND = ACTIONS.index(Action.NO_SEND)
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


# --------------------------------------------------------------------------------------------------------
# Shared pieces: parameters, saving, ranking, the validation metric
# --------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------
# Popularity
# --------------------------------------------------------------------------------------------------------


class Popularity(_Saveable):
    """Global popularity: the same ranked list for every row.

    Counts are purchases (the items in `next_items` of the training rows: what customers bought in the
    window after each training cutoff, the quantity the recommenders are judged on), plus optionally
    `interaction_weight` times the purchase / cart / view events of the training rows' sequences.
    Recency: only the training rows of the last `weeks` weeks of cutoffs count (None: all); the value is
    chosen on the validation split among `weeks_grid`.

    Args:
        weeks_grid: candidate windows in weeks (None: the whole training window).
        interaction_weight: weight of sequence events (purchases 1, carts 0.5, views 0.1) beside purchases.
        tune_k: cut-off of the validation metric (NDCG@tune_k) that picks the window.
        tolerance: the first window in grid order within this relative distance of the best NDCG wins:
            the training rows' next items reach into the validation window, which flatters short
            windows a little, so a short window must earn its place.
    """

    name = "popularity"

    def __init__(
        self,
        weeks_grid: Sequence[int | None] = (None, 8, 4, 2, 1),
        interaction_weight: float = 0.0,
        tune_k: int = 10,
        tolerance: float = 0.01,
    ) -> None:
        self.weeks_grid = weeks_grid
        self.interaction_weight = interaction_weight
        self.tune_k = tune_k
        self.tolerance = tolerance

    def _counts(self, train: FeatureData, weeks: int | None) -> np.ndarray:
        n_items = train.n_items
        rows = np.arange(len(train))
        if weeks is not None and len(train):
            rows = np.flatnonzero(train.cutoff_ms > train.cutoff_ms.max() - weeks * MS_PER_WEEK)
        sizes = np.array([len(train.next_items[i]) for i in rows], dtype=np.int64)
        flat = np.concatenate([train.next_items[i] for i in rows] or [np.zeros(0, dtype=np.int64)])
        ok = (flat >= FIRST) & (flat < n_items)
        pairs = np.unique(np.repeat(rows, sizes)[ok] * n_items + flat[ok])  # an item counts once per row
        counts = np.bincount(pairs % n_items, minlength=n_items).astype(np.float64)
        if self.interaction_weight > 0 and len(rows):
            seen = history_matrix(train.subset(rows), n_items, 1.0, 0.5, 0.1, 1.0)
            counts += self.interaction_weight * np.asarray(seen.sum(axis=0)).ravel()
        return counts

    def fit(self, train: FeatureData, valid: FeatureData) -> Popularity:
        """Counts the training window; picks the recency window by NDCG on the validation split."""
        self.n_items_ = train.n_items
        grid = list(self.weeks_grid) or [None]
        target = _with_next_items(valid)
        self.validation_: dict[str, float] = {}
        if len(grid) == 1 or len(target) == 0:
            self.weeks_ = grid[0]
        else:
            for weeks in grid:
                top = popularity_order(self._counts(train, weeks))[None, : self.tune_k]
                ndcg = ranking_quality(top.repeat(len(target), axis=0), target.next_items, self.tune_k)
                self.validation_[str(weeks)] = ndcg["ndcg"]
            best = max(self.validation_.values())
            self.weeks_ = next(w for w in grid if self.validation_[str(w)] >= best * (1 - self.tolerance))
        self.counts_ = self._counts(train, self.weeks_)
        self.order_ = popularity_order(self.counts_)
        return self

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        _check_items(data, self.n_items_)
        top = self.order_[None, : min(k, len(self.order_))].repeat(len(data), axis=0)
        return Predictions(top_items=top.astype(np.int64))

    def save(self, path: Path) -> None:
        """Writes `meta.json` and the counts to a directory."""
        self._write_meta(
            Path(path), {"n_items": self.n_items_, "weeks": self.weeks_, "validation": self.validation_}
        )
        np.savez(Path(path) / "arrays.npz", counts=self.counts_)

    @classmethod
    def load(cls, path: Path) -> Popularity:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        with np.load(Path(path) / "arrays.npz", allow_pickle=False) as arrays:
            self.counts_ = np.asarray(arrays["counts"])
        self.n_items_, self.weeks_, self.validation_ = (
            fitted["n_items"],
            fitted["weeks"],
            fitted["validation"],
        )
        self.order_ = popularity_order(self.counts_)
        return self


# --------------------------------------------------------------------------------------------------------
# The customer's own history (repeat purchases)
# --------------------------------------------------------------------------------------------------------


class OwnHistory(_Saveable):
    """Repeat purchases: the customer's own past items first, then popularity.

    An item's score sums its events in the row's sequence: `purchase_weight` for a purchase, the cart
    weight for an add-to-cart, the view weight for a product view, each times `decay ** j` with j the
    number of weighted item events since (P-TopFreq with TIFU-KNN's recency decay, over the last
    `max_len` events the features keep). Items the customer never touched follow, by popularity, so the
    whole catalogue is ranked. Cart weight, view weight and decay are chosen on the validation split from
    the grids (NDCG@tune_k); the purchase weight is the unit.

    Args:
        cart_weight_grid: candidate weights of an add-to-cart.
        view_weight_grid: candidate weights of a product view.
        decay_grid: candidate recency factors per item event.
        purchase_weight: weight of a purchase.
        popularity_weeks_grid: windows of the popularity fill (see `Popularity`).
        tune_k: cut-off of the validation metric.
    """

    name = "own_history"

    def __init__(
        self,
        cart_weight_grid: Sequence[float] = (0.25, 0.5, 1.0),
        view_weight_grid: Sequence[float] = (0.1, 0.3, 0.6),
        decay_grid: Sequence[float] = (1.0, 0.95, 0.9, 0.8),
        purchase_weight: float = 1.0,
        popularity_weeks_grid: Sequence[int | None] = (None, 8, 4, 2, 1),
        tune_k: int = 10,
    ) -> None:
        self.cart_weight_grid = cart_weight_grid
        self.view_weight_grid = view_weight_grid
        self.decay_grid = decay_grid
        self.purchase_weight = purchase_weight
        self.popularity_weeks_grid = popularity_weeks_grid
        self.tune_k = tune_k

    def fit(self, train: FeatureData, valid: FeatureData) -> OwnHistory:
        """Fits the popularity fill, then picks weights and decay on the validation split."""
        self.n_items_ = train.n_items
        self.popularity_ = Popularity(self.popularity_weeks_grid, tune_k=self.tune_k).fit(train, valid)
        target = _with_next_items(valid)
        grid = list(itertools.product(self.cart_weight_grid, self.view_weight_grid, self.decay_grid))
        if not grid:
            raise ValueError(
                "own_history: cart_weight_grid, view_weight_grid and decay_grid need a value each"
            )
        self.validation_: dict[str, float] = {}
        best = -1.0
        for cart, view, decay in grid:
            if len(grid) == 1 or len(target) == 0:
                best = float("nan")
                self.cart_weight_, self.view_weight_, self.decay_ = cart, view, decay
                break
            scores = history_matrix(target, self.n_items_, self.purchase_weight, cart, view, decay)
            top = rank_items(scores, self.popularity_.order_, self.tune_k)
            ndcg = ranking_quality(top, target.next_items, self.tune_k)["ndcg"]
            self.validation_[f"cart={cart},view={view},decay={decay}"] = ndcg
            if ndcg > best:
                best, self.cart_weight_, self.view_weight_, self.decay_ = ndcg, cart, view, decay
        log.info(
            "own_history: cart %.2f view %.2f decay %.2f (valid NDCG@%d %.4f)",
            self.cart_weight_, self.view_weight_, self.decay_, self.tune_k, best,
        )  # fmt: skip
        return self

    def scores(self, data: FeatureData) -> sp.csr_matrix:
        """(n, n_items) own-history scores with the chosen weights."""
        return history_matrix(
            data, self.n_items_, self.purchase_weight, self.cart_weight_, self.view_weight_, self.decay_
        )

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        _check_items(data, self.n_items_)
        return Predictions(top_items=rank_items(self.scores(data), self.popularity_.order_, k))

    def save(self, path: Path) -> None:
        """Writes `meta.json` and the popularity fill (a sub-directory) to a directory."""
        fitted = {
            "n_items": self.n_items_,
            "cart_weight": self.cart_weight_,
            "view_weight": self.view_weight_,
            "decay": self.decay_,
            "validation": self.validation_,
        }
        self._write_meta(Path(path), fitted)
        self.popularity_.save(Path(path) / "popularity")

    @classmethod
    def load(cls, path: Path) -> OwnHistory:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        self.n_items_, self.validation_ = fitted["n_items"], fitted["validation"]
        self.cart_weight_, self.view_weight_, self.decay_ = (
            fitted["cart_weight"],
            fitted["view_weight"],
            fitted["decay"],
        )
        self.popularity_ = Popularity.load(Path(path) / "popularity")
        return self


# --------------------------------------------------------------------------------------------------------
# Item co-occurrence k-NN
# --------------------------------------------------------------------------------------------------------


def customer_item_matrix(
    data: FeatureData, n_items: int, cart_weight: float, view_weight: float
) -> sp.csr_matrix:
    """(n_customers, n_items) strongest interaction of each customer with each item in a split.

    A customer's rows overlap (the same events recur at each cutoff), so each (customer, item) pair keeps
    its largest weight rather than a sum: 1 for a purchase, `cart_weight` for an add-to-cart,
    `view_weight` for a product view. Only the sequences count, not the rows' next items: those reach
    past the last training cutoff into the validation window, and would leak into the choice of knobs.
    """
    item = data.tokens["item_id"]
    event = data.tokens["event_type"]
    by_type = np.zeros(max(int(event.max(initial=0)) + 1, PURCHASE_TOKEN + 1))
    by_type[[PURCHASE_TOKEN, CART_TOKEN, VIEW_TOKEN]] = [1.0, cart_weight, view_weight]
    weight = by_type[event]
    scored = (item >= FIRST) & (item < n_items) & (weight > 0)
    _, customer = np.unique(data.customer_id.astype(str), return_inverse=True)
    customer = customer.reshape(-1)
    rows, cols = np.nonzero(scored)
    cust, items, weights = customer[rows], item[rows, cols].astype(np.int64), weight[rows, cols]
    n_customers = int(customer.max(initial=-1)) + 1
    key = cust * n_items + items
    order = np.lexsort((-weights, key))  # the largest weight of each pair comes first
    key, weights = key[order], weights[order]
    first = np.ones(len(key), dtype=bool)
    first[1:] = key[1:] != key[:-1]
    key, weights = key[first], weights[first]
    return sp.csr_matrix((weights, (key // n_items, key % n_items)), shape=(n_customers, n_items))


def cosine_neighbours(interactions: sp.csr_matrix, neighbours: int, block: int = 2048) -> sp.csr_matrix:
    """Item-item cosine similarity of the columns of `interactions`, the top `neighbours` per item.

    Computed a block of items at a time (block x n_items products), so a 100k-item catalogue needs
    memory for one block and the pruned result, never the full co-occurrence matrix. The diagonal is
    dropped: repeats are the own-history score's job.

    Args:
        interactions: (n_customers, n_items) non-negative weights.
        neighbours: similar items kept per item (M).
        block: items per block.

    Returns:
        (n_items, n_items) CSR; row i holds item i's neighbours and their similarity.
    """
    x = sp.csr_matrix(interactions, dtype=np.float64)
    n_items = x.shape[1]
    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel())
    inv = np.where(norm > 0, 1.0 / np.where(norm > 0, norm, 1.0), 0.0)
    xt = sp.csr_matrix(x.T)
    parts = []
    for lo in range(0, n_items, block):
        co = sp.coo_matrix(xt[lo : lo + block] @ x)  # (b, n_items) co-occurrence
        row, col = co.row.astype(np.int64), co.col.astype(np.int64)
        sim = co.data * inv[row + lo] * inv[col]
        keep = (row + lo != col) & (sim > 0)
        row, col, sim = row[keep], col[keep], sim[keep]
        order = np.lexsort((col, -sim, row))  # best first, ties by index: deterministic
        row, col, sim = row[order], col[order], sim[order]
        within = np.arange(len(row)) - np.searchsorted(row, row, side="left")
        top = within < neighbours
        parts.append(sp.csr_matrix((sim[top], (row[top], col[top])), shape=(co.shape[0], n_items)))
    if not parts:
        return sp.csr_matrix((n_items, n_items))
    return sp.csr_matrix(sp.vstack(parts))


class ItemKNN(_Saveable):
    """Item co-occurrence k-NN: items similar to what the customer recently touched.

    Similarity is the cosine between items' columns of the customer x item matrix of the training split
    (`customer_item_matrix`: purchases 1, carts `cart_weight`, views `view_weight`), top `neighbours`
    per item. A row's k-NN score is sum_i h_i * sim(i, j) over its own items i, where h is its
    own-history score (`history_matrix`, purchases 1, carts and views as above, `decay` per item event:
    recent items count most). Both parts are scaled to a row maximum of 1 and mixed with the item's
    popularity (purchase count over the largest one) as `knn + own_weight * own + popularity_weight *
    popularity`; the two weights are chosen on the validation split (0 and 0 = pure co-occurrence).
    Popularity fills the rest of the list.

    Args:
        neighbours: similar items kept per item (M); bounds memory at n_items x M.
        cart_weight: weight of an add-to-cart (co-occurrence and query).
        view_weight: weight of a product view (co-occurrence and query).
        decay: recency factor per item event of the query.
        own_weight_grid: candidate weights of the own-history score in the mix.
        popularity_weight_grid: candidate weights of the popularity score in the mix.
        popularity_weeks_grid: windows of the popularity fill (see `Popularity`).
        tune_k: cut-off of the validation metric.
    """

    name = "item_knn"

    def __init__(
        self,
        neighbours: int = 100,
        cart_weight: float = 0.5,
        view_weight: float = 0.3,
        decay: float = 0.9,
        own_weight_grid: Sequence[float] = (0.0, 1.0, 4.0, 16.0),
        popularity_weight_grid: Sequence[float] = (0.0, 0.5, 2.0),
        popularity_weeks_grid: Sequence[int | None] = (None, 8, 4, 2, 1),
        tune_k: int = 10,
    ) -> None:
        self.neighbours = neighbours
        self.cart_weight = cart_weight
        self.view_weight = view_weight
        self.decay = decay
        self.own_weight_grid = own_weight_grid
        self.popularity_weight_grid = popularity_weight_grid
        self.popularity_weeks_grid = popularity_weeks_grid
        self.tune_k = tune_k

    def fit(self, train: FeatureData, valid: FeatureData) -> ItemKNN:
        """Builds the similarity from the training split; picks the mix on the validation split."""
        self.n_items_ = train.n_items
        self.popularity_ = Popularity(self.popularity_weeks_grid, tune_k=self.tune_k).fit(train, valid)
        interactions = customer_item_matrix(train, self.n_items_, self.cart_weight, self.view_weight)
        self.similarity_ = cosine_neighbours(interactions, self.neighbours)
        grid = list(itertools.product(self.own_weight_grid or [0.0], self.popularity_weight_grid or [0.0]))
        target = _with_next_items(valid)
        self.validation_: dict[str, float] = {}
        self.own_weight_, self.popularity_weight_ = grid[0]
        if len(grid) > 1 and len(target):
            knn, own = self._parts(target)
            best = -1.0
            for own_weight, pop_weight in grid:
                prior = pop_weight * self._popularity_score()
                top = rank_items(knn + own_weight * own, self.popularity_.order_, self.tune_k, prior)
                ndcg = ranking_quality(top, target.next_items, self.tune_k)["ndcg"]
                self.validation_[f"own={own_weight},popularity={pop_weight}"] = ndcg
                if ndcg > best:
                    best, self.own_weight_, self.popularity_weight_ = ndcg, own_weight, pop_weight
        return self

    def _popularity_score(self) -> np.ndarray:
        counts = self.popularity_.counts_
        return counts / counts.max() if counts.max() > 0 else np.zeros_like(counts)

    def _parts(self, data: FeatureData) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        own = history_matrix(data, self.n_items_, 1.0, self.cart_weight, self.view_weight, self.decay)
        return _row_max_normalise(own @ self.similarity_), _row_max_normalise(own)

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        _check_items(data, self.n_items_)
        batch = max(1, _BLOCK_CELLS // max(1, self.neighbours * data.tokens["item_id"].shape[1]))
        prior = self.popularity_weight_ * self._popularity_score()
        tops = []
        for lo in range(0, len(data), batch):
            knn, own = self._parts(data.subset(np.arange(lo, min(lo + batch, len(data)))))
            tops.append(rank_items(knn + self.own_weight_ * own, self.popularity_.order_, k, prior))
        if not tops:
            return Predictions(top_items=np.zeros((0, min(k, len(self.popularity_.order_))), dtype=np.int64))
        return Predictions(top_items=np.concatenate(tops))

    def save(self, path: Path) -> None:
        """Writes `meta.json`, the similarity (scipy sparse `.npz`) and the popularity fill."""
        fitted = {
            "n_items": self.n_items_,
            "own_weight": self.own_weight_,
            "popularity_weight": self.popularity_weight_,
            "validation": self.validation_,
        }
        self._write_meta(Path(path), fitted)
        sp.save_npz(Path(path) / "similarity.npz", self.similarity_)
        self.popularity_.save(Path(path) / "popularity")

    @classmethod
    def load(cls, path: Path) -> ItemKNN:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        self.n_items_, self.validation_ = fitted["n_items"], fitted["validation"]
        self.own_weight_, self.popularity_weight_ = fitted["own_weight"], fitted["popularity_weight"]
        self.similarity_ = sp.csr_matrix(sp.load_npz(Path(path) / "similarity.npz"))
        self.popularity_ = Popularity.load(Path(path) / "popularity")
        return self


# --------------------------------------------------------------------------------------------------------
# LightGBM on the aggregate features
# --------------------------------------------------------------------------------------------------------

Calibration = Literal["auto", "platt", "isotonic", "none"]
_EPS = 1e-6


def expected_calibration_error(
    proba: np.ndarray, label: np.ndarray, n_bins: int = 10, weight: np.ndarray | None = None
) -> float:
    """Expected calibration error with equal-mass bins.

    Binary: `proba` is (n,) P(label = 1) and bins are over it. Multiclass: `proba` is (n, C) and the
    top-label ECE is returned (bins over the largest probability, against whether its class is right).
    Equal-mass bins keep rare outcomes (unsubscribing: well under 1 %) from landing in one bin.

    Args:
        proba: predicted probabilities.
        label: (n,) 0/1 labels, or class indices for (n, C) probabilities.
        n_bins: number of bins.
        weight: optional (n,) row weights.

    Returns:
        sum over bins of |mean prediction - mean outcome| weighted by the bin's share; NaN without rows.
    """
    proba = np.asarray(proba, dtype=np.float64)
    label = np.asarray(label)
    if len(label) == 0:
        return float("nan")
    if proba.ndim == 2:
        conf = proba.max(axis=1)
        hit = (proba.argmax(axis=1) == label).astype(np.float64)
    else:
        conf, hit = proba, label.astype(np.float64)
    w = np.ones(len(conf)) if weight is None else np.asarray(weight, dtype=np.float64)
    order = np.argsort(conf, kind="stable")
    bins = np.array_split(order, min(n_bins, len(order)))
    total = w.sum()
    ece = 0.0
    for idx in bins:
        wb = w[idx].sum()
        if wb > 0:
            ece += (
                wb / total * abs(np.average(conf[idx], weights=w[idx]) - np.average(hit[idx], weights=w[idx]))
            )
    return float(ece)


def _log_loss(proba: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(proba, _EPS, 1 - _EPS)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


@dataclass
class Calibrator:
    """A monotone map of a binary head's probabilities, fitted on the validation split.

    Stored as plain numbers (no pickled sklearn object): Platt keeps (slope, intercept) on the logit;
    isotonic keeps the step function's knots, applied by linear interpolation and clipped at the ends,
    as `IsotonicRegression(out_of_bounds="clip")` does.
    """

    method: str
    x: list[float]
    y: list[float]

    @classmethod
    def fit(cls, method: str, proba: np.ndarray, label: np.ndarray) -> Calibrator:
        """Fits `method` ("platt" or "isotonic") on raw probabilities and 0/1 labels."""
        if method == "platt":
            logit = _logit(proba)[:, None]
            model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000).fit(logit, label.astype(int))
            return cls("platt", [float(model.coef_[0, 0])], [float(model.intercept_[0])])
        if method == "isotonic":
            iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(proba, label)
            return cls("isotonic", iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())
        raise ValueError(f"unknown calibration method {method!r}")

    def apply(self, proba: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return 1.0 / (1.0 + np.exp(-(self.x[0] * _logit(proba) + self.y[0])))
        return np.interp(proba, self.x, self.y)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


@dataclass
class _Head:
    """One prediction target: a LightGBM booster (or a constant where the labels allow no model) and an
    optional calibrator; `info` records rows, rounds and calibration checks for the report."""

    booster: lgb.Booster | None
    constant: list[float] | None
    calibrator: Calibrator | None
    info: dict[str, Any]

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.booster is None:
            assert self.constant is not None
            value = np.asarray(self.constant, dtype=np.float64)
            return np.tile(value, (len(x), 1)) if len(value) > 1 else np.full(len(x), value[0])
        return np.asarray(self.booster.predict(x), dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        proba = self.raw(x)
        return self.calibrator.apply(proba) if self.calibrator is not None else proba


class LightGBMAggregates(_Saveable):
    """LightGBM on the aggregate features: stage, propensities, unsubscribing, and outcome per action.

    * stage: one multiclass model (`stage_proba`);
    * each propensity label of the build (`FeatureData.targets`): a binary model on every row;
    * "unsubscribe": a binary model on the rows with a logged send (not no_send), target = unsubscribed;
    * outcome per action (a T-learner): one binary model per action, no_send included, on the rows whose
      logged action is that action, target = the logged outcome. Rows are weighted by
      min(1 / logged_propensity, ipw_clip), normalised to mean 1 per action: the logging policy sends an
      action mostly to the customers it suits, so unweighted each model would learn the customers it
      already gets; inverse-propensity weights make each arm stand for every customer, where its
      predictions are used. Clipping bounds the weight of a row the policy almost never sent the action
      to (propensity 0.02 -> 50), trading a little bias for much less variance. An action with fewer than
      `min_action_rows` training rows uses the no_send model (its uplift is then zero), recorded in
      `fallback_`; without enough no_send rows, a model pooled over all logged rows stands in.

    Every model stops early on the validation split (same weights). Binary heads are checked for
    calibration on the validation split: with `calibration="auto"`, Platt and isotonic calibrators are
    cross-fitted on its two halves, and the one that lowers the held-out log loss (by more than
    `calibration_min_gain`, relative) is refitted on the whole split; "platt" / "isotonic" force one and
    "none" skips. Calibrating on the later validation window also corrects part of a drift of the base
    rate between the training and the test window. The evidence (ECE before and after, log losses) is
    kept in `heads_[name].info`. The stage head is reported (top-label ECE) but not recalibrated.
    Deterministic: fixed seed, `deterministic=True`, column-wise histograms, `num_threads` threads.

    Args:
        learning_rate: boosting learning rate.
        num_leaves: leaves per tree.
        min_child_samples: rows per leaf at least.
        max_rounds: boosting rounds at most (early stopping usually ends sooner).
        early_stopping_rounds: rounds without improvement of the validation loss before stopping.
        lambda_l2: L2 regularisation of leaf values.
        ipw_clip: largest inverse-propensity weight.
        min_action_rows: training rows an action needs for its own outcome model.
        calibration: "auto", "platt", "isotonic" or "none".
        min_calibration_rows: validation rows (with both labels) a calibrator needs.
        calibration_min_gain: with "auto", the relative drop of the cross-fitted log loss a calibrator
            must bring (0: any held-out improvement; the cross-fit already guards against noise).
        seed: random seed.
        num_threads: LightGBM threads.
    """

    name = "lightgbm_aggregates"

    def __init__(
        self,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        max_rounds: int = 1000,
        early_stopping_rounds: int = 50,
        lambda_l2: float = 1.0,
        ipw_clip: float = 50.0,
        min_action_rows: int = 300,
        calibration: Calibration = "auto",
        min_calibration_rows: int = 500,
        calibration_min_gain: float = 0.0,
        seed: int = 0,
        num_threads: int = 2,
    ) -> None:
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.lambda_l2 = lambda_l2
        self.ipw_clip = ipw_clip
        self.min_action_rows = min_action_rows
        self.calibration = calibration
        self.min_calibration_rows = min_calibration_rows
        self.calibration_min_gain = calibration_min_gain
        self.seed = seed
        self.num_threads = num_threads

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, train: FeatureData, valid: FeatureData) -> LightGBMAggregates:
        """Trains every head on `train`, stopping early and calibrating on `valid`."""
        if self.calibration not in ("auto", "platt", "isotonic", "none"):
            raise ValueError(f"calibration must be auto, platt, isotonic or none, not {self.calibration!r}")
        n_features = train.aggregates.shape[1]
        self.feature_names_ = (
            list(AGGREGATE_NAMES)
            if n_features == len(AGGREGATE_NAMES)
            else [f"f{i}" for i in range(n_features)]
        )
        self.heads_: dict[str, _Head] = {}
        self.fallback_: dict[str, str] = {}

        def split(data: FeatureData, mask: np.ndarray, label: np.ndarray, weighted: bool = False) -> _Rows:
            weight = None
            if weighted:
                weight = np.minimum(1.0 / data.logged_propensity[mask], self.ipw_clip)
                weight = weight / weight.mean() if len(weight) else weight
            return _Rows(data.aggregates[mask].astype(np.float64), label[mask].astype(np.float64), weight)

        every_t, every_v = np.ones(len(train), dtype=bool), np.ones(len(valid), dtype=bool)
        self.heads_["stage"] = self._fit_head(
            split(train, every_t, train.stage), split(valid, every_v, valid.stage), n_class=len(STAGES)
        )
        for target in train.targets:
            mt, mv = np.isfinite(train.targets[target]), np.isfinite(valid.targets[target])
            self.heads_[target] = self._fit_head(
                split(train, mt, train.targets[target]), split(valid, mv, valid.targets[target])
            )
        sent_t, sent_v = _sent(train), _sent(valid)
        self.heads_["unsubscribe"] = self._fit_head(
            split(train, sent_t, train.unsubscribed), split(valid, sent_v, valid.unsubscribed)
        )

        logged_t, logged_v = _logged_outcome(train), _logged_outcome(valid)
        base = f"outcome_{Action.NO_SEND.value}"
        if (logged_t & (train.logged_action == NO_SEND)).sum() < self.min_action_rows:
            base = "outcome_pooled"
            self.heads_[base] = self._fit_head(
                split(train, logged_t, train.outcome, True), split(valid, logged_v, valid.outcome, True)
            )
        for index, action in enumerate(ACTIONS):
            mt = logged_t & (train.logged_action == index)
            mv = logged_v & (valid.logged_action == index)
            if mt.sum() < self.min_action_rows:
                self.fallback_[action] = base
                log.info("lightgbm: %s has %d logged rows; uses %s", action, mt.sum(), base)
                continue
            self.heads_[f"outcome_{action}"] = self._fit_head(
                split(train, mt, train.outcome, True), split(valid, mv, valid.outcome, True)
            )
        return self

    def _params(self, n_class: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "multiclass" if n_class > 2 else "binary",
            "metric": "multi_logloss" if n_class > 2 else "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }
        if n_class > 2:
            params["num_class"] = n_class
        return params

    def _fit_head(self, train: _Rows, valid: _Rows, n_class: int = 2) -> _Head:
        info: dict[str, Any] = {"train_rows": len(train.y), "valid_rows": len(valid.y)}
        classes = np.unique(train.y)
        if len(classes) < 2:
            # One label only (or no rows): LightGBM has nothing to split on; the frequency is the model.
            info["model"] = "constant"
            counts = np.bincount(train.y.astype(np.int64), minlength=n_class) if len(train.y) else None
            if n_class > 2:
                freq = counts / counts.sum() if counts is not None else np.full(n_class, 1.0 / n_class)
                return _Head(None, freq.tolist(), None, info)
            return _Head(None, [float(train.y.mean()) if len(train.y) else 0.0], None, info)

        features = self.feature_names_
        dtrain = lgb.Dataset(
            train.x, label=train.y, weight=train.w, feature_name=features, free_raw_data=False
        )
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        rounds = self.max_rounds
        if len(valid.y):
            valid_sets = [lgb.Dataset(valid.x, label=valid.y, weight=valid.w, reference=dtrain)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        else:
            rounds = min(self.max_rounds, 100)  # nothing to stop on: a modest fixed number of rounds
        booster = lgb.train(
            self._params(n_class), dtrain, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks
        )
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        # Keep only the trees up to the best round, so that predict, save and load agree exactly.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        info.update(model="lightgbm", rounds=best)
        head = _Head(booster, None, None, info)
        if len(valid.y):
            raw = head.raw(valid.x)
            info["ece_valid_raw"] = expected_calibration_error(raw, valid.y)
            if n_class == 2:
                head.calibrator = self._calibrate(raw, valid.y, info)
                if head.calibrator is not None:
                    info["ece_valid_calibrated"] = expected_calibration_error(head.predict(valid.x), valid.y)
        return head

    def _calibrate(self, raw: np.ndarray, label: np.ndarray, info: dict[str, Any]) -> Calibrator | None:
        """The calibrator to use, if any; the evidence goes to `info`."""
        info["calibration"] = "none"
        if self.calibration == "none":
            return None
        if len(label) < self.min_calibration_rows or len(np.unique(label)) < 2:
            info["calibration_skipped"] = "too few validation rows or one label only"
            return None
        if self.calibration in ("platt", "isotonic"):
            info["calibration"] = self.calibration
            return Calibrator.fit(self.calibration, raw, label)
        # auto: cross-fit each method on the two halves of the validation split.
        half = np.random.default_rng(self.seed).permutation(len(label)) % 2 == 0
        info["logloss_valid_raw"] = _log_loss(raw, label)
        best, choice = info["logloss_valid_raw"] * (1 - self.calibration_min_gain), "none"
        for method in ("platt", "isotonic"):
            held_out = np.empty(len(label))
            for fold in (half, ~half):
                if len(np.unique(label[~fold])) < 2:
                    held_out[fold] = raw[fold]
                    continue
                held_out[fold] = Calibrator.fit(method, raw[~fold], label[~fold]).apply(raw[fold])
            loss = _log_loss(held_out, label)
            info[f"logloss_valid_crossfit_{method}"] = loss
            if loss < best:
                best, choice = loss, method
        info["calibration"] = choice
        return None if choice == "none" else Calibrator.fit(choice, raw, label)

    # -- prediction ------------------------------------------------------------------------------------

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        """Stage probabilities, propensities and the outcome of each action; no recommendations."""
        x = data.aggregates.astype(np.float64)
        # Every head but stage and the action outcomes is a propensity (the build's targets, unsubscribe).
        names = [n for n in self.heads_ if n != "stage" and not n.startswith("outcome_")]
        propensity = {t: self.heads_[t].predict(x) for t in names}
        outcome = {}
        for action in ACTIONS:
            name = self.fallback_.get(action, f"outcome_{action}")
            if name not in outcome:
                outcome[name] = self.heads_[name].predict(x)
        return Predictions(
            stage_proba=self.heads_["stage"].predict(x).reshape(len(x), len(STAGES)),
            propensity=propensity,
            action_outcome=np.column_stack(
                [outcome[self.fallback_.get(a, f"outcome_{a}")] for a in ACTIONS]
            ).reshape(len(x), len(ACTIONS)),
        )

    # -- persistence -----------------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Writes each booster in LightGBM's text format and everything else to `meta.json`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        heads = {}
        for name, head in self.heads_.items():
            entry: dict[str, Any] = {"constant": head.constant, "info": head.info, "calibrator": None}
            if head.booster is not None:
                entry["model_file"] = f"{name}.txt"
                head.booster.save_model(str(path / f"{name}.txt"))
            if head.calibrator is not None:
                entry["calibrator"] = asdict(head.calibrator)
            heads[name] = entry
        self._write_meta(
            path, {"feature_names": self.feature_names_, "fallback": self.fallback_, "heads": heads}
        )

    @classmethod
    def load(cls, path: Path) -> LightGBMAggregates:
        """Reads what `save` wrote."""
        path = Path(path)
        self, fitted = cls._read_meta(path)
        self.feature_names_, self.fallback_ = fitted["feature_names"], fitted["fallback"]
        self.heads_ = {}
        for name, entry in fitted["heads"].items():
            booster = (
                lgb.Booster(model_file=str(path / entry["model_file"])) if "model_file" in entry else None
            )
            calibrator = Calibrator(**entry["calibrator"]) if entry["calibrator"] else None
            self.heads_[name] = _Head(booster, entry["constant"], calibrator, entry["info"])
        return self


@dataclass
class _Rows:
    """The rows of one head: features, labels and optional weights."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None


def _sent(data: FeatureData) -> np.ndarray:
    """Rows with a logged message (not no_send) and a known unsubscribe outcome."""
    return (data.logged_action >= 0) & (data.logged_action != NO_SEND) & np.isfinite(data.unsubscribed)


def _logged_outcome(data: FeatureData) -> np.ndarray:
    """Rows with a logged decision, its outcome and a positive propensity."""
    propensity = np.nan_to_num(data.logged_propensity, nan=0.0)
    return (data.logged_action >= 0) & np.isfinite(data.outcome) & (propensity > 0)


# --------------------------------------------------------------------------------------------------------
# The default set
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaselineConfig:
    """The knobs of the default baselines; grids are candidates chosen on the validation split.

    Attributes:
        baselines: which baselines `all_baselines` builds, in order.
        tune_k: cut-off of the validation NDCG that picks the recommenders' knobs.
        popularity_weeks_grid: recency windows of popularity in weeks (None: the whole training window).
        popularity_interaction_weight: weight of sequence events beside purchases in popularity.
        own_cart_weight_grid: own history: candidate add-to-cart weights (purchase = 1).
        own_view_weight_grid: own history: candidate product-view weights.
        own_decay_grid: own history: candidate recency factors per item event.
        knn_neighbours: item k-NN: neighbours kept per item.
        knn_decay: item k-NN: recency factor of the query items.
        knn_own_weight_grid: item k-NN: candidate weights of the own-history score in the mix.
        knn_popularity_weight_grid: item k-NN: candidate weights of popularity in the mix.
        lgbm_learning_rate: LightGBM learning rate.
        lgbm_num_leaves: LightGBM leaves per tree.
        lgbm_min_child_samples: LightGBM rows per leaf.
        lgbm_max_rounds: LightGBM rounds at most.
        lgbm_early_stopping_rounds: LightGBM patience on the validation loss.
        ipw_clip: largest inverse-propensity weight of the T-learner.
        min_action_rows: logged rows an action needs for its own outcome model.
        calibration: "auto", "platt", "isotonic" or "none".
        seed: random seed.
        num_threads: LightGBM threads.
    """

    baselines: tuple[str, ...] = ("popularity", "own_history", "item_knn", "lightgbm_aggregates")
    tune_k: int = 10
    popularity_weeks_grid: tuple[int | None, ...] = (None, 8, 4, 2, 1)
    popularity_interaction_weight: float = 0.0
    own_cart_weight_grid: tuple[float, ...] = (0.25, 0.5, 1.0)
    own_view_weight_grid: tuple[float, ...] = (0.1, 0.3, 0.6)
    own_decay_grid: tuple[float, ...] = (1.0, 0.95, 0.9, 0.8)
    knn_neighbours: int = 100
    knn_decay: float = 0.9
    knn_own_weight_grid: tuple[float, ...] = (0.0, 1.0, 4.0, 16.0)
    knn_popularity_weight_grid: tuple[float, ...] = (0.0, 0.5, 2.0)
    lgbm_learning_rate: float = 0.05
    lgbm_num_leaves: int = 31
    lgbm_min_child_samples: int = 100
    lgbm_max_rounds: int = 1000
    lgbm_early_stopping_rounds: int = 50
    ipw_clip: float = 50.0
    min_action_rows: int = 300
    calibration: Calibration = "auto"
    seed: int = 0
    num_threads: int = 2

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BaselineConfig:
        """Builds a config from a mapping (YAML lists become tuples), naming any unknown key."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown baseline setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def all_baselines(config: Mapping[str, Any] | BaselineConfig | None = None) -> list[Scorer]:
    """The default baselines, unfitted, in `config.baselines` order.

    Args:
        config: a `BaselineConfig` or a mapping of its fields (None: the defaults).
    """
    cfg = config if isinstance(config, BaselineConfig) else BaselineConfig.from_dict(config)
    factories: dict[str, Any] = {
        "popularity": lambda: Popularity(
            cfg.popularity_weeks_grid, cfg.popularity_interaction_weight, tune_k=cfg.tune_k
        ),
        "own_history": lambda: OwnHistory(
            cfg.own_cart_weight_grid,
            cfg.own_view_weight_grid,
            cfg.own_decay_grid,
            popularity_weeks_grid=cfg.popularity_weeks_grid,
            tune_k=cfg.tune_k,
        ),
        "item_knn": lambda: ItemKNN(
            cfg.knn_neighbours,
            decay=cfg.knn_decay,
            own_weight_grid=cfg.knn_own_weight_grid,
            popularity_weight_grid=cfg.knn_popularity_weight_grid,
            popularity_weeks_grid=cfg.popularity_weeks_grid,
            tune_k=cfg.tune_k,
        ),
        "lightgbm_aggregates": lambda: LightGBMAggregates(
            learning_rate=cfg.lgbm_learning_rate,
            num_leaves=cfg.lgbm_num_leaves,
            min_child_samples=cfg.lgbm_min_child_samples,
            max_rounds=cfg.lgbm_max_rounds,
            early_stopping_rounds=cfg.lgbm_early_stopping_rounds,
            ipw_clip=cfg.ipw_clip,
            min_action_rows=cfg.min_action_rows,
            calibration=cfg.calibration,
            seed=cfg.seed,
            num_threads=cfg.num_threads,
        ),
    }
    unknown = [b for b in cfg.baselines if b not in factories]
    if unknown:
        raise ValueError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(factories)}")
    return [factories[b]() for b in cfg.baselines]


BASELINES: dict[str, type[_Saveable]] = {
    cls.__name__: cls for cls in (Popularity, OwnHistory, ItemKNN, LightGBMAggregates)
}


def load_baseline(path: Path) -> Scorer:
    """Loads any baseline that `save` wrote, by the kind recorded in its `meta.json`."""
    kind = json.loads((Path(path) / META).read_text())["kind"]
    if kind not in BASELINES:
        raise ValueError(f"{path}: unknown baseline kind {kind!r}")
    loaded: Scorer = BASELINES[kind].load(Path(path))  # type: ignore[attr-defined]
    return loaded
