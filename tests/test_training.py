"""The sequence model and the registry: the loss falls, a logged model comes back identical by alias, the
promotion gate refuses a worse candidate, and a small trained model behaves as a marketer would expect."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from features.build import build_features
from features.encoder import AGGREGATE_NAMES, EncoderConfig, encode
from features.policy import eligibility, greedy_policy
from features.schema import ACTIONS, STAGES
from features.snapshots import BuildConfig
from predictor.pyfunc import INFERENCE_PACKAGES
from predictor.registry import CHALLENGER, CHAMPION, MODEL_NAME, configure, load_registered
from training.data import DEFAULT_TARGETS, FeatureBuild
from training.promote import promote
from training.registry import GATE_METRICS, GateConfig, gate, gate_metrics_for, log_scorer
from training.sequence import FitConfig, SequenceScorer, model_config_for

pytestmark = pytest.mark.slow


# `shop`, `build` and `scorer` (10 epochs) are the small shop's, in tests/worlds.py.


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure("test")
    return tmp_path


def test_loss_falls(scorer: SequenceScorer) -> None:
    losses = [h["train_loss"] for h in scorer.history_]
    assert losses[-1] < losses[0] * 0.8
    valid = [h["valid_loss"] for h in scorer.history_]
    assert min(valid) < valid[0]


def test_propensity_heads_follow_the_builds_label_horizons(shop: Path, tmp_path: Path) -> None:
    config = BuildConfig.from_dict(
        {
            "encoder": {"max_len": 10},
            "labels": {"purchase_horizons": [5], "churn_days": 10, "next_items_days": 10},
            "n_buckets": 1,
            "workers": 1,
        }
    )
    build_features(shop / "events", tmp_path, config, decisions=shop / "decisions.parquet", progress=False)
    other = FeatureBuild.open(tmp_path)
    assert other.targets == ("purchase_5d", "churn_10d", "cart_abandon_24h")
    fit = FitConfig(max_epochs=1, batch_size=256, max_train_rows=2_000, seed=0)
    model = model_config_for(other, d_model=16, n_layers=1)
    scorer = SequenceScorer(model, fit, progress=False).fit(other.split("train"), other.split("valid"))
    pred = scorer.predict(other.split("test"), k=5)
    assert set(pred.propensity) == {"purchase_5d", "churn_10d", "cart_abandon_24h", "unsubscribe"}
    assert gate_metrics_for(other.targets) == (
        "stage/macro_f1", "purchase_5d/roc_auc", "churn_10d/roc_auc", "rec/ndcg_at_10"
    )  # fmt: skip
    assert gate_metrics_for(DEFAULT_TARGETS) == GATE_METRICS
    assert len(scorer.calibration_.propensity) == 4


def test_predictions_are_probabilities(scorer: SequenceScorer, build: FeatureBuild) -> None:
    test = build.split("test")
    pred = scorer.predict(test, k=10)
    assert pred.stage_proba is not None
    np.testing.assert_allclose(pred.stage_proba.sum(axis=1), 1.0, atol=1e-5)
    assert pred.action_outcome is not None
    assert ((pred.action_outcome >= 0) & (pred.action_outcome <= 1)).all()
    assert pred.top_items is not None
    assert pred.top_items.shape == (len(test), 10)
    assert (pred.top_items >= 2).all()


def _events_of(shop: Path, customer: str) -> pd.DataFrame:
    events = pd.read_parquet(shop / "events")
    for col in events.columns:
        if isinstance(events[col].dtype, pd.CategoricalDtype):
            events[col] = events[col].astype(object)
    return events[events["customer_id"] == customer].reset_index(drop=True)


def test_logged_model_loaded_by_alias_gives_the_same_outputs(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    events = _events_of(shop, "C0000007")
    with mlflow.start_run():
        version = log_scorer(scorer, build.vocab, events.head(20))
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    loaded = load_registered(alias=CHAMPION).pyfunc
    test = build.split("test")
    a, b = scorer.predict(test, k=10), loaded.predict_features(test, k=10)
    assert a.stage_proba is not None
    assert b.stage_proba is not None
    np.testing.assert_allclose(a.stage_proba, b.stage_proba, rtol=1e-6)
    np.testing.assert_array_equal(a.top_items, b.top_items)
    # Through the pyfunc interface, on raw events, too.
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
    now = "2026-04-01T00:00:00+00:00"
    raw = events.copy()
    raw["ts"] = raw["ts"].astype(str)
    out = model.predict(raw, params={"now": now, "k": 5})
    assert list(out["customer_id"]) == ["C0000007"]
    assert out["stage"].iloc[0] in STAGES
    assert len(out["top_items"].iloc[0].split()) == 5
    # The registered model carries the inference code only, and requires only what inference imports.
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}"))
    assert sorted(p.name for p in (folder / "code").iterdir()) == ["features", "predictor"]
    required = [line.split("==")[0] for line in (folder / "requirements.txt").read_text().split()]
    assert sorted(required) == sorted(INFERENCE_PACKAGES)


def test_gate_refuses_worse_and_accepts_better() -> None:
    metrics = ("stage/macro_f1", "rec/ndcg_at_10")
    champion = {"stage/macro_f1": 0.6, "rec/ndcg_at_10": 0.3}
    assert gate({"stage/macro_f1": 0.62, "rec/ndcg_at_10": 0.3}, champion, metrics, 0.0) == []
    assert gate({"stage/macro_f1": 0.62, "rec/ndcg_at_10": 0.29}, champion, metrics, 0.0) == [
        "rec/ndcg_at_10"
    ]
    assert gate({"stage/macro_f1": 0.595, "rec/ndcg_at_10": 0.3}, champion, metrics, 0.01) == []
    assert gate(champion, None, metrics, 0.0) == []


def test_promote_moves_the_alias_only_for_a_better_candidate(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    events = _events_of(shop, "C0000007").head(20)
    untrained = SequenceScorer(
        scorer.model_config, FitConfig(max_epochs=1, batch_size=4096, lr=1e-6), progress=False
    )
    untrained.fit(build.split("train").subset(np.arange(64)), build.split("valid"))
    champion_only = GateConfig(compare_baselines=False)  # the baselines have tests of their own below
    with mlflow.start_run():
        good = str(log_scorer(scorer, build.vocab, events))
    first = promote(build.path, good, gate_config=champion_only)
    assert first.promoted, first.summary()
    with mlflow.start_run():
        bad = str(log_scorer(untrained, build.vocab, events))
    refused = promote(build.path, bad, gate_config=champion_only)
    assert not refused.promoted
    assert refused.failures
    assert any("champion" in f for f in refused.failures), refused.failures
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == good
    forced = promote(build.path, bad, force=True, gate_config=champion_only)
    assert forced.promoted
    assert forced.forced
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == bad


def _register_with_run_baselines(
    scorer: SequenceScorer,
    build: FeatureBuild,
    events: pd.DataFrame,
    baselines: dict[str, dict[str, float]],
    digest: str | None = None,
) -> str:
    """Registers the scorer from a run that looks like a training run of `build` with these baselines."""
    test_rows = len(build.split("test"))
    with mlflow.start_run():
        mlflow.set_tags({"features_digest": digest or build.manifest["input"]["digest"],
                         "test_rows": str(test_rows), "baselines": ",".join(baselines)})  # fmt: skip
        mlflow.log_params({"baselines.baselines": "[" + ", ".join(baselines) + "]"})
        for name, values in baselines.items():
            mlflow.log_metrics({f"{name}/{k}": v for k, v in values.items()})
        return str(log_scorer(scorer, build.vocab, events))


def test_promote_refuses_a_candidate_below_the_best_baseline_of_its_own_run(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    events = _events_of(shop, "C0000007").head(20)
    strong = {"lightgbm_aggregates": {"churn_30d/roc_auc": 0.999}, "popularity": {"rec/ndcg_at_10": 0.001}}
    version = _register_with_run_baselines(scorer, build, events, strong)
    refused = promote(build.path, version)
    assert not refused.promoted
    assert len(refused.failures) == 1, refused.failures
    assert refused.failures[0].startswith("churn_30d/roc_auc")
    assert "best baseline lightgbm_aggregates (0.9990)" in refused.failures[0]
    assert "logged by the candidate's training run" in refused.baseline_source
    assert refused.failures[0] in refused.summary()
    client = mlflow.MlflowClient()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    logged = mlflow.search_runs(experiment_names=["journey-promotions"])
    assert list(logged["tags.decision"]) == ["refused"]
    assert "churn_30d/roc_auc" in logged["tags.gate_reasons"].iloc[0]
    # The same model from a run whose baselines it beats is promoted.
    weak = {"lightgbm_aggregates": {"churn_30d/roc_auc": 0.6}, "popularity": {"rec/ndcg_at_10": 0.001}}
    version = _register_with_run_baselines(scorer, build, events, weak)
    accepted = promote(build.path, version)
    assert accepted.promoted, accepted.summary()
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == version


def test_promote_fits_the_baselines_on_another_build_than_the_candidates(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    events = _events_of(shop, "C0000007").head(20)
    logged = {"popularity": {"rec/ndcg_at_10": 0.999}}  # figures of another build: not comparable
    version = _register_with_run_baselines(scorer, build, events, logged, digest="another-build")
    decision = promote(build.path, version)
    assert decision.baseline_source.startswith("fitted on"), decision.baseline_source
    assert set(decision.baselines) == {"popularity"}  # the run's baseline settings
    fitted = decision.baselines["popularity"]["rec/ndcg_at_10"]
    assert 0.0 < fitted < 0.999
    assert decision.promoted == (decision.candidate_metrics["rec/ndcg_at_10"] >= fitted - 0.01)


def test_promoting_the_champion_again_changes_nothing_and_says_so(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    events = _events_of(shop, "C0000007").head(20)
    with mlflow.start_run():
        version = str(log_scorer(scorer, build.vocab, events))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    decision = promote(build.path, version)
    assert decision.already_champion
    assert not decision.promoted
    assert not decision.failures
    text = decision.summary()
    assert "already the champion" in text
    assert "nan" not in text.lower()
    assert "promoted" not in text
    assert (
        mlflow.get_experiment_by_name("journey-promotions") is None
        or mlflow.search_runs(experiment_names=["journey-promotions"]).empty
    )
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version) == version
    from typer.testing import CliRunner

    from journey.cli import app

    cli = CliRunner().invoke(app, ["promote", "--features", str(build.path), "--candidate", CHAMPION])
    assert cli.exit_code == 0, cli.output
    assert "already the champion" in cli.output


def test_train_registers_nothing_when_the_model_fails_the_gate(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path, store: Path
) -> None:
    from typer.testing import CliRunner

    from journey.cli import app

    with mlflow.start_run():
        earlier = str(log_scorer(scorer, build.vocab, _events_of(shop, "C0000007").head(20)))
    args = [
        "train", "--features", str(build.path), "--no-progress",
        "--set", "fit.max_epochs=1", "--set", "fit.max_train_rows=1000", "--set", "model.d_model=16",
        "--set", "model.n_layers=1", "--set", "baselines.enabled=false", "--set", "n_boot=0",
        "--set", "journey_map.enabled=false", "--set", "experiment=gate",
        "--set", "gate.floors={roc_auc: 0.999}",  # no model reaches it
    ]  # fmt: skip
    cli = CliRunner().invoke(app, args)
    assert cli.exit_code == 3, cli.output
    assert "NOT registered" in cli.output
    assert "purchase_7d/roc_auc" in cli.output
    assert "below the floor 0.9990" in cli.output
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == [earlier]  # nothing new registered
    assert str(client.get_model_version_by_alias(MODEL_NAME, CHALLENGER).version) == earlier
    run = mlflow.search_runs(experiment_names=["gate"]).iloc[0]
    assert run["tags.gate"] == "refused"
    assert "churn_30d/roc_auc" in run["tags.gate_reasons"]
    assert "tags.registered_version" not in run or not isinstance(run["tags.registered_version"], str)
    assert np.isfinite(run["metrics.sequence/purchase_7d/roc_auc"])  # the run keeps the model's metrics


def _score(scorer: SequenceScorer, build: FeatureBuild, events: pd.DataFrame, now: str) -> tuple:
    cutoffs = pd.DataFrame({"customer_id": [events["customer_id"].iloc[0]], "cutoff": [pd.Timestamp(now)]})
    batch = encode(events, cutoffs, build.vocab, EncoderConfig(max_len=build.max_len))
    return scorer.to_predictor(build.vocab).score(batch, 10), batch


NOW = "2026-04-20T12:00:00+00:00"


def _active_customers(shop: Path, n: int) -> list[str]:
    """Customers with at least five events in the month before NOW."""
    events = pd.read_parquet(shop / "events", columns=["customer_id", "ts"])
    recent = events[
        (events["ts"] < pd.Timestamp(NOW)) & (events["ts"] > pd.Timestamp(NOW) - pd.Timedelta(days=30))
    ]
    counts = recent["customer_id"].astype(str).value_counts()
    return sorted(counts[counts >= 5].index)[:n]


def _with(events: pd.DataFrame, *rows: tuple[str, str, str | None]) -> pd.DataFrame:
    extra = pd.DataFrame(
        [
            {
                "customer_id": events["customer_id"].iloc[0],
                "ts": pd.Timestamp(ts),
                "event_type": et,
                "channel": "web",
                "item_id": item,
                "category": None,
            }
            for ts, et, item in rows
        ]
    )
    return pd.concat([events, extra], ignore_index=True)


def test_cart_and_checkout_move_the_stage_toward_decision(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path
) -> None:
    decision = STAGES.index("decision")
    item = build.vocab.tokens["item_id"][0]
    moved = []
    for customer in _active_customers(shop, 8):
        events = _events_of(shop, customer)
        now = NOW
        events = events[events["ts"] < pd.Timestamp(now)]
        base, _ = _score(scorer, build, events, now)
        # Purchase intent as the hindsight rule defines it (features/labels.py, decision): at least three
        # carts or checkouts without an order.
        cart = _with(
            events,
            ("2026-04-20T10:00:00+00:00", "product_view", item),
            ("2026-04-20T10:05:00+00:00", "add_to_cart", item),
            ("2026-04-20T10:06:00+00:00", "add_to_cart", item),
            ("2026-04-20T10:08:00+00:00", "checkout_start", None),
        )
        after, _ = _score(scorer, build, cart, now)
        moved.append(after.stage_proba[0, decision] - base.stage_proba[0, decision])
    assert np.mean(moved) > 0.02, moved
    # Under the order-based labels a recent buyer's checkout reads as the next order (post_purchase), so
    # for the recent buyers among the eight the decision share barely moves (measured: 5 of 8 rise, the
    # rest within 0.05); the first-time and lapsed ones move strongly.
    assert sum(m > 0 for m in moved) >= 5, moved
    assert min(moved) > -0.1, moved


def test_an_unrelated_page_view_barely_moves_the_stage(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path
) -> None:
    events = _events_of(shop, _active_customers(shop, 1)[0])
    now = NOW
    events = events[events["ts"] < pd.Timestamp(now)]
    base, _ = _score(scorer, build, events, now)
    after, _ = _score(scorer, build, _with(events, ("2026-04-20T11:00:00+00:00", "page_view", None)), now)
    assert np.abs(after.stage_proba - base.stage_proba).max() < 0.15


def test_an_unsubscribed_customer_is_never_given_an_email(
    scorer: SequenceScorer, build: FeatureBuild, shop: Path
) -> None:
    events = _events_of(shop, _active_customers(shop, 1)[0])
    now = NOW
    events = events[events["ts"] < pd.Timestamp(now)]
    unsubscribed = _with(events, ("2026-04-19T09:00:00+00:00", "email_unsubscribe", None))
    pred, batch = _score(scorer, build, unsubscribed, now)
    allowed = eligibility({k: batch.aggregates[k] for k in AGGREGATE_NAMES}).allowed
    assert pred.action_outcome is not None
    uplift = pred.action_outcome - pred.action_outcome[:, [ACTIONS.index("no_send")]]
    # Even if every e-mail had a huge uplift, the rules win.
    for candidate in (uplift, uplift + 1.0):
        assert ACTIONS[int(greedy_policy(candidate, allowed)[0])] == "no_send"


@pytest.mark.integration
def test_torchrun_two_processes_train_and_register_once(build: FeatureBuild, tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{db}",
        "GLOO_SOCKET_IFNAME": "lo",
        "OMP_NUM_THREADS": "1",
    }
    torchrun = Path(sys.executable).parent / "torchrun"
    journey = Path(sys.executable).parent / "journey"
    cmd = [
        str(torchrun), "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", "29517",
        "--no-python", str(journey), "train", "--features", str(build.path), "--no-progress",
        "--set", "fit.max_epochs=3", "--set", "fit.patience=3", "--set", "model.d_model=32",
        "--set", "model.n_layers=1", "--set", "baselines.enabled=false", "--set", "n_boot=0",
        "--set", "experiment=ddp",
        # A 3-epoch toy model scores below the gate's floors; this test is about DDP registering once.
        "--force-register",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{db}")
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert len(versions) == 1
    runs = mlflow.search_runs(experiment_names=["ddp"])
    assert len(runs) == 1
    history = client.get_metric_history(runs["run_id"].iloc[0], "train_loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) >= 2
    assert losses[-1] < losses[0]


def test_shipped_train_config_loads_and_names_unknown_keys(tmp_path: Path) -> None:
    from training.config import TrainConfig

    shipped = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
    config = TrainConfig.load(shipped, {"fit.max_epochs": 2})
    assert config.fit_config().max_epochs == 2
    assert config.model.encoder == "gru"
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\n")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.load(bad)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"fit.epoch": 3}, "unknown fit setting(s): fit.epoch"),
        ({"model.d_modle": 8}, "unknown model setting(s): model.d_modle"),
        ({"model.max_len": 8}, "unknown model setting(s): model.max_len"),  # the build's, not a setting
        ({"baselines.lightgbm.leaves": 3}, "unknown baselines setting(s): baselines.lightgbm"),
        ({"journey_map.max_customer": 3}, "unknown journey_map setting(s): journey_map.max_customer"),
        ({"fit.loss_weights": [1, 2]}, "fit.loss_weights"),
        ({"baselines.calibration": "sigmoid"}, "baselines.calibration"),
    ],
)
def test_a_typo_in_any_section_is_one_line_naming_the_key(override: dict[str, object], named: str) -> None:
    from training.config import TrainConfig

    shipped = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
    with pytest.raises(ValueError, match=re.escape(named)) as caught:
        TrainConfig.load(shipped, override)
    assert "\n" not in str(caught.value)


def test_the_settings_default_to_what_the_fitting_code_defaults_to() -> None:
    from dataclasses import asdict, fields

    from predictor.model import ModelConfig
    from training.baselines import BaselineConfig
    from training.config import BaselineSettings, FitSettings, GateSettings, ModelSettings, TrainConfig
    from training.registry import GATE_SETTINGS, GateConfig

    assert FitSettings().model_dump() == asdict(FitConfig())
    from_build = {"token_sizes", "n_items", "n_aggregates", "max_len", "targets", "history_items"}
    model = {f.name for f in fields(ModelConfig)} - from_build
    assert ModelSettings().model_dump() == {k: v for k, v in asdict(ModelConfig()).items() if k in model}
    assert BaselineSettings().model_dump(exclude={"enabled"}) == asdict(BaselineConfig())
    assert set(GateSettings.model_fields) == GATE_SETTINGS
    config = TrainConfig()
    assert config.gate_config() == GateConfig()
    assert config.baseline_config() == BaselineConfig()
    # The run logs the sections as given (what `promote` reads back of the baselines), the rest whole.
    given = TrainConfig(fit={"max_epochs": 2}, register=False).logged()
    assert given["fit"] == {"max_epochs": 2}
    assert given["baselines"] == {}
    assert given["register"] is False
    assert given["ks"] == (5, 10, 20, 50)


@pytest.mark.parametrize(("fault", "status"), [(KeyboardInterrupt, "KILLED"), (RuntimeError, "FAILED")])
def test_a_run_that_stops_is_marked_so_never_left_running(
    fault: type[BaseException], status: str, build: FeatureBuild, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.config import TrainConfig
    from training.train import train

    def stopped(self: SequenceScorer, train: object, valid: object) -> SequenceScorer:
        raise fault("stopped while fitting")

    monkeypatch.setattr(SequenceScorer, "fit", stopped)
    config = TrainConfig(features=str(build.path), experiment="stopped", baselines={"enabled": False},
                         n_boot=0, journey_map={"enabled": False})  # fmt: skip
    with pytest.raises(fault):
        train(config, progress=False)
    assert mlflow.active_run() is None
    runs = mlflow.search_runs(experiment_names=["stopped"])
    assert list(runs["status"]) == [status]
