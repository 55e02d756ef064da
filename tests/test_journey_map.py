"""The journey map: flows, friction, time in stage and touchpoints worked out by hand on four customers;
then end to end on a small simulated shop (a training run logs the map, `journey map` draws it from the
registered model), and the page opened in headless Chromium, where every chart must render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.build import load_rows
from features.schema import STAGES
from journey.cli import app
from predictor.registry import MODEL_NAME
from reports.journey_map import (
    ALL,
    ENTERED,
    LEFT,
    OUTCOMES,
    Events,
    JourneyMap,
    acquisition_channel,
    charts,
    compute_journey_map,
    fetch_journey_map,
    read_segments,
    stage_assignments,
    value_tier,
)
from reports.run import RUN_REPORTERS
from training.config import TrainConfig
from training.data import FeatureBuild, FeatureData
from training.train import train

CUTOFFS = pd.date_range("2026-01-05", periods=5, freq="7D", tz="UTC")
# Four customers at five weekly cutoffs t0..t4 (None: no row, out of the active base).
JOURNEYS = {
    "A": ["awareness", "awareness", "consideration", "decision", "post_purchase"],
    "B": ["consideration", "consideration", "consideration", "at_risk", None],
    "C": [None, "awareness", "consideration", "consideration", "consideration"],
    "D": ["decision", "post_purchase", "loyal", "loyal", "at_risk"],
}


def stage_frame(journeys: dict[str, list[str | None]] = JOURNEYS, cutoffs: pd.DatetimeIndex = CUTOFFS):
    rows = [(c, cutoffs[t], s) for c, seq in journeys.items() for t, s in enumerate(seq) if s]
    return pd.DataFrame(rows, columns=["customer_id", "cutoff", "stage"])


def event_frame() -> pd.DataFrame:
    rows = [
        ("A", "2026-01-11 12:00", "page_view", "web"),  # before t1 (A: awareness)
        ("A", "2026-01-12 00:00", "email_open", "email"),  # at t1 exactly: it belongs to t2 (consideration)
        ("A", "2026-01-04 23:00", "product_view", "app"),  # before t0 (awareness)
        ("B", "2026-02-01 00:00", "purchase", "store"),  # before t4, but B has no row at t4
        ("C", "2025-12-20 00:00", "search", "web"),  # more than a week before t0
        ("D", "2026-01-26 00:00", "page_view", "web"),  # at t3 exactly: the window of t4 (at_risk)
        ("E", "2026-01-11 00:00", "page_view", "web"),  # not on the map
    ]
    frame = pd.DataFrame(rows, columns=["customer_id", "ts", "event_type", "channel"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["value"] = np.where(frame["event_type"] == "purchase", 10.0, np.nan)
    return frame


def by_stage(frame: pd.DataFrame, column: str, segment: str = ALL) -> dict[str, float]:
    rows = frame[frame["segment"] == segment].set_index("stage")[column]
    return {s: float(v) for s, v in rows.items()}


@pytest.fixture(scope="module")
def hand() -> JourneyMap:
    return compute_journey_map(stage_frame(), event_frame(), {"A": "x", "B": "x", "C": "y", "D": "y"}, k=2)


def test_transitions_count_every_move_one_step_apart(hand: JourneyMap) -> None:
    t = hand.transitions[hand.transitions["segment"] == ALL]
    moves = {(a, b): n for a, b, n in zip(t["from_stage"], t["to_stage"], t["customers"], strict=True)}
    assert moves == {
        ("awareness", "awareness"): 1,
        ("awareness", "consideration"): 2,  # A t1->t2, C t1->t2
        ("consideration", "consideration"): 4,  # B twice, C twice
        ("consideration", "decision"): 1,
        ("consideration", "at_risk"): 1,
        ("decision", "post_purchase"): 2,
        ("post_purchase", "loyal"): 1,
        ("loyal", "loyal"): 1,
        ("loyal", "at_risk"): 1,
        ("at_risk", LEFT): 1,  # B has no row at t4
        (ENTERED, "awareness"): 1,  # C has none at t0
    }


def test_friction_shares_one_step_and_within_k(hand: JourneyMap) -> None:
    f = hand.friction
    assert by_stage(f, "customers") == {
        "awareness": 3,
        "consideration": 6,
        "decision": 2,
        "post_purchase": 1,
        "loyal": 2,
        "at_risk": 1,
    }
    consideration = f[(f["segment"] == ALL) & (f["stage"] == "consideration")].iloc[0]
    assert consideration[list(OUTCOMES)].tolist() == pytest.approx([1 / 6, 4 / 6, 0, 1 / 6, 0])
    assert by_stage(f, "advance")["awareness"] == pytest.approx(2 / 3)
    assert by_stage(f, "stall")["awareness"] == pytest.approx(1 / 3)
    assert by_stage(f, "drop")["loyal"] == pytest.approx(0.5)
    assert by_stage(f, "exit")["at_risk"] == 1.0
    assert by_stage(f, "next_1")["consideration"] == pytest.approx(1 / 6)
    # Every stage's one-step outcomes add up to one.
    np.testing.assert_allclose(f[f["customers"] > 0][list(OUTCOMES)].sum(axis=1), 1.0)
    # Within 2 steps, over the cutoffs t0..t2 that have two cutoffs ahead: consideration rows A@t2, B@t0,
    # B@t1, B@t2, C@t2; only A reaches decision.
    assert by_stage(f, "next_k")["consideration"] == pytest.approx(1 / 5)
    assert by_stage(f, "next_k")["awareness"] == 1.0  # A@t0, A@t1, C@t1 all reach consideration
    assert by_stage(f, "advance_k")["decision"] == 1.0
    assert np.isnan(by_stage(f, "next_k")["loyal"])
    assert np.isnan(by_stage(f, "next_1")["at_risk"])
    assert np.isnan(by_stage(f, "advance_k")["at_risk"])  # B@t3 has no two cutoffs ahead
    # Segment x is A and B: consideration A@t2 -> decision, B -> consideration twice, -> at_risk.
    assert by_stage(f, "customers", "x")["consideration"] == 4
    assert by_stage(f, "stall", "x")["consideration"] == 0.5
    assert by_stage(f, "drop", "x")["consideration"] == 0.25


def test_time_in_stage_from_runs_of_consecutive_cutoffs(hand: JourneyMap) -> None:
    t = hand.time_in_stage
    # Runs (days): awareness A 14 (from t0: censored), C 7; consideration A 7, B 21 (censored), C 21
    # (censored); decision A 7, D 7 (censored); post_purchase A 7 (censored), D 7; loyal D 14; at_risk
    # B 7, D 7 (censored).
    assert by_stage(t, "runs") == {
        "awareness": 2,
        "consideration": 3,
        "decision": 2,
        "post_purchase": 2,
        "loyal": 1,
        "at_risk": 2,
    }
    assert by_stage(t, "median_days") == {
        "awareness": 10.5,
        "consideration": 21,
        "decision": 7,
        "post_purchase": 7,
        "loyal": 14,
        "at_risk": 7,
    }
    assert by_stage(t, "p75_days")["awareness"] == pytest.approx(12.25)
    assert by_stage(t, "mean_days")["consideration"] == pytest.approx(49 / 3)
    assert by_stage(t, "censored")["consideration"] == pytest.approx(2 / 3)
    assert by_stage(t, "censored")["loyal"] == 0.0


def test_touchpoints_count_the_window_before_each_cutoff(hand: JourneyMap) -> None:
    tp = hand.touchpoints[(hand.touchpoints["segment"] == ALL) & (hand.touchpoints["kind"] == "channel")]
    counts = {(s, n): e for s, n, e in zip(tp["stage"], tp["name"], tp["events"], strict=True)}
    assert counts == {
        ("awareness", "web"): 1,
        ("awareness", "app"): 1,
        ("consideration", "email"): 1,
        ("at_risk", "web"): 1,
    }
    aware = tp[tp["stage"] == "awareness"].set_index("name")
    assert aware.loc["web", "share"] == 0.5
    assert aware.loc["web", "per_customer"] == pytest.approx(1 / 3)  # three customer-steps in awareness
    kinds = hand.touchpoints[
        (hand.touchpoints["segment"] == ALL) & (hand.touchpoints["kind"] == "event_type")
    ]
    assert set(zip(kinds["stage"], kinds["name"], strict=True)) == {
        ("awareness", "page_view"),
        ("awareness", "product_view"),
        ("consideration", "email_open"),
        ("at_risk", "page_view"),
    }
    # A two-week window counts an event in each window it falls in: A's app view (t0 and t1, both
    # awareness), A's page view (t1 awareness, t2 consideration), A's e-mail open (t2, t3), D's view (t4).
    wide = compute_journey_map(stage_frame(), event_frame(), window_days=14)
    tp = wide.touchpoints[wide.touchpoints["kind"] == "channel"]
    counts = {(s, n): e for s, n, e in zip(tp["stage"], tp["name"], tp["events"], strict=True)}
    assert counts == {
        ("awareness", "app"): 2,
        ("awareness", "web"): 1,
        ("consideration", "web"): 1,
        ("consideration", "email"): 1,
        ("decision", "email"): 1,
        ("at_risk", "web"): 1,
    }


def test_mix_counts_shares_and_mean_probability() -> None:
    frame = stage_frame()
    proba = np.full((len(frame), len(STAGES)), 0.1)
    proba[np.arange(len(frame)), [STAGES.index(s) for s in frame["stage"]]] = 0.5
    for j, s in enumerate(STAGES):
        frame[f"proba_{s}"] = proba[:, j]
    mix = compute_journey_map(frame).mix
    first = mix[mix["cutoff"] == CUTOFFS[0]].set_index("stage")
    assert first["customers"].to_dict() == {
        "awareness": 1,
        "consideration": 1,
        "decision": 1,
        "post_purchase": 0,
        "loyal": 0,
        "at_risk": 0,
    }
    assert first.loc["awareness", "share"] == pytest.approx(1 / 3)
    assert first.loc["awareness", "mean_proba"] == pytest.approx((0.5 + 0.1 + 0.1) / 3)
    assert first.loc["loyal", "mean_proba"] == pytest.approx(0.1)


def test_a_gap_between_cutoffs_is_not_a_step() -> None:
    # Cutoffs t0, t1, then t3: the build's windows leave gaps, and nothing may flow across one.
    cutoffs = pd.DatetimeIndex([CUTOFFS[0], CUTOFFS[1], CUTOFFS[3]])
    journey = compute_journey_map(stage_frame({"A": ["awareness", "awareness", "awareness"]}, cutoffs))
    assert journey.meta["step_days"] == 7
    t = journey.transitions
    assert t[["from_stage", "to_stage", "customers"]].values.tolist() == [["awareness", "awareness", 1]]
    runs = journey.time_in_stage.set_index("stage")
    assert runs.loc["awareness", "runs"] == 2  # t0-t1 (14 days) and t3 (7 days), both cut by an edge
    assert runs.loc["awareness", "censored"] == 1.0


def test_acquisition_channel_is_the_first_own_action() -> None:
    events = pd.DataFrame(
        {
            "customer_id": ["A", "A", "A", "A", "B", "B"],
            "ts": pd.to_datetime(
                ["2026-01-03", "2026-01-01", "2026-01-02", "2026-01-04", "2026-01-01", "2026-01-02"], utc=True
            ),
            "event_type": ["product_view", "signup", "email_sent", "page_view", "signup", "email_sent"],
            "channel": ["app", "web", "email", "social", "web", "email"],
        }
    )
    customers = np.array(["A", "B", "C"], dtype=object)
    # A: the sign-up and the shop's e-mail say nothing of how they came; B has nothing else; C no events.
    assert acquisition_channel(Events.from_frame(events, customers), 3).tolist() == ["app", "web", "unknown"]


def test_value_tier_splits_buyers_in_thirds() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    events = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(6)] + ["C0", "C6"],
            "ts": pd.Timestamp("2026-01-01", tz="UTC"),
            "event_type": ["purchase"] * 7 + ["page_view"],
            "channel": "web",
            "value": [*values, 5.0, np.nan],
        }
    )
    customers = np.array([f"C{i}" for i in range(7)], dtype=object)
    tiers = value_tier(Events.from_frame(events, customers), 7).tolist()
    # Totals 15, 20, 30, 40, 50, 60: thirds at about 26.7 and 43.3.
    assert tiers == [
        "low value",
        "low value",
        "mid value",
        "mid value",
        "high value",
        "high value",
        "no purchase",
    ]


def test_user_segments_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "tiers.csv"
    pd.DataFrame({"customer_id": ["A", "B", "C"], "tier": ["gold", "gold", "silver"]}).to_csv(
        path, index=False
    )
    assert read_segments(path).to_dict() == {"A": "gold", "B": "gold", "C": "silver"}
    journey = compute_journey_map(stage_frame(), segments=path)
    assert journey.segments == [ALL, "gold", "silver", "unknown"]
    assert journey.meta["segmentation"] == "tiers"
    assert any("25%" in note for note in journey.meta["notes"])  # D is in no segment
    with pytest.raises(ValueError, match="acquisition_channel"):
        compute_journey_map(stage_frame(), segments="no_such_segmentation")


def test_bad_stage_frames_are_refused() -> None:
    frame = stage_frame()
    with pytest.raises(ValueError, match="twice"):
        compute_journey_map(pd.concat([frame, frame.head(1)]))
    with pytest.raises(ValueError, match="unknown stage"):
        compute_journey_map(frame.assign(stage="lapsed"))
    with pytest.raises(ValueError, match="k must"):
        compute_journey_map(frame, k=0)


def test_unknown_journey_map_settings_fail_before_training() -> None:
    with pytest.raises(ValueError, match="max_customer"):
        TrainConfig(journey_map={"max_customer": 10})


def test_the_page_and_its_files_without_events(tmp_path: Path) -> None:
    journey = compute_journey_map(stage_frame())
    assert [c.key for c in charts(journey)] == [
        "stage_mix",
        "flows",
        "friction",
        "conversion",
        "time_in_stage",
    ]
    paths = journey.write(tmp_path)
    assert set(paths.pngs) == {"stage_mix", "flows", "friction", "conversion", "time_in_stage"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths.pngs.values())
    assert pd.read_csv(paths.csvs["friction"]).shape == (len(STAGES), 11)
    page = paths.html.read_text()
    assert "touchpoints left out" in page
    assert "Plotly.newPlot" in page


# -- end to end on a small simulated shop ----------------------------------------------------------------
# `map_shop` and `map_build`: the journey-map shop of tests/worlds.py.


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        yield folder


@pytest.fixture(scope="module")
def run_id(map_build: FeatureBuild, store: Path) -> str:
    """One tiny training run: it registers the model as challenger and logs its journey map."""
    config = TrainConfig(
        features=str(map_build.path),
        experiment="journey-map-test",
        model={"d_model": 16, "n_layers": 1, "n_heads": 2},
        fit={"max_epochs": 1, "batch_size": 256, "seed": 0},
        baselines={"enabled": False},
        ks=(5,),
        n_boot=0,
        journey_map={"k": 2},
    )
    # A one-epoch toy model fails the gate; the map is drawn from whatever a model says, so it is
    # registered by force (the test of the gate itself is tests/test_gate.py).
    result = train(config, progress=False, force_register=True, reporters=RUN_REPORTERS)
    assert result.run_id is not None
    assert result.version is not None
    return result.run_id


@pytest.fixture(scope="module")
def map_dir(run_id: str, map_build: FeatureBuild, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`journey map` on the registered challenger."""
    out = tmp_path_factory.mktemp("map")
    result = CliRunner().invoke(
        app,
        ["map", "--features", str(map_build.path), "--model", "challenger", "--out", str(out), "--k", "2"],
    )
    assert result.exit_code == 0, result.output
    assert f"journey map  {out / 'journey_map.html'}" in result.output
    return out


