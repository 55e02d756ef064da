"""The smoke test a version passes before it is served, and the manager's memory of refused versions, on the
small trained model of `tests/worlds.py` in a real registry (MLflow on SQLite)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from features.vocab import FIRST
from predictor.registry import MODEL_NAME
from serving.model import (
    LoadedModel,
    ModelManager,
    ModelRefused,
    catalogue_events,
    load_version,
    smoke_samples,
)
from tests.worlds import Served
from training.sequence import SequenceScorer

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ALIAS = "smoke"  # an alias of its own: the serving tests share the registry and its champion


def nan_items_but_one(scorer: SequenceScorer) -> SequenceScorer:
    """A copy whose item embeddings are NaN for every item but the first (the old smoke customer's)."""
    broken = copy.deepcopy(scorer)
    with torch.no_grad():
        broken.model_.embed["item_id"].weight[FIRST + 1 :] = float("nan")
    return broken


def counting(calls: list[str]) -> Callable[..., LoadedModel]:
    def loader(name: str, version: str, alias: str) -> LoadedModel:
        calls.append(version)
        return load_version(name, version, alias)

    return loader


def test_nan_item_embeddings_of_all_items_but_one_are_refused(served: Served) -> None:
    version = served.register(nan_items_but_one(served.scorer))
    with pytest.raises(ModelRefused, match="item embeddings not finite") as refused:
        load_version(MODEL_NAME, version, ALIAS)
    assert refused.value.permanent
    n_items = len(served.build.vocab.tokens["item_id"])
    assert f"for {n_items - 1:,} of {n_items:,} items" in str(refused.value)
    # The answers are checked too, not only the weights: scoring the catalogue's customers shows NaN.
    assert "not finite" in str(refused.value).split("item embeddings", 1)[1]


def test_the_synthetic_customers_cover_the_whole_catalogue(served: Served) -> None:
    loaded = load_version(MODEL_NAME, served.version, ALIAS)
    now = datetime.now(UTC)
    events = catalogue_events(loaded, now)
    assert set(events["item_id"]) == set(served.build.vocab.tokens["item_id"])
    assert events.groupby("customer_id").size().max() <= loaded.encoder_config.max_len
    samples = {what: ids for what, _, ids in smoke_samples(loaded, now)}
    assert any("input example" in what for what in samples)  # the events the model was logged with


def test_a_sample_of_real_customers_is_scored_and_its_failure_does_not_refuse(
    served: Served,
) -> None:
    customers = sorted(served.events["customer_id"].unique())[:5]
    sample = served.events[served.events["customer_id"].isin(customers)]
    asked: list[int] = []

    def sample_events() -> pd.DataFrame:
        asked.append(len(sample))
        return sample

    loaded = load_version(MODEL_NAME, served.version, ALIAS, sample_events=sample_events)
    assert asked == [len(sample)]
    found = {what: set(ids) for what, _, ids in smoke_samples(loaded, datetime.now(UTC), sample_events)}
    assert found["customers of the online store"] == set(customers)

    def broken_store() -> pd.DataFrame:
        raise ConnectionError("store down")

    assert (
        load_version(MODEL_NAME, served.version, ALIAS, sample_events=broken_store).version == served.version
    )


def test_a_refused_version_is_not_loaded_again_until_the_alias_moves(served: Served) -> None:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, ALIAS, served.version)
    calls: list[str] = []
    manager = ModelManager(MODEL_NAME, ALIAS, loader=counting(calls))
    assert manager.reload()["changed"]
    assert calls == [served.version]

    broken = served.register(nan_items_but_one(served.scorer), ALIAS)
    first: dict[str, Any] = manager.reload()
    assert calls == [served.version, broken]
    assert first["changed"] is False
    assert first["version"] == served.version
    assert "item embeddings not finite" in first["error"]
    assert manager.status.refused_version == broken
    for _ in range(2):  # the alias has not moved: the refused version is not downloaded again
        again = manager.reload()
        assert calls == [served.version, broken]
        assert again["changed"] is False
        assert "refused earlier" in again["error"]
        assert "item embeddings not finite" in manager.status.error
    assert manager.current is not None
    assert manager.current.version == served.version

    fixed = served.register(served.scorer, ALIAS)  # the alias moves: the next version is loaded
    moved = manager.reload()
    assert calls == [served.version, broken, fixed]
    assert moved == {"changed": True, "version": fixed, "previous": served.version, "error": None}
    assert manager.status.refused_version is None
    assert manager.status.error is None


def test_a_failed_download_is_retried(served: Served) -> None:
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, ALIAS, served.version)
    attempts: list[str] = []

    def flaky(name: str, version: str, alias: str) -> LoadedModel:
        attempts.append(version)
        if len(attempts) == 1:
            raise ModelRefused(f"{name} version {version}: could not load: OSError: timed out")
        return load_version(name, version, alias)

    manager = ModelManager(MODEL_NAME, ALIAS, loader=flaky)
    assert manager.reload()["error"]
    assert manager.status.refused_version is None
    assert manager.reload()["changed"]
    assert attempts == [served.version, served.version]
    assert manager.current is not None
    assert np.isfinite(manager.current.predictor.model.embed["item_id"].weight.detach().numpy()).all()
