"""Global popularity: the items bought most in the training window (optionally only its last weeks)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from features.vocab import FIRST
from training.baselines.common import (
    MS_PER_WEEK,
    _check_items,
    _Saveable,
    _with_next_items,
    history_matrix,
    popularity_order,
    ranking_quality,
)
from training.data import FeatureData
from training.interface import Predictions


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
