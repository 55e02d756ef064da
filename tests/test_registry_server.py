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

from predictor.pyfunc import JourneyPyfunc
from predictor.registry import CHAMPION, MODEL_NAME, configure, load_registered
from tests.servers import MlflowServer
from training.data import FeatureBuild
from training.registry import log_scorer
from training.sequence import SequenceScorer

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# `short_shop`, `short_build` and `short_scorer`: the short shop of tests/worlds.py.


@pytest.fixture
def server_store(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[MlflowServer]:
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
    short_scorer: SequenceScorer,
    short_build: FeatureBuild,
    short_shop: Path,
    server_store: MlflowServer,
    tmp_path: Path,
) -> None:
    events = _busiest_customer(short_shop)
    with mlflow.start_run():
        version = str(log_scorer(short_scorer, short_build.vocab, events))
    client = MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version == version

    # On a features split, through our pyfunc class.
    loaded = load_registered(alias=CHAMPION).pyfunc
    test = short_build.split("test")
    a, b = short_scorer.predict(test, k=10), loaded.predict_features(test, k=10)
    assert a.stage_proba is not None
    assert b.stage_proba is not None
    np.testing.assert_allclose(a.stage_proba, b.stage_proba, rtol=1e-6)
    assert a.propensity.keys() == b.propensity.keys()
    for name in a.propensity:
        np.testing.assert_allclose(a.propensity[name], b.propensity[name], rtol=1e-6)
    np.testing.assert_array_equal(a.top_items, b.top_items)

    # On raw events, through the generic pyfunc interface, against the same wrapper built locally.
    short_scorer.to_predictor(short_build.vocab).save(tmp_path / "predictor")
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
    short_scorer: SequenceScorer,
    short_build: FeatureBuild,
    short_shop: Path,
    server_store: MlflowServer,
    tmp_path: Path,
) -> None:
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.settings import ServeSettings

    events = _busiest_customer(short_shop)
    with mlflow.start_run():
        version = str(log_scorer(short_scorer, short_build.vocab, events))
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
