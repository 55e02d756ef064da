"""The refit before registration: the vocabulary up to the last labelled cutoff, the network widened to it
(known rows kept, new items from their category) and fine-tuned on every labelled row."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features.build import build_features
from features.snapshots import BuildConfig
from features.vocab import FIRST
from tests.factories import events, write_events
from training.config import TrainConfig
from training.data import FeatureBuild
from training.refit import item_categories, refit_for_registration, widen
from training.sequence import FitConfig, SequenceScorer, model_config_for


@pytest.fixture(scope="module")
def late_world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FeatureBuild]:
    """The short shop's events plus an item launched after the validation start and bought by 30
    customers: a build of the default vocabulary window cannot know it."""
    from features.sim import SimConfig, simulate
    from tests.worlds import shop_events

    root = tmp_path_factory.mktemp("late")

    simulate(SimConfig(n_customers=300, days=60, n_items=60, seed=4), root / "shop", progress=False)
    base = shop_events(root / "shop")
    labels = {"purchase_horizons": [5], "churn_days": 10, "next_items_days": 10}
    config = BuildConfig.from_dict(
        {"encoder": {"max_len": 10}, "n_buckets": 1, "workers": 1, "labels": labels}
    )
    build_features(root / "shop" / "events", root / "features", config, progress=False)
    build = FeatureBuild.open(root / "features")
    valid_start = pd.Timestamp(build.manifest["vocab_window_end"])
    last = max(pd.Timestamp(c, tz="UTC") for cs in build.manifest["cutoffs"].values() for c in cs)
    assert valid_start < last
    moment = valid_start + (last - valid_start) / 2
    buyers = base["customer_id"].drop_duplicates().head(30)
    late = events(*((c, moment.isoformat(), "purchase", "LATE-ITEM9", 10.0) for c in buyers))
    late["category"] = base["category"].dropna().mode().iloc[0]  # a category with known items
    extra = pd.concat([base, late], ignore_index=True)
    write_events(extra, root / "events" / "part-0.parquet")
    build_features(root / "events", root / "features2", config, progress=False)
    return root / "events", FeatureBuild.open(root / "features2")


def test_the_refit_window_knows_items_launched_after_the_validation_start(
    late_world: tuple[Path, FeatureBuild], tmp_path: Path
) -> None:
    from training.refit import refit_build

    _, build = late_world
    assert "LATE-ITEM9" not in build.vocab.tokens["item_id"]  # selection never sees it
    wide = refit_build(build, tmp_path / "wide")
    assert "LATE-ITEM9" in wide.vocab.tokens["item_id"]
    assert set(build.vocab.tokens["item_id"]) <= set(wide.vocab.tokens["item_id"])
    # The same rows, tokenised wider.
    assert wide.manifest["rows"] == build.manifest["rows"]
    assert wide.manifest["vocab_window_end"] > build.manifest["vocab_window_end"]


def test_widen_keeps_known_rows_and_starts_new_items_from_their_category(
    late_world: tuple[Path, FeatureBuild], tmp_path: Path
) -> None:
    from training.refit import refit_build

    events_path, build = late_world
    wide = refit_build(build, tmp_path / "wide")
    config = model_config_for(build, d_model=8, n_layers=1)
    model = SequenceScorer(config, FitConfig(max_epochs=1, batch_size=256), progress=False)
    model.fit(build.split("train"), build.split("valid"))
    wide_config = replace(model_config_for(wide, d_model=8, n_layers=1), targets=config.targets)
    category_of = item_categories(events_path, wide.vocab)
    widened = widen(model.model_, wide_config, build.vocab, wide.vocab, category_of)

    old_w = model.model_.embed["item_id"].weight.detach()
    new_w = widened.embed["item_id"].weight.detach()
    for token in build.vocab.tokens["item_id"][:20]:
        i_old = build.vocab.tokens["item_id"].index(token) + FIRST
        i_new = wide.vocab.tokens["item_id"].index(token) + FIRST
        torch.testing.assert_close(new_w[i_new], old_w[i_old], rtol=0, atol=0)
    late = wide.vocab.tokens["item_id"].index("LATE-ITEM9") + FIRST
    peers = [i for i in range(FIRST, len(category_of)) if category_of[i] == category_of[late] and i != late]
    assert category_of[late] >= FIRST
    assert peers  # the late item has the shop's commonest category
    torch.testing.assert_close(new_w[late], new_w[peers].mean(dim=0))
    assert torch.isfinite(widened.item_bias[late])


def test_the_registered_model_can_recommend_an_item_launched_after_selection(
    late_world: tuple[Path, FeatureBuild], tmp_path: Path
) -> None:
    from training.refit import refit_build

    _, build = late_world
    config = TrainConfig(features=str(build.path), model={"d_model": 8, "n_layers": 1},
                         refit={"epochs": 2, "lr_scale": 1.0})  # fmt: skip
    fit = FitConfig(max_epochs=2, batch_size=256)
    model = SequenceScorer(model_config_for(build, d_model=8, n_layers=1), fit, progress=False)
    model.fit(build.split("train"), build.split("valid"))
    fitted, vocab = refit_for_registration(model, build, config)
    unit = fitted.to_predictor(vocab)
    late = vocab.tokens["item_id"].index("LATE-ITEM9") + FIRST
    assert unit.catalogue_size == len(vocab.tokens["item_id"])
    bias, _ = unit.model._item_table()
    assert np.isfinite(float(bias[late]))  # rankable: not masked as out-of-vocabulary
    assert unit.calibration == model.calibration_  # the temperatures fitted on validation stay
    # Ranked over the whole catalogue, the new item reaches the top 10 of customers who bought it.
    test = refit_build(build, tmp_path / "wide").split("test")
    bought = np.array([late in t for t in test.tokens["item_id"]])
    assert bought.any()
    top = unit.score_arrays(test.tokens, test.aggregates, 10, test.history).top_items
    assert top is not None
    assert (top[bought] == late).any()


def test_a_refitted_model_is_judged_in_its_builds_vocabulary_and_by_its_pre_refit_figures(
    late_world: tuple[Path, FeatureBuild], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`journey train` with the refit registers a model of the wider vocabulary; `journey promote` on the
    run's own build takes the run's figures from before the refit (the refitted model has seen the test
    rows), and scoring a build's rows translates its tokens (`predict_features(vocab=...)`)."""
    import mlflow

    from predictor.registry import MODEL_NAME, configure, load_registered
    from training.promote import promote, refitted_run_metrics
    from training.train import train

    _, build = late_world
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure("refit-test")
    config = TrainConfig(
        features=str(build.path),
        model={"d_model": 8, "n_layers": 1},
        fit={"max_epochs": 1, "batch_size": 256},
        baselines={"enabled": False},
        refit={"enabled": True, "epochs": 1},
        n_boot=0,
        journey_map={"enabled": False},
    )
    result = train(config, progress=False, force_register=True)
    assert result.version is not None
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert "refit" in run.data.tags
    pyfunc = load_registered(MODEL_NAME, version=result.version).pyfunc
    assert "LATE-ITEM9" in pyfunc.predictor.vocab.tokens["item_id"]

    test = build.split("test")
    pred = pyfunc.predict_features(test, k=10, vocab=build.vocab)
    assert pred.top_items is not None
    assert pred.top_items.max() < build.vocab.size("item_id")  # in the build's indices
    # The same items as the model's own ranking, by name.
    own = pyfunc.predictor.items
    mine = build.vocab.tokens["item_id"]
    named = [[mine[i - FIRST] for i in row if i >= FIRST] for row in pred.top_items[:5]]
    assert all(len(row) > 0 for row in named)
    assert all(name in set(own) for row in named for name in row)

    metrics = ("stage/macro_f1", "purchase_5d/roc_auc")
    logged = refitted_run_metrics(mlflow.MlflowClient(), result.version, build, test, metrics)
    assert logged == {m: run.data.metrics[f"sequence/{m}"] for m in metrics}
    decision = promote(build.path, result.version, metrics=metrics, force=True)
    assert decision.candidate_metrics == logged
