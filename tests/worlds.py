"""The simulated worlds the tests share: a shop, its feature build, the models fitted on it, the registry.

Registered by `tests/conftest.py` (`pytest_plugins`), so a test asks for a fixture by name and imports
nothing but the types it annotates with. Every fixture is session-scoped and built on first use only.

One world is shared by the serving tests and the training tests: `shop` -> `build` -> `served` (the model
registered as champion) and `scorer` (the model whose behaviour tests/test_training.py judges). The other
worlds differ in what their tests assert on, so each keeps its own simulator and build settings and its own
name: `map_shop`/`map_build` (tests/test_journey_map.py), `short_shop`/`short_build`/`short_scorer`
(tests/test_registry_server.py) and `stage_shop` (tests/test_labels.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from features.build import build_features
from features.encoder import EncoderConfig
from features.sim import SimConfig, simulate
from features.snapshots import BuildConfig

# Every pytest run imports this plugin, the unit tests' too: torch and MLflow (training.*, seconds to
# import) wait for the first fixture that fits or registers a model.
if TYPE_CHECKING:
    from training.data import FeatureBuild
    from training.sequence import SequenceScorer

# -- the small shop: serving and training -------------------------------------------------------------------


@pytest.fixture(scope="session")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small shop: 1,500 simulated customers over 120 days and 300 items (seed 3)."""
    out = tmp_path_factory.mktemp("shop")
    simulate(SimConfig(n_customers=1_500, days=120, n_items=300, seed=3), out, progress=False)
    return out


@pytest.fixture(scope="session")
def build(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBuild:
    """The small shop's features: histories of 20 events, one bucket, with the logged decisions."""
    from training.data import FeatureBuild

    out = tmp_path_factory.mktemp("features")
    config = BuildConfig(encoder=EncoderConfig(max_len=20), n_buckets=1, workers=1)
    build_features(shop / "events", out, config, decisions=shop / "decisions.parquet", progress=False)
    return FeatureBuild.open(out)


@pytest.fixture(scope="session")
def scorer(build: FeatureBuild) -> SequenceScorer:
    """A sequence model fitted for 10 epochs on `build`: the one tests/test_training.py judges (its loss
    falls by a fifth, a checkout moves the stage toward decision). Not `served.scorer`, a 6-epoch fit."""
    from training.sequence import FitConfig, SequenceScorer, model_config_for

    config = model_config_for(build, d_model=32, n_layers=1, dropout=0.0)
    fit = FitConfig(max_epochs=10, patience=10, batch_size=256, lr=3e-3, seed=0)
    return SequenceScorer(config, fit, progress=False).fit(build.split("train"), build.split("valid"))


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
        import mlflow

        from predictor.registry import MODEL_NAME
        from training.registry import log_scorer

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
def served_world(shop: Path, build: FeatureBuild, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """A small trained model (6 epochs on `build`) registered as champion in a real registry: an MLflow
    SQLite store in a temporary folder. Built once; the tests reach it through `served`."""
    from predictor.registry import CHAMPION
    from training.sequence import FitConfig, SequenceScorer, model_config_for

    root = tmp_path_factory.mktemp("served")
    model = model_config_for(build, d_model=32, n_layers=1, dropout=0.0)
    fit = FitConfig(max_epochs=6, patience=6, batch_size=256, lr=3e-3, seed=0)
    scorer = SequenceScorer(model, fit, progress=False).fit(build.split("train"), build.split("valid"))
    uri = f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"
    env = Served(uri, root, shop, build, scorer, shop_events(shop), "")
    with _registry(env.tracking_uri):
        env.version = env.register(scorer, CHAMPION)
    return env


@pytest.fixture(scope="module")
def served(served_world: Served) -> Iterator[Served]:
    """`served_world`, with `MLFLOW_TRACKING_URI` and MLflow pointing at its registry for the whole module.

    Per module, not per session: other modules point MLflow at their own stores in between, and a
    module's tests (and its module-scoped managers) must find this registry whatever ran before.
    """
    with _registry(served_world.tracking_uri):
        yield served_world


@contextmanager
def _registry(uri: str) -> Iterator[None]:
    from predictor.registry import configure

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        configure("serving-test")
        yield


# -- the journey-map shop -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def map_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 customers over 120 days and 150 items (seed 5): small enough to train on inside a test."""
    out = tmp_path_factory.mktemp("map_shop")
    simulate(SimConfig(n_customers=300, days=120, n_items=150, seed=5), out, progress=False)
    return out


@pytest.fixture(scope="session")
def map_build(map_shop: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBuild:
    """The journey-map shop's features: histories of 10 events, one bucket, with the logged decisions."""
    from training.data import FeatureBuild

    out = tmp_path_factory.mktemp("map_features")
    config = BuildConfig(encoder=EncoderConfig(max_len=10), n_buckets=1, workers=1)
    build_features(map_shop / "events", out, config, decisions=map_shop / "decisions.parquet", progress=False)
    return FeatureBuild.open(out)


# -- the short shop: the registry server --------------------------------------------------------------------


@pytest.fixture(scope="session")
def short_shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 customers over 60 days and 100 items (seed 3): a registry test needs a model, not a good one."""
    out = tmp_path_factory.mktemp("short_shop")
    simulate(SimConfig(n_customers=400, days=60, n_items=100, seed=3), out, progress=False)
    return out


@pytest.fixture(scope="session")
def short_build(short_shop: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBuild:
    """The short shop's features: label horizons of 5 and 10 days, histories of 20 events, one bucket."""
    from training.data import FeatureBuild

    out = tmp_path_factory.mktemp("short_features")
    # Short label horizons leave room for train, valid and test cutoffs in 60 days.
    labels = {"purchase_horizons": [5], "churn_days": 10, "next_items_days": 10}
    encoder = {"max_len": 20}
    config = BuildConfig.from_dict({"encoder": encoder, "labels": labels, "n_buckets": 1, "workers": 1})
    events, decisions = short_shop / "events", short_shop / "decisions.parquet"
    build_features(events, out, config, decisions=decisions, progress=False)
    return FeatureBuild.open(out)


@pytest.fixture(scope="session")
def short_scorer(short_build: FeatureBuild) -> SequenceScorer:
    """A one-epoch model on `short_build`."""
    from training.sequence import FitConfig, SequenceScorer, model_config_for

    config = model_config_for(short_build, d_model=16, n_layers=1, dropout=0.0)
    fit = FitConfig(max_epochs=1, patience=1, batch_size=256, lr=3e-3, seed=0)
    train, valid = short_build.split("train"), short_build.split("valid")
    return SequenceScorer(config, fit, progress=False).fit(train, valid)


# -- the stage shop: the hindsight labels against the latent stages ------------------------------------------


@pytest.fixture(scope="session")
def stage_shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """2,500 customers (seed 3, the simulator's other defaults) and their default build: (shop, features).

    The size that tests/test_labels.py's agreement floor (`MIN_AGREEMENT`) was measured on.
    """
    root = tmp_path_factory.mktemp("stage_shop")
    simulate(SimConfig(n_customers=2_500, seed=3), root / "shop", progress=False)
    build_features(
        root / "shop" / "events",
        root / "features",
        BuildConfig(workers=1),
        decisions=root / "shop" / "decisions.parquet",
        progress=False,
    )
    return root / "shop", root / "features"
