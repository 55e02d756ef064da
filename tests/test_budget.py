"""A training budget that fits the machine: one thread count from the free cores, a time budget, the best
state on disk to resume from, and a schedule that keeps its shape whatever the epoch budget."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.schema import ACTIONS, EVENT_TYPES, STAGES
from features.vocab import FIRST
from predictor.model import DEFAULT_TARGETS, ModelConfig
from training import budget
from training.budget import CHECKPOINT, THREADS_ENV, choose_threads, lr_multiplier, threads, use_threads
from training.data import FeatureBuild, FeatureData
from training.sequence import FitConfig, SequenceScorer

# The model's dropout is on (each epoch draws its own masks); a one-layer GRU warns it has none of its own.
pytestmark = pytest.mark.filterwarnings("ignore:dropout option adds dropout:UserWarning")

# -- threads -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cores", "world", "load", "own", "expected"),
    [
        (16, 1, 0.0, 0.0, 16),  # an idle machine: every core
        (16, 1, 0.3, 0.0, 16),  # a shell's 0.3 rounds to no core
        (16, 1, 4.6, 0.0, 11),  # others keep 4.6 ~ 5 cores busy
        (16, 1, 4.6, 1.0, 12),  # this process is 1.0 of that load: 3.6 ~ 4 cores are the others'
        (16, 2, 4.6, 1.0, 6),  # two ranks, each 1.0 of the load: 2.6 ~ 3 others' cores; 13 // 2
        (16, 4, 0.0, 0.0, 4),  # torchrun, 4 ranks: a quarter each
        (2, 1, 1.2, 0.0, 1),  # the shared 2-core machine with a job on it
        (2, 1, 9.0, 0.0, 1),  # never below one
        (2, 4, 0.0, 0.0, 1),  # more ranks than cores: one each
        (4, 1, 0.0, 2.5, 4),  # own load above the average (a burst): the others put none
    ],
)
def test_threads_are_the_free_cores_shared_among_the_ranks(
    cores: int, world: int, load: float, own: float, expected: int
) -> None:
    assert choose_threads(cores, world, load, own) == expected


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """12 cores in this process's affinity (of more on the machine), load 3.2, this process's share 0.2."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 1.0, 1.0))
    monkeypatch.setattr(budget, "own_load", lambda: 0.2)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return monkeypatch


def test_threads_read_the_affinity_the_load_and_the_world_size(machine: pytest.MonkeyPatch) -> None:
    assert threads() == 9  # 12 cores (not the 64 of cpu_count), others 3.2 - 0.2 = 3
    machine.setenv("WORLD_SIZE", "3")
    assert threads() == 3  # others 3.2 - 3 * 0.2 = 2.6 ~ 3; (12 - 3) // 3


def test_a_thread_setting_or_the_environment_overrides_the_machine(machine: pytest.MonkeyPatch) -> None:
    machine.setenv(THREADS_ENV, "5")
    assert threads() == 5
    assert threads(2) == 2  # the setting before the environment
    machine.setenv(THREADS_ENV, "0")
    assert threads() == 9  # 0: automatic
    machine.setenv(THREADS_ENV, "many")
    with pytest.raises(ValueError, match=THREADS_ENV) as caught:
        threads()
    assert "\n" not in str(caught.value)


def test_own_load_is_a_share_of_the_cores() -> None:
    own = budget.own_load()
    assert 0.0 <= own <= len(os.sched_getaffinity(0)) + 0.5


def test_one_count_sets_torch_and_blas() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    before = torch.get_num_threads()
    with threadpool_limits():  # restores the BLAS limits afterwards
        try:
            assert use_threads(1) == 1
            assert torch.get_num_threads() == 1
            assert all(pool["num_threads"] == 1 for pool in threadpool_info())
        finally:
            torch.set_num_threads(before)


# -- the schedule -------------------------------------------------------------------------------------------


