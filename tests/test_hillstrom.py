"""The Hillstrom next-best-action benchmark: loading and validation, the uplift per e-mail against a hand
computation, the cross-fitted policies on a synthetic test with a planted effect, the report files, and
(marked `data`) the real file in ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from benchmarks import hillstrom_estimates
from benchmarks.hillstrom import main
from benchmarks.hillstrom_data import (
    ARMS,
    CONSTANTS,
    MODEL,
    NO_EMAIL,
    T_LEARNER,
    HillstromDataError,
    arm_rates,
    arm_shares,
    load_hillstrom,
    split_by_row_id,
    uplift_table,
)
from benchmarks.hillstrom_estimates import evaluate_outcome
from benchmarks.hillstrom_learners import NetParams
from benchmarks.hillstrom_policies import choose_threshold, thresholded_policy
from benchmarks.hillstrom_report import MARKER_END, MARKER_START, update_markdown
from features.policy import in_control_group

HISTORY_BINS = (0, 100, 200, 350, 500, 750, 1000, np.inf)
HISTORY_LABELS = (
    "1) $0 - $100",
    "2) $100 - $200",
    "3) $200 - $350",
    "4) $350 - $500",
    "5) $500 - $750",
    "6) $750 - $1,000",
    "7) $1,000 +",
)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def synthetic_frame(n: int = 3_000, seed: int = 0) -> pd.DataFrame:
    """A Hillstrom-shaped randomised test with a planted effect.

    Conversion is 2 % without an e-mail; the Mens e-mail lifts it by 20 points for mens == 1 customers
    only, the Womens e-mail by 20 points for mens == 0 customers only. The best policy sends Mens to
    mens == 1 and Womens to the others, worth about 22 %; either constant policy is worth about 12 %.
    """
    rng = np.random.default_rng(seed)
    mens = rng.integers(0, 2, n)
    womens = np.where(mens == 0, 1, rng.integers(0, 2, n))
    history = np.round(rng.lognormal(5.0, 0.9, n), 2)
    segment = rng.choice(np.array(ARMS), n)
    p = (
        0.02
        + 0.20 * ((segment == "Mens E-Mail") & (mens == 1))
        + 0.20 * ((segment == "Womens E-Mail") & (mens == 0))
    )
    conversion = (rng.uniform(size=n) < p).astype(int)
    visit = np.maximum(conversion, (rng.uniform(size=n) < 0.1).astype(int))
    return pd.DataFrame(
        {
            "recency": rng.integers(1, 13, n),
            "history_segment": pd.cut(history, HISTORY_BINS, labels=HISTORY_LABELS, right=False).astype(str),
            "history": history,
            "mens": mens,
            "womens": womens,
            "zip_code": rng.choice(["Surburban", "Urban", "Rural"], n),
            "newbie": rng.integers(0, 2, n),
            "channel": rng.choice(["Web", "Phone", "Multichannel"], n),
            "segment": segment,
            "visit": visit,
            "conversion": conversion,
            "spend": np.round(conversion * rng.uniform(20, 200, n), 2),
        }
    )


@pytest.fixture
def synthetic_csv(tmp_path: Path) -> Path:
    path = tmp_path / "hillstrom.csv"
    synthetic_frame().to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------------------------
# Loading


def test_load_maps_segments_to_actions(synthetic_csv: Path) -> None:
    frame = load_hillstrom(synthetic_csv)
    assert len(frame) == 3_000
    for a, arm in enumerate(ARMS):
        assert (frame.loc[frame["segment"] == arm, "action"] == a).all()
    shares = arm_shares(frame)
    assert sum(shares.counts.values()) == 3_000
    assert shares.shares["No E-Mail"] == pytest.approx((frame["action"] == NO_EMAIL).mean())
    assert 0 < shares.p_value <= 1


def test_missing_column_is_named(tmp_path: Path, synthetic_csv: Path) -> None:
    path = tmp_path / "broken.csv"
    pd.read_csv(synthetic_csv).drop(columns=["channel", "spend"]).to_csv(path, index=False)
    with pytest.raises(HillstromDataError, match=r"missing column\(s\) 'channel', 'spend'"):
        load_hillstrom(path)


def test_unknown_segment_is_named(tmp_path: Path, synthetic_csv: Path) -> None:
    path = tmp_path / "broken.csv"
    frame = pd.read_csv(synthetic_csv)
    frame.loc[0, "segment"] = "SMS"
    frame.to_csv(path, index=False)
    with pytest.raises(HillstromDataError, match=r"segment.*'SMS'"):
        load_hillstrom(path)


def test_cli_reports_a_bad_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.csv"
    synthetic_frame(50).drop(columns=["visit"]).to_csv(path, index=False)
    assert main(["--data", str(path), "--json", str(tmp_path / "out.json")]) == 2
    assert "'visit'" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "absent.csv"), "--json", str(tmp_path / "out.json")]) == 2


# ------------------------------------------------------------------------------------------------------
# Uplift per e-mail


def test_uplift_matches_hand_computation(synthetic_csv: Path) -> None:
    frame = load_hillstrom(synthetic_csv)
    rows = {(u.arm, u.outcome): u for u in uplift_table(frame, n_boot=200, seed=1)}
    assert len(rows) == 2 * 3
    control = frame[frame["segment"] == "No E-Mail"]
    for arm in ("Mens E-Mail", "Womens E-Mail"):
        treated = frame[frame["segment"] == arm]
        for outcome in ("visit", "conversion", "spend"):
            u = rows[(arm, outcome)]
            a, c = treated[outcome].to_numpy(float), control[outcome].to_numpy(float)
            diff = a.mean() - c.mean()
            se = math.sqrt(a.var(ddof=1) / len(a) + c.var(ddof=1) / len(c))
            assert u.difference.point == pytest.approx(diff, abs=1e-12)
            assert u.normal.lo == pytest.approx(diff - 1.96 * se)
            assert u.normal.hi == pytest.approx(diff + 1.96 * se)
            assert u.difference.lo <= diff <= u.difference.hi
            # The bootstrap and the normal interval agree roughly on this sample size.
            assert u.difference.hi - u.difference.lo == pytest.approx(2 * 1.96 * se, rel=0.3)
    # The planted effect: each e-mail lifts conversion by about 10 points on average.
    assert rows[("Mens E-Mail", "conversion")].difference.lo > 0.05
    rates = {(r.arm, r.outcome): r for r in arm_rates(frame, n_boot=50)}
    assert rates[("No E-Mail", "conversion")].rate.point == pytest.approx(control["conversion"].mean())


# ------------------------------------------------------------------------------------------------------
# Policies


def test_thresholded_policy_and_threshold_choice() -> None:
    pred = np.array([[0.10, 0.12, 0.0], [0.10, 0.30, 0.0], [0.20, 0.10, 0.0]])
    np.testing.assert_array_equal(thresholded_policy(pred, 0, 0.0), [1, 1, 0])
    np.testing.assert_array_equal(thresholded_policy(pred, 0, 0.05), [0, 1, 0])
    np.testing.assert_array_equal(thresholded_policy(pred, 0, np.inf), [0, 0, 0])
    # Logs where action 1 paid off on row 1 only: any threshold that switches row 1 but not row 0 wins,
    # and among equal values the larger (more conservative) threshold.
    action = np.array([1, 1, 0])
    reward = np.array([0.0, 1.0, 1.0])
    threshold, values = choose_threshold(pred, action, np.full(3, 1 / 3), reward, default=0)
    assert 0.02 <= threshold < 0.2
    assert values[str(threshold)] == pytest.approx(2.0)  # (3 * 1 + 3 * 1) / 3


def test_t_learner_finds_the_planted_effect(synthetic_csv: Path) -> None:
    frame = load_hillstrom(synthetic_csv)
    result = evaluate_outcome(
        frame, "conversion", folds=3, inner_folds=0, n_boot=200, seed=0, learners=("t_learner",)
    )
    learned = result.policy(T_LEARNER).values
    for name in CONSTANTS:
        assert learned["ips"].point > result.policy(name).values["ips"].point + 0.03
        assert learned["snips"].point > result.policy(name).values["snips"].point + 0.03
    actions = result.actions[T_LEARNER]
    mens = frame["mens"].to_numpy() == 1
    assert (actions[mens] == 0).mean() > 0.8
    assert (actions[~mens] == 1).mean() > 0.8
    row = next(p for p in result.paired if p.policy == T_LEARNER and p.versus == result.best_constant)
    assert row.verdict == "better"
    assert result.best_policy == T_LEARNER
    # The logging policy's value is the observed mean, equal to IPS of the uniform policy.
    assert result.policy("logging policy (observed)").values["ips"].point == pytest.approx(
        frame["conversion"].mean()
    )


@pytest.mark.slow
def test_cli_writes_json_and_its_markdown_section(
    tmp_path: Path, synthetic_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    out = tmp_path / "hillstrom.json"
    args = ["--data", str(synthetic_csv), "--folds", "3", "--inner-folds", "2", "--n-boot", "100"]
    args += ["--model-seeds", "2", "--refit-seeds", "1"]
    assert main([*args, "--json", str(out), "--markdown", str(md)]) == 0
    text = md.read_text()
    assert "keep me" in text
    assert text.count(MARKER_START) == 1
    assert text.count(MARKER_END) == 1
    assert "| **model (IPS-BCE net)** |" in text
    assert "| model, single network |" in text
    assert "Refits: IPS / SNIPS point difference" in text
    report = json.loads(out.read_text())
    assert report["rows"] == 3_000
    policies = {p["name"]: p for p in report["outcomes"]["conversion"]["policies"]}
    best_constant = max(policies[n]["values"]["ips"]["point"] for n in CONSTANTS)
    # The model finds the planted effect too.
    assert policies[MODEL]["values"]["ips"]["point"] > best_constant + 0.03
    assert policies[MODEL]["fit_seconds"] > 0
    # A second run replaces the section instead of appending another.
    assert main([*args, "--json", str(out), "--markdown", str(md)]) == 0
    assert md.read_text().count(MARKER_START) == 1
    capsys.readouterr()


def test_update_markdown_appends_when_absent(tmp_path: Path) -> None:
    md = tmp_path / "B.md"
    md.write_text("# Benchmarks\n\nother text\n")
    update_markdown(md, f"{MARKER_START}\nnew\n{MARKER_END}")
    update_markdown(md, f"{MARKER_START}\nnewer\n{MARKER_END}")
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nother text\n")
    assert "newer" in text
    assert "\nnew\n" not in text


# ------------------------------------------------------------------------------------------------------
# The real file


@pytest.mark.data
@pytest.mark.slow
def test_real_hillstrom(shared_data: Path) -> None:
    path = shared_data / "hillstrom" / "hillstrom_70pct.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    frame = load_hillstrom(path)
    assert len(frame) == 44_705
    shares = arm_shares(frame)
    assert all(abs(s - 1 / 3) < 0.01 for s in shares.shares.values())
    uplift = {(u.arm, u.outcome): u for u in uplift_table(frame, n_boot=100)}
    mens_visit = uplift[("Mens E-Mail", "visit")].difference
    assert mens_visit.point > 0
    assert mens_visit.lo > 0
    result = evaluate_outcome(
        frame, "conversion", folds=2, inner_folds=0, n_boot=50, seed=0, net=NetParams(n_seeds=1)
    )
    assert {MODEL, T_LEARNER, *CONSTANTS} <= {p.name for p in result.policies}
    assert result.best_constant == "send everyone Mens"
    # Every e-mail beats no e-mail on conversion.
    assert result.policy("no e-mail").values["ips"].point < result.policy(MODEL).values["ips"].point


# ------------------------------------------------------------------------------------------------------
# Fitted on one file, evaluated on another


def test_split_by_row_id_is_a_stable_hash_of_the_row(synthetic_csv: Path) -> None:
    frame = load_hillstrom(synthetic_csv)
    np.testing.assert_array_equal(frame["row_id"], np.arange(len(frame)))
    train, test = split_by_row_id(frame, 0.3, seed=0)
    again_train, again_test = split_by_row_id(frame, 0.3, seed=0)
    pd.testing.assert_frame_equal(test, again_test)
    pd.testing.assert_frame_equal(train, again_train)
    ids_train, ids_test = set(train["row_id"]), set(test["row_id"])
    assert not ids_train & ids_test
    assert ids_train | ids_test == set(range(3_000))
    # A binomial(3000, 0.3) share: 4 standard deviations are 0.034.
    assert abs(len(test) / 3_000 - 0.3) < 0.034
    # The rule of the service's control group, salted with the split seed: each row on its own.
    expected = in_control_group([str(i) for i in range(3_000)], 0.3, "hillstrom-split-0")
    assert ids_test == set(np.flatnonzero(expected))
    # Membership depends on the row alone, not on which other rows are in the file.
    _, test_of_half = split_by_row_id(frame.iloc[::2], 0.3, seed=0)
    assert set(test_of_half["row_id"]) == {i for i in ids_test if i % 2 == 0}
    # Another seed, another split.
    _, other = split_by_row_id(frame, 0.3, seed=1)
    assert set(other["row_id"]) != ids_test
    with pytest.raises(ValueError, match="test share"):
        split_by_row_id(frame, 1.0, seed=0)


def test_cli_checks_the_train_and_test_files(
    tmp_path: Path, synthetic_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = ["--json", str(tmp_path / "out.json")]
    broken = tmp_path / "test_broken.csv"
    synthetic_frame(50).drop(columns=["channel"]).to_csv(broken, index=False)
    assert main(["--train", str(synthetic_csv), "--test", str(broken), *out]) == 2
    err = capsys.readouterr().err.strip()
    assert str(broken) in err
    assert "'channel'" in err
    assert "\n" not in err
    assert main(["--train", str(synthetic_csv), *out]) == 2
    assert "--train and --test" in capsys.readouterr().err
    split = ["--split-test-share", "0.3"]
    assert main(["--train", str(synthetic_csv), "--test", str(synthetic_csv), *split, *out]) == 2
    assert "--split-test-share" in capsys.readouterr().err
    assert main(["--data", str(synthetic_csv), "--split-test-share", "0", *out]) == 2
    assert "--split-test-share" in capsys.readouterr().err


def test_held_out_t_learner_finds_the_planted_effect_on_the_test_rows() -> None:
    train = load_frame(synthetic_frame(3_000, seed=0))
    test = load_frame(synthetic_frame(1_500, seed=1))
    result = evaluate_outcome(
        train, "conversion", inner_folds=0, n_boot=200, seed=0, learners=("t_learner",), test=test
    )
    assert result.details["rows"] == 1_500
    assert result.details["train_rows"] == 3_000
    assert len(result.actions[T_LEARNER]) == 1_500
    learned = result.policy(T_LEARNER).values
    for name in CONSTANTS:
        assert learned["ips"].point > result.policy(name).values["ips"].point + 0.03
    mens = test["mens"].to_numpy() == 1
    assert (result.actions[T_LEARNER][mens] == 0).mean() > 0.8
    assert (result.actions[T_LEARNER][~mens] == 1).mean() > 0.8
    # Every value is estimated on the test rows: the logging policy's is their observed mean.
    assert result.policy("logging policy (observed)").values["ips"].point == pytest.approx(
        test["conversion"].mean()
    )


def load_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame as `load_hillstrom` returns it, without a file."""
    out = frame.copy()
    out["action"] = out["segment"].map({arm: i for i, arm in enumerate(ARMS)}).astype(np.int64)
    out["row_id"] = np.arange(len(out))
    return out


