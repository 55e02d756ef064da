"""The Hillstrom next-best-action benchmark: loading and validation, the uplift per e-mail against a hand
computation, the cross-fitted policies on a synthetic test with a planted effect, the report files, and
(marked `data`) the real file in ../shared/data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

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
    uplift_table,
)
from benchmarks.hillstrom_estimates import evaluate_outcome
from benchmarks.hillstrom_learners import NetParams
from benchmarks.hillstrom_policies import choose_threshold, thresholded_policy
from benchmarks.hillstrom_report import MARKER_END, MARKER_START, update_markdown

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
