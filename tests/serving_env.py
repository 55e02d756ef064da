"""A small trained model in a real registry (an MLflow SQLite store in a temporary folder), shared by the
serving tests: `from tests.serving_env import served  # noqa: F401` makes the fixture available."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from features.build import BuildConfig, build_features
from features.encoder import EncoderConfig
from features.simulate import SimConfig, simulate
from training.data import FeatureBuild
from training.registry import CHAMPION, MODEL_NAME, configure, log_scorer
from training.sequence import FitConfig, SequenceScorer, model_config_for


@dataclass
class Served:
    """What the serving tests need: the store URI, the shop and its events, the build and the model."""

    tracking_uri: str
    root: Path
    shop: Path
    build: FeatureBuild
    scorer: SequenceScorer
    events: pd.DataFrame
    version: str

    def register(self, scorer: SequenceScorer, alias: str | None = None) -> str:
        """Logs another version of a scorer; moves `alias` to it when given."""
        with mlflow.start_run():
            version = str(log_scorer(scorer, self.build.vocab, self.events.head(20)))
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, alias, version)
        return version


def shop_events(shop: Path) -> pd.DataFrame:
    events = pd.read_parquet(shop / "events")
    for col in events.columns:
        if isinstance(events[col].dtype, pd.CategoricalDtype):
            events[col] = events[col].astype(object)
    return events.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    shop = root / "shop"
    simulate(SimConfig(n_customers=1_500, days=120, n_items=300, seed=3), shop, progress=False)
    features = root / "features"
    config = BuildConfig(encoder=EncoderConfig(max_len=20), n_buckets=1, workers=1)
    build_features(shop / "events", features, config, decisions=shop / "decisions.parquet", progress=False)
    build = FeatureBuild.open(features)
    model = model_config_for(build, d_model=32, n_layers=1, dropout=0.0)
    fit = FitConfig(max_epochs=6, patience=6, batch_size=256, lr=3e-3, seed=0)
    scorer = SequenceScorer(model, fit, progress=False).fit(build.split("train"), build.split("valid"))

    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        configure("serving-test")
        env = Served(uri, root, shop, build, scorer, shop_events(shop), "")
        env.version = env.register(scorer, CHAMPION)
        yield env
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
