"""The registered model: an MLflow pyfunc around the `Predictor` that scores raw events.

Its code (`code_paths`) is `features` and `predictor`, and its pip requirements are what inference
imports (`inference_requirements`): `mlflow models serve` and the scoring service load it without the
training code.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from features.encoder import encode
from features.labels import cart_abandon_hours
from features.schema import ACTIONS, STAGES
from features.vocab import Vocabulary, translation
from predictor.interface import Predictions
from predictor.predictor import Predictor

# The artifact key under which the predictor's files are logged.
ARTIFACT = "predictor"
# What `features` and `predictor` import, and MLflow to load them.
INFERENCE_PACKAGES = ("mlflow", "torch", "numpy", "pandas", "pyarrow")


class JourneyPyfunc(PythonModel):
    """Scores customers from their raw events: stage, propensities, action outcomes, top items.

    Input: events following the event contract (one or many customers). Params: `now` (ISO time of
    scoring; default: just after each customer's last event) and `k` (items to return).
    Output: one row per customer.
    """

    predictor: Predictor

    def load_context(self, context: Any) -> None:
        self.load_from(Path(context.artifacts[ARTIFACT]))

    def load_from(self, path: Path) -> None:
        self.predictor = Predictor.load(path)

    def predict_features(self, data: Any, k: int = 50, vocab: Vocabulary | None = None) -> Predictions:
        """Predictions on a features split (`training.data.FeatureData`: padded tokens and aggregates),
        what the promotion gate and `journey evaluate` score.

        Args:
            vocab: the vocabulary the split's tokens are in (its build's). When it is not the model's (a
                model refitted on a wider vocabulary: `training.refit`), items and categories are
                translated to the model's indices, and the recommended items back to the split's (an item
                the split's vocabulary does not hold comes back as OOV: it cannot be relevant there).
        """
        tokens, history = data.tokens, getattr(data, "history", None)
        own = self.predictor.vocab
        if vocab is None or all(vocab.tokens[f] == own.tokens[f] for f in ("item_id", "category")):
            return self.predictor.score_arrays(tokens, data.aggregates, k, history)
        item, category = translation(vocab, own, "item_id"), translation(vocab, own, "category")
        tokens = {**tokens, "item_id": item[tokens["item_id"]], "category": category[tokens["category"]]}
        if history and "item" in history:
            history = {**history, "item": item[history["item"]]}
        pred = self.predictor.score_arrays(tokens, data.aggregates, k, history)
        if pred.top_items is not None:
            pred.top_items = translation(own, vocab, "item_id")[pred.top_items]
        return pred

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: Mapping[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", 10))
        events = model_input.copy()
        events["ts"] = pd.to_datetime(events["ts"], utc=True, format="ISO8601")
        customers = np.sort(events["customer_id"].astype(str).unique())
        if params.get("now"):
            now = pd.Series(pd.Timestamp(params["now"]), index=customers)
            now = now.dt.tz_localize("UTC") if now.dt.tz is None else now.dt.tz_convert("UTC")
        else:
            now = events.groupby(events["customer_id"].astype(str))["ts"].max() + pd.Timedelta(microseconds=1)
        cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": now.loc[customers].to_numpy()})
        batch = encode(events, cutoffs, self.predictor.vocab, self.predictor.encoder_config)
        open_cart = np.asarray(batch.aggregates["open_cart"]) >= 1
        return predictions_frame(customers, self.predictor.score(batch, k), self.predictor.items, open_cart)


def predictions_frame(
    customers: np.ndarray, pred: Predictions, items: np.ndarray, open_cart: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per customer: stage, its probabilities, propensities, action outcomes, top item ids.

    The cart-abandonment head (`features.labels.cart_abandon_hours`) answers only for a customer with an
    open cart (`open_cart`, the encoder's aggregate); NaN for the others, as the service answers null.
    """
    if pred.stage_proba is None or pred.action_outcome is None or pred.top_items is None:
        raise ValueError("the scorer must predict stage, action outcomes and items")
    out = pd.DataFrame({"customer_id": customers, "stage": np.array(STAGES)[pred.stage_proba.argmax(1)]})
    for j, s in enumerate(STAGES):
        out[f"p_stage_{s}"] = pred.stage_proba[:, j]
    for name, p in pred.propensity.items():
        if open_cart is not None and cart_abandon_hours(name) is not None:
            p = np.where(open_cart, p, np.nan)
        out[f"p_{name}"] = p
    for j, a in enumerate(ACTIONS):
        out[f"p_outcome_{a}"] = pred.action_outcome[:, j]
    out["top_items"] = [" ".join(items[row]) for row in pred.top_items]
    return out


def inference_requirements(lightgbm: bool = False) -> list[str]:
    """Pinned pip requirements of the registered model: only what inference imports (and LightGBM where
    the composite serves a head with a booster: `predictor.served_heads`)."""
    reqs = []
    for name in (*INFERENCE_PACKAGES, *(("lightgbm",) if lightgbm else ())):
        try:
            reqs.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs
