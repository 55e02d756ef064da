"""Logistic regression on log recency and log frequency: the simplest strong propensity baseline.

Recency and frequency carry most of what is known about whether a customer buys again or lapses (the
RFM tradition, and the buy-till-you-die models built on the same two numbers), so a model that beats
LightGBM on every aggregate only by a little should first beat this one by a clear margin.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler

from features.encoder import AGGREGATE_NAMES
from predictor.served_heads import AggregateHead, Linear
from training.baselines.common import _Saveable
from training.baselines.lightgbm import _sent
from training.data import FeatureData
from training.interface import Predictions

log = logging.getLogger(__name__)


def propensity_labels(data: FeatureData, target: str) -> np.ndarray:
    """(n,) 0/1 labels of a propensity head, NaN where unknown.

    "unsubscribe" is "unsubscribe if mailed", as LightGBM learns it and the evaluation scores it: known
    only on rows with a logged send (not no_send).
    """
    if target == "unsubscribe":
        return np.where(_sent(data), np.asarray(data.unsubscribed, dtype=np.float64), np.nan)
    return np.asarray(data.targets[target], dtype=np.float64)


class LogisticRF(_Saveable):
    """One logistic regression per propensity head on [log1p(recency), log1p(frequency)].

    Heads: every propensity label of the build (`FeatureData.targets`: purchase_*d, churn_*d) and
    "unsubscribe" (rows with a logged send). The inputs are the aggregates named in `features` (by
    default `recency_days` and `n_purchases`), each clipped at 0, log1p-transformed and standardised on
    the training rows, so that one C grid suits every head. Each head is fitted on the training split
    for every C of the grid and keeps the C of the lowest validation log loss (ties: the first in grid
    order; without labelled validation rows, the first C). A head whose training rows are fewer than
    `min_rows` or hold one class only is left out (`skipped_` says why): the evaluation then has no
    metric for it from this scorer, like a scorer without that head. No stage, items or action outcomes.

    Args:
        features: aggregate names (`features.encoder.AGGREGATE_NAMES`) of the inputs.
        c_grid: candidate inverse regularisation strengths.
        min_rows: labelled training rows a head needs.
        max_iter: solver iterations at most.
    """

    name = "logistic_rf"

    def __init__(
        self,
        features: Sequence[str] = ("recency_days", "n_purchases"),
        c_grid: Sequence[float] = (1.0, 0.1, 0.01, 10.0, 100.0),
        min_rows: int = 50,
        max_iter: int = 1000,
    ) -> None:
        self.features = features
        self.c_grid = c_grid
        self.min_rows = min_rows
        self.max_iter = max_iter

    def _inputs(self, data: FeatureData) -> np.ndarray:
        return np.log1p(np.maximum(data.aggregates[:, self.columns_].astype(np.float64), 0.0))

    def fit(self, train: FeatureData, valid: FeatureData) -> LogisticRF:
        """Fits each head on `train` for every C; keeps the C of the lowest log loss on `valid`."""
        unknown = [f for f in self.features if f not in AGGREGATE_NAMES]
        if unknown or not self.features:
            raise ValueError(
                f"logistic_rf: features must name aggregates ({', '.join(AGGREGATE_NAMES)}), "
                f"not {', '.join(unknown) or 'nothing'}"
            )
        if not self.c_grid or min(self.c_grid) <= 0:
            raise ValueError(f"logistic_rf: c_grid needs positive values, not {list(self.c_grid)}")
        self.columns_ = [AGGREGATE_NAMES.index(f) for f in self.features]
        x_train, x_valid = self._inputs(train), self._inputs(valid)
        scaler = StandardScaler().fit(x_train if len(x_train) else np.zeros((1, len(self.columns_))))
        self.mean_ = np.asarray(scaler.mean_, dtype=np.float64)
        self.scale_ = np.asarray(scaler.scale_, dtype=np.float64)
        self.heads_: dict[str, dict[str, Any]] = {}
        self.skipped_: dict[str, str] = {}
        for target in (*train.targets, "unsubscribe"):
            y_train, y_valid = propensity_labels(train, target), propensity_labels(valid, target)
            known_t, known_v = np.isfinite(y_train), np.isfinite(y_valid)
            classes = np.unique(y_train[known_t])
            if known_t.sum() < self.min_rows or len(classes) < 2:
                self.skipped_[target] = (
                    f"{int(known_t.sum())} labelled training rows, classes {classes.tolist()}"
                )
                log.info("logistic_rf: no %s head (%s)", target, self.skipped_[target])
                continue
            self.heads_[target] = self._fit_head(
                self._standard(x_train[known_t]), y_train[known_t],
                self._standard(x_valid[known_v]), y_valid[known_v],
            )  # fmt: skip
            log.info("logistic_rf: %s C %g", target, self.heads_[target]["C"])
        return self

    def _standard(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_) / self.scale_

    def _fit_head(self, x: np.ndarray, y: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray) -> dict:
        validation: dict[str, float] = {}
        best, best_loss = None, np.inf
        for c in self.c_grid:
            model = LogisticRegression(C=c, max_iter=self.max_iter).fit(x, y)
            head = {"C": float(c), "coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0])}
            if len(y_valid) == 0:  # nothing to choose by: the first C
                return {**head, "validation": validation}
            loss = float(log_loss(y_valid, _probability(head, x_valid), labels=[0.0, 1.0]))
            validation[str(c)] = loss
            if best is None or loss < best_loss:
                best, best_loss = head, loss
        assert best is not None  # the grid is not empty (checked in fit)
        return {**best, "validation": validation}

    def served(self, target: str) -> AggregateHead:
        """A fitted head as the composite model serves it (and as `predict` scores it)."""
        head = self.heads_[target]
        linear = Linear(
            columns=[int(c) for c in self.columns_],
            mean=[float(m) for m in self.mean_],
            scale=[float(v) for v in self.scale_],
            coef=[float(c) for c in head["coef"]],
            intercept=float(head["intercept"]),
        )
        return AggregateHead(linear=linear, info={"model": "logistic", "C": head["C"]})

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        """The propensity of each fitted head; no stage, items or action outcomes."""
        return Predictions(propensity={t: self.served(t).predict(data.aggregates) for t in self.heads_})

    def save(self, path: Path) -> None:
        """Writes everything (coefficients, scaling, chosen C) to `meta.json`."""
        fitted = {
            "columns": self.columns_,
            "mean": self.mean_,
            "scale": self.scale_,
            "heads": self.heads_,
            "skipped": self.skipped_,
        }
        self._write_meta(Path(path), fitted)

    @classmethod
    def load(cls, path: Path) -> LogisticRF:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        self.columns_, self.heads_, self.skipped_ = fitted["columns"], fitted["heads"], fitted["skipped"]
        self.mean_ = np.asarray(fitted["mean"], dtype=np.float64)
        self.scale_ = np.asarray(fitted["scale"], dtype=np.float64)
        return self


def _probability(head: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The head's probability of the positive class (sklearn's binary `predict_proba`, column 1)."""
    return np.asarray(expit(x @ np.asarray(head["coef"]) + head["intercept"]), dtype=np.float64)
