"""Item co-occurrence k-NN: items similar (cosine, top-M neighbours) to what the customer recently touched."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from features.vocab import FIRST
from training.baselines.common import (
    _BLOCK_CELLS,
    CART_TOKEN,
    PURCHASE_TOKEN,
    VIEW_TOKEN,
    _check_items,
    _row_max_normalise,
    _Saveable,
    _with_next_items,
    history_matrix,
    rank_items,
    ranking_quality,
)
from training.baselines.popularity import Popularity
from training.data import FeatureData
from training.interface import Predictions


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
