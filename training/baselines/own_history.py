"""The customer's own history: repeat purchases (P-TopFreq with TIFU-KNN's recency decay)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import scipy.sparse as sp

from training.baselines.common import (
    _check_items,
    _Saveable,
    _with_next_items,
    history_matrix,
    rank_items,
    ranking_quality,
)
from training.baselines.popularity import Popularity
from training.data import FeatureData
from training.interface import Predictions

log = logging.getLogger(__name__)


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