@pytest.mark.integration
def test_training_run_logs_the_journey_map(run_id: str, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    names = {Path(a.path).name for a in client.list_artifacts(run_id, "journey_map")}
    assert {"journey_map.html", "flows.png", "friction.csv", "summary.json"} <= names
    run = client.get_run(run_id)
    assert run.data.tags["journey_map"] == "journey_map/journey_map.html"
    assert run.data.metrics["journey_map/seconds"] > 0
    # What the demo shows: the run's own map, fetched rather than drawn again.
    page = fetch_journey_map(run_id, tmp_path)
    assert page == tmp_path / "journey_map" / "journey_map.html"
    assert "Plotly.newPlot" in page.read_text()


@pytest.mark.integration
def test_journey_map_of_the_registered_model(map_dir: Path, map_build: FeatureBuild, map_shop: Path) -> None:
    summary = json.loads((map_dir / "summary.json").read_text())
    assert summary["charts"] == [
        "stage_mix",
        "flows",
        "touchpoints_channel",
        "touchpoints_event_type",
        "friction",
        "conversion",
        "time_in_stage",
        "segments",
    ]
    assert summary["meta"]["model"].startswith(f"{MODEL_NAME} version 1")
    assert summary["meta"]["events_path"] == str(map_shop / "events")  # the build's input, from its manifest
    assert all((map_dir / f"{key}.png").stat().st_size > 5_000 for key in summary["charts"])
    # Every scored row is on the map, once.
    mix = pd.read_csv(map_dir / "mix.csv")
    rows = sum(map_build.manifest["rows"].values())
    assert mix[mix["segment"] == ALL]["customers"].sum() == rows
    np.testing.assert_allclose(mix[mix["segment"] == ALL].groupby("cutoff")["share"].sum(), 1.0)
    # The segments partition the base.
    by_segment = mix[mix["segment"] != ALL].groupby(["cutoff", "stage"])["customers"].sum()
    np.testing.assert_array_equal(
        by_segment.to_numpy(),
        mix[mix["segment"] == ALL]
        .set_index(["cutoff", "stage"])["customers"]
        .loc[by_segment.index]
        .to_numpy(),
    )
    page = (map_dir / "journey_map.html").read_text()
    # Self-contained: no script or stylesheet comes from the network.
    assert not re.search(r"<(script|link)[^>]+(src|href)=[\"']?https?:", page)
    assert "acquisition_channel" in page


@pytest.mark.integration
def test_stage_assignments_score_whole_customers_of_a_sample(map_build: FeatureBuild) -> None:
    def predict(data: FeatureData) -> np.ndarray:
        # Stage from the sequence length: a deterministic stand-in for a model.
        proba = np.zeros((len(data), len(STAGES)))
        proba[np.arange(len(data)), data.length % len(STAGES)] = 1.0
        return proba

    frame = stage_assignments(predict, map_build, max_customers=40, seed=1, chunk_rows=100)
    assert frame["customer_id"].nunique() == 40
    rows = load_rows(map_build.path, None, columns=["customer_id", "cutoff", "seq_len"]).to_pandas()
    mine = rows[rows["customer_id"].isin(set(frame["customer_id"]))]
    assert len(frame) == len(mine)  # every cutoff of each sampled customer
    expected = np.asarray(STAGES)[mine["seq_len"].to_numpy() % len(STAGES)]
    assert frame["stage"].tolist() == expected.tolist()
    assert frame.equals(stage_assignments(predict, map_build, max_customers=40, seed=1))


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("headless Chromium not found: .ci/run installs it (apt-get install chromium)")


def test_a_missing_chromium_fails_and_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs it"):
        _chromium()


def _open(page: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        *flags,
        page,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


@pytest.mark.integration
def test_every_chart_renders_in_headless_chromium(map_dir: Path, tmp_path: Path) -> None:
    keys = json.loads((map_dir / "summary.json").read_text())["charts"]
    url = (map_dir / "journey_map.html").as_uri()
    dom = _open(url, tmp_path, "--dump-dom").stdout
    sections = {part.split('"', 1)[0]: part for part in dom.split('data-chart="')[1:]}
    assert list(sections) == keys
    marks = {
        "stage_mix": "js-fill",
        "flows": 'class="sankey-node"',
        "touchpoints_channel": 'class="hm"',
        "touchpoints_event_type": 'class="hm"',
        "friction": 'class="point"',
        "conversion": 'class="point"',
        "time_in_stage": 'class="point"',
        "segments": 'class="hm"',
    }
    for key, section in sections.items():
        assert 'class="main-svg"' in section, f"{key} drew no plot"
        assert marks[key] in section, f"{key} drew no {marks[key]}"
    # One Sankey node per stage with flows on each side (of the whole base, the segment shown).
    flows = pd.read_csv(map_dir / "transitions.csv").query("segment == @ALL")
    nodes = flows["from_stage"].nunique() + flows["to_stage"].nunique()
    assert sections["flows"].count('class="sankey-node"') == nodes

    # A link can open the page on one segment: its table rows show, the whole base's hide.
    segments = json.loads((map_dir / "summary.json").read_text())["segments"]
    dom = _open(f"{url}#segment={segments[1]}", tmp_path, "--dump-dom").stdout
    assert f'<tr data-segment="{segments[1]}">' in dom
    assert f'<tr data-segment="{ALL}" hidden' in dom
    assert 'class="sankey-node"' in dom.split('data-chart="flows"')[1]

    shot = tmp_path / "page.png"
    _open(url, tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2400, 1200)
    assert pixels.std() > 0.05  # not a blank page
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1])[::97], axis=0)) > 50  # charts, not just text


def test_events_are_read_from_parquet_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    frame = event_frame()
    frame["ts"] = frame["ts"].astype("datetime64[ns, UTC]")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    customers = np.array(["A", "B", "C", "D"], dtype=object)
    read = Events.read(path, customers, batch_rows=2)
    direct = Events.from_frame(event_frame(), customers)
    assert len(read) == 6  # E is not on the map
    np.testing.assert_array_equal(read.ts_ms, direct.ts_ms)
    np.testing.assert_array_equal(read.channel, direct.channel)
