"""The one small interface every model family sits behind, so that evaluation treats them alike.

`Predictions` itself lives in `predictor.interface` (the served model answers with it too).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from predictor.interface import Predictions
from training.data import FeatureData

__all__ = ["Predictions", "Scorer"]


@runtime_checkable
class Scorer(Protocol):
    """fit on the training window (validation for early stopping), predict any split."""

    name: str

    def fit(self, train: FeatureData, valid: FeatureData) -> Scorer: ...

    def predict(self, data: FeatureData, k: int = 50) -> Predictions: ...