def test_lr_multiplier_by_hand() -> None:
    # warmup 3 steps: 1/4, 2/4, 3/4; then a cosine from 1 at step 3 to 0.1 at step 7; then 0.1
    expected = [0.25, 0.5, 0.75, 1.0, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)), 0.55]
    got = [lr_multiplier(s, warmup_steps=3, decay_steps=7, min_ratio=0.1) for s in range(6)]
    np.testing.assert_allclose(got, expected)
    assert lr_multiplier(7, 3, 7, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(1_000, 3, 7, 0.1) == pytest.approx(0.1)
    assert lr_multiplier(0, 0, 7, 0.1) == pytest.approx(1.0)  # no warmup


# -- fitting on a tiny synthetic build ----------------------------------------------------------------------

N_ITEMS, MAX_LEN = 40, 6


def tiny_data(n: int, seed: int) -> FeatureData:
    """Random but well-formed rows: every token in range, every label present, some logged decisions."""
    rng = np.random.default_rng(seed)
    sizes = token_sizes()
    tokens = {name: rng.integers(FIRST, sizes[name], (n, MAX_LEN)).astype(np.int64) for name in TOKEN_FIELDS}
    logged = rng.random(n) < 0.5
    return FeatureData(
        customer_id=np.array([f"C{seed}_{i}" for i in range(n)], dtype=object),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        tokens=tokens,
        length=np.full(n, MAX_LEN, dtype=np.int64),
        aggregates=rng.exponential(size=(n, len(AGGREGATE_NAMES))).astype(np.float32),
        stage=rng.integers(0, len(STAGES), n).astype(np.int64),
        targets={t: (rng.random(n) < 0.3).astype(np.float32) for t in DEFAULT_TARGETS},
        next_items=[rng.integers(FIRST, N_ITEMS, 3).astype(np.int64) for _ in range(n)],
        logged_action=np.where(logged, rng.integers(0, len(ACTIONS), n), -1).astype(np.int64),
        logged_propensity=np.where(logged, 0.5, np.nan),
        outcome=np.where(logged, rng.random(n) < 0.2, np.nan).astype(np.float32),
        unsubscribed=np.where(logged, 0.0, np.nan).astype(np.float32),
        n_items=N_ITEMS,
    )


def token_sizes() -> dict[str, int]:
    sizes = dict.fromkeys(TOKEN_FIELDS, 12)
    sizes.update(event_type=len(EVENT_TYPES) + FIRST, item_id=N_ITEMS)
    return sizes


MODEL = ModelConfig(token_sizes=token_sizes(), n_items=N_ITEMS, n_aggregates=len(AGGREGATE_NAMES),
                    max_len=MAX_LEN, d_model=8, n_layers=1, dropout=0.1)  # fmt: skip
# 128 rows in batches of 32: 4 steps an epoch; patience never stops these fits.
FIT = FitConfig(max_epochs=3, patience=100, batch_size=32, lr=1e-2, seed=0, device="cpu")


@pytest.fixture(scope="module")
def data() -> tuple[FeatureData, FeatureData]:
    return tiny_data(128, seed=1), tiny_data(64, seed=2)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Same answers every run: the comparisons below are exact on one CPU thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fit(data: tuple[FeatureData, FeatureData], **settings: Any) -> SequenceScorer:
    return SequenceScorer(MODEL, replace(FIT, **settings), progress=False).fit(*data)


def test_the_lr_at_every_step_does_not_depend_on_max_epochs(
    data: tuple[FeatureData, FeatureData], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[float] = []
    step = torch.optim.AdamW.step

    def recording(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording)
    # 4 steps an epoch: warmup 2 steps, the cosine ends at step 8, after 2 epochs.
    schedule = {"lr_warmup_epochs": 0.5, "lr_decay_epochs": 2.0}
    fit(data, max_epochs=3, **schedule)
    short, seen[:] = list(seen), []
    fit(data, max_epochs=10, **schedule)
    assert len(short) == 12
    assert seen[:12] == short  # the first 3 epochs' rates, step by step
    lr = FIT.lr
    np.testing.assert_allclose(short[:3], [lr / 3, 2 * lr / 3, lr])  # warmup, then the peak
    np.testing.assert_allclose(short[8:], [0.1 * lr] * 4)  # the floor after the horizon
    assert len(seen) == 40
    np.testing.assert_allclose(seen[12:], [0.1 * lr] * 28)


def test_a_spent_time_budget_stops_after_one_step_and_the_model_still_scores(
    data: tuple[FeatureData, FeatureData],
) -> None:
    scorer = fit(data, time_budget_s=0.0, max_epochs=5)
    assert scorer.stopped_ == "budget"
    assert [h["steps"] for h in scorer.history_] == [1]
    assert math.isfinite(scorer.history_[0]["valid_loss"])
    pred = scorer.predict(data[1], k=5)
    assert pred.stage_proba is not None
    np.testing.assert_allclose(pred.stage_proba.sum(axis=1), 1.0, atol=1e-5)
    assert pred.top_items is not None
    assert pred.top_items.shape == (64, 5)
    # Without a budget the same fit runs its epochs to the end.
    assert fit(data, max_epochs=2).stopped_ == "max_epochs"


def test_a_fit_resumed_from_its_checkpoint_continues_as_the_uninterrupted_one(
    data: tuple[FeatureData, FeatureData], tmp_path: Path
) -> None:
    whole = fit(data, max_epochs=3)
    first = fit(data, max_epochs=2, checkpoint_dir=str(tmp_path))
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1  # the best (here the last) epoch of the 2-epoch fit
    assert "exp_avg" in str(saved["optimizer"]["state"][0].keys())  # AdamW's moments are kept
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # nothing half-written left beside it
    resumed = fit(data, max_epochs=3, resume_from=str(tmp_path))
    assert len(resumed.history_) == len(whole.history_) == 3
    assert [h["epoch"] for h in resumed.history_] == [0, 1, 2]
    assert resumed.history_[:2] == first.history_
    for key in ("train_loss", "valid_loss", "lr"):
        assert resumed.history_[2][key] == pytest.approx(whole.history_[2][key], rel=1e-6), key
    for name, value in whole.model_.state_dict().items():
        torch.testing.assert_close(resumed.model_.state_dict()[name], value, rtol=1e-5, atol=1e-6)
    # The optimiser's moments matter: the same checkpoint without them does not continue the same.
    saved["optimizer"]["state"] = {}
    torch.save(saved, tmp_path / "no_moments.pt")
    forgetful = fit(data, max_epochs=3, resume_from=str(tmp_path / "no_moments.pt"))
    assert forgetful.history_[2]["train_loss"] != pytest.approx(whole.history_[2]["train_loss"], rel=1e-4)


def test_resuming_refuses_a_missing_checkpoint_or_another_model(
    data: tuple[FeatureData, FeatureData], tmp_path: Path
) -> None:
    with pytest.raises(FileNotFoundError, match=r"fit\.resume_from"):
        fit(data, resume_from=str(tmp_path / "nothing"))
    fit(data, max_epochs=1, checkpoint_dir=str(tmp_path))
    wider = replace(MODEL, d_model=16)
    with pytest.raises(ValueError, match=r"fit.resume_from: .* another model \(d_model differ\)"):
        SequenceScorer(wider, replace(FIT, resume_from=str(tmp_path)), progress=False).fit(*data)


def test_the_default_checkpoint_folder_goes_when_the_fit_ends_and_stays_when_it_is_interrupted(
    data: tuple[FeatureData, FeatureData], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folders: list[Path] = []
    real = budget.Checkpoints.__init__

    def remember(self: budget.Checkpoints, folder: str | Path | None) -> None:
        real(self, folder)
        folders.append(self.folder)

    monkeypatch.setattr(budget.Checkpoints, "__init__", remember)
    fit(data, max_epochs=1)
    assert not folders[-1].exists()

    calls = {"n": 0}
    valid_loss = SequenceScorer._valid_loss

    def interrupt_second_epoch(self: SequenceScorer, *args: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return valid_loss(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(SequenceScorer, "_valid_loss", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit(data, max_epochs=3)
    kept = folders[-1] / CHECKPOINT
    assert kept.is_file()
    assert f"fit.resume_from={kept}" in caplog.text
    assert torch.load(kept, weights_only=True)["epoch"] == 0
    monkeypatch.undo()
    assert len(fit(data, max_epochs=3, resume_from=str(kept)).history_) == 3
    kept.unlink()
    kept.parent.rmdir()


# -- the settings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"fit.threads": -1}, "fit.threads"),
        ({"fit.time_budget_s": -5}, "fit.time_budget_s"),
        ({"fit.lr_decay_epochs": 0}, "fit.lr_decay_epochs"),
        ({"fit.lr_min_ratio": 2}, "fit.lr_min_ratio"),
        ({"fit.resume_from": "/nowhere/best.pt"}, "fit.resume_from: no checkpoint at /nowhere/best.pt"),
    ],
)
def test_bad_budget_settings_are_one_line_naming_the_key(override: dict[str, object], named: str) -> None:
    from training.config import TrainConfig

    with pytest.raises(ValueError, match=named.replace(".", r"\.")) as caught:
        TrainConfig.load(None, override)
    assert "\n" not in str(caught.value)


def test_the_settings_reach_the_fit() -> None:
    from training.config import TrainConfig

    config = TrainConfig.load(None, {"fit.time_budget_s": 600, "fit.threads": 3, "fit.lr_decay_epochs": 4})
    fit_config = config.fit_config()
    assert (fit_config.time_budget_s, fit_config.threads, fit_config.lr_decay_epochs) == (600, 3, 4)
    assert TrainConfig().fit_config() == FitConfig()


@pytest.mark.slow
def test_a_training_run_logs_its_threads_its_seconds_per_epoch_and_why_it_stopped(
    build: FeatureBuild, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow

    from predictor.registry import configure
    from training.config import TrainConfig
    from training.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv(THREADS_ENV, "1")
    configure("budget")
    config = TrainConfig(features=str(build.path), experiment="budget", register=False, n_boot=0,
                         model={"d_model": 8, "n_layers": 1}, baselines={"enabled": False},
                         journey_map={"enabled": False},
                         fit={"max_epochs": 3, "max_train_rows": 1_000, "time_budget_s": 0})  # fmt: skip
    result = train(config, progress=False)
    assert result.stopped == "budget"
    assert result.run_id is not None
    run = mlflow.get_run(result.run_id)
    assert run.data.params["threads"] == "1"
    assert run.data.tags["fit_stopped"] == "budget"
    per_epoch = run.data.metrics["sequence/seconds_per_epoch"]
    assert per_epoch == pytest.approx(result.seconds_per_epoch)
    assert 0 < per_epoch <= result.seconds["sequence"]
    assert math.isfinite(run.data.metrics["sequence/stage/macro_f1"])  # the stopped model was scored
