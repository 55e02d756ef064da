"""The registry code against the registry a team runs: `mlflow server` on PostgreSQL, artifacts proxied.

A model logged and registered through the server, promoted to `champion` and loaded back by alias scores
exactly as the model in memory; the registration sits in PostgreSQL and the files behind the proxy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from mlflow import MlflowClient

from features.build import BuildConfig, build_features
from features.simulate import SimConfig, simulate
from predictor.pyfunc import JourneyPyfunc
from tests.servers import MlflowServer, mlflow_server  # noqa: F401
from training.data import FeatureBuild
from training.registry import CHAMPION, MODEL_NAME, configure, load_by_alias, log_scorer
from training.sequence import FitConfig, SequenceScorer, model_config_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    simulate(SimConfig(n_customers=400, days=60, n_items=100, seed=3), out, progress=False)
    return out


@pytest.fixture(scope="module")
def build(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> FeatureBuild:
    out = tmp_path_factory.mktemp("features")
    # Short label horizons leave room for train, valid and test cutoffs in 60 days.
    labels = {"purchase_horizons": [5], "churn_days": 10, "next_items_days": 10}
    encoder = {"max_len": 20}
    config = BuildConfig.from_dict({"encoder": encoder, "labels": labels, "n_buckets": 1, "workers": 1})
    build_features(shop / "events", out, config, decisions=shop / "decisions.parquet", progress=False)
    return FeatureBuild.open(out)


@pytest.fixture(scope="module")
def scorer(build: FeatureBuild) -> SequenceScorer:
    config = model_config_for(build, d_model=16, n_layers=1, dropout=0.0)
    fit = FitConfig(max_epochs=1, patience=1, batch_size=256, lr=3e-3, seed=0)
    return SequenceScorer(config, fit, progress=False).fit(build.split("train"), build.split("valid"))


@pytest.fixture
def server_store(
    mlflow_server: MlflowServer,  # noqa: F811 (the imported fixture, requested by name)
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[MlflowServer]:
    """The process's MLflow client pointed at the server, and pointed back afterwards."""
    previous = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)  # set_experiment exports it
    configure("test")
    yield mlflow_server
    mlflow.set_tracking_uri(previous)


def _busiest_customer(shop: Path) -> pd.DataFrame:
    events = pd.read_parquet(shop / "events")
    for col in events.columns:
        if isinstance(events[col].dtype, pd.CategoricalDtype):
            events[col] = events[col].astype(object)
    customer = events["customer_id"].value_counts().index[0]
    return events[events["customer_id"] == customer].head(20).reset_index(drop=True)


def test_champion_loaded_from_a_postgres_backed_server_scores_as_in_memory(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, server_store: MlflowServer, tmp_path: Path
) -> None:
    events = _busiest_customer(shop)
    with mlflow.start_run():
        version = str(log_scorer(scorer, build.vocab, events))
    client = MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == version

    # On a features split, through our pyfunc class.
    loaded = load_by_alias(CHAMPION)
    test = build.split("test")
    a, b = scorer.predict(test, k=10), loaded.predict_features(test, k=10)
    assert a.stage_proba is not None
    assert b.stage_proba is not None
    np.testing.assert_allclose(a.stage_proba, b.stage_proba, rtol=1e-6)
    assert a.propensity.keys() == b.propensity.keys()
    for name in a.propensity:
        np.testing.assert_allclose(a.propensity[name], b.propensity[name], rtol=1e-6)
    np.testing.assert_array_equal(a.top_items, b.top_items)

    # On raw events, through the generic pyfunc interface, against the same wrapper built locally.
    scorer.to_predictor(build.vocab).save(tmp_path / "predictor")
    local = JourneyPyfunc()
    local.load_from(tmp_path / "predictor")
    raw = events.copy()
    raw["ts"] = raw["ts"].astype(str)
    params = {"now": "2026-04-01T00:00:00+00:00", "k": 5}
    served = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}").predict(raw, params=params)
    pd.testing.assert_frame_equal(served, local.predict(None, raw, params=params), rtol=1e-6)

    # The registry is the PostgreSQL database, and the files went through the server's proxy.
    engine = sqlalchemy.create_engine(server_store.backend_store_uri)
    assert engine.dialect.name == "postgresql"
    with engine.connect() as connection:
        names = connection.execute(sqlalchemy.text("SELECT name FROM registered_models")).scalars().all()
        aliases = connection.execute(
            sqlalchemy.text("SELECT alias, version FROM registered_model_aliases WHERE name = :name"),
            {"name": MODEL_NAME},
        ).all()
    engine.dispose()
    assert MODEL_NAME in names
    assert (CHAMPION, int(version)) in [tuple(row) for row in aliases]
    assert list(server_store.artifacts.rglob("MLmodel"))


def test_the_service_loads_its_champion_from_the_server(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, server_store: MlflowServer, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import ServeSettings

    events = _busiest_customer(shop)
    with mlflow.start_run():
        version = str(log_scorer(scorer, build.vocab, events))
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    settings = ServeSettings(
        tracking_uri=server_store.tracking_uri,
        store_url=f"sqlite:///{tmp_path / 'online.db'}",
        api_keys=("k",),
        reload_interval_s=0,
    )
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        info = client.get("/v1/model", headers={"X-API-Key": "k"}).json()
        assert info["version"] == version
        rows = [
            {k: v for k, v in r.items() if isinstance(v, str) and k != "customer_id"}
            for r in events.assign(ts=events["ts"].astype(str)).to_dict(orient="records")
        ]
        body = {"customer_id": str(events["customer_id"].iloc[0]), "events": rows}
        answer = client.post("/v1/score", json=body, headers={"X-API-Key": "k"})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == {"name": MODEL_NAME, "version": version}