@pytest.mark.slow
def test_two_files_learners_never_see_the_test_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each row's spend is its id (train 1000 + i, test 5000 + i), and both learners record the spend of
    every row they are fitted on: every fit of the run (cross-fitted folds, inner folds of the thresholds,
    the held-out fit, the refits) must see train ids only."""
    seen: list[np.ndarray] = []

    class RecordingT(hillstrom_estimates.TLearner):
        def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> Any:
            seen.append(y.copy())
            return super().fit(x, action, propensity, y)

    class RecordingNet(hillstrom_estimates.NetLearner):
        def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> Any:
            seen.append(y.copy())
            return super().fit(x, action, propensity, y)

    monkeypatch.setattr(hillstrom_estimates, "TLearner", RecordingT)
    monkeypatch.setattr(hillstrom_estimates, "NetLearner", RecordingNet)
    paths = {}
    for name, n, seed, first_id in (("train", 600, 0, 1_000), ("test", 300, 1, 5_000)):
        frame = synthetic_frame(n, seed)
        frame["spend"] = first_id + np.arange(n, dtype=float)
        paths[name] = tmp_path / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    md, out = tmp_path / "BENCHMARKS.md", tmp_path / "hillstrom.json"
    args = ["--train", str(paths["train"]), "--test", str(paths["test"]), "--outcome", "spend"]
    args += ["--folds", "2", "--inner-folds", "2", "--n-boot", "50", "--model-seeds", "1"]
    args += ["--refit-seeds", "1", "--json", str(out), "--markdown", str(md)]
    assert main(args) == 0
    capsys.readouterr()

    # 2 learners x (2 outer folds + 2 x 2 inner folds + 2 refit folds) cross-fitted,
    # and 2 x (1 + 2 inner + 1 refit) held out.
    assert len(seen) == 2 * (2 + 4 + 2) + 2 * (1 + 2 + 1)
    ids = [set((y - 1_000).astype(int).tolist()) for y in seen]
    train_ids = set(range(600))
    assert all(s <= train_ids for s in ids)
    # The held-out fits are fitted on the whole train file.
    assert sum(s == train_ids for s in ids) == 2 * 2

    text = md.read_text()
    assert text.count(MARKER_START) == 1
    assert "### Policy value: spend ($ per customer), cross-fitted within the train population" in text
    held_out = (
        "### Policy value: spend ($ per customer), fitted on the train population, evaluated on the test"
    )
    assert held_out in text
    assert f"train population: `{paths['train']}`, 600 customers" in text
    assert f"test population: `{paths['test']}`, 300 customers" in text
    assert text.count("| **model (IPS-BCE net)** |") == 2
    report = json.loads(out.read_text())
    assert report["rows"] == 600
    assert report["heldout"]["rows"] == 300
    held = report["heldout"]["outcomes"]["spend"]
    observed = next(p for p in held["policies"] if p["name"] == "logging policy (observed)")
    # Values on the test file: its mean spend is 5000 + 299 / 2.
    assert observed["values"]["ips"]["point"] == pytest.approx(5_149.5)


@pytest.mark.slow
def test_cli_split_of_one_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hillstrom.csv"
    synthetic_frame(600).to_csv(path, index=False)
    out, md = tmp_path / "out.json", tmp_path / "BENCHMARKS.md"
    args = ["--data", str(path), "--split-test-share", "0.3", "--split-seed", "2", "--folds", "2"]
    args += ["--inner-folds", "0", "--n-boot", "20", "--model-seeds", "1", "--json", str(out)]
    assert main([*args, "--markdown", str(md)]) == 0
    capsys.readouterr()
    train, test = split_by_row_id(load_hillstrom(path), 0.3, seed=2)
    report = json.loads(out.read_text())
    assert (report["rows"], report["heldout"]["rows"]) == (len(train), len(test))
    text = md.read_text()
    assert "split by a seeded hash of the row id" in text
    assert "test share 0.3, split seed 2" in text
