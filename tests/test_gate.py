"""The promotion gate on its own: floors, the baselines of the same run, heads without labelled rows, the
champion, and its settings (configs/train.yaml, section gate). Fast: dictionaries in, reasons out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.schema import STAGES
from training.registry import (
    DEFAULT_FLOORS,
    GATE_METRICS,
    GateConfig,
    GateDecision,
    check_gate,
    majority_stage_macro_f1,
    parse_floors,
)

GOOD = {
    "stage/macro_f1": 0.52,
    "purchase_7d/roc_auc": 0.80,
    "churn_30d/roc_auc": 0.84,
    "rec/ndcg_at_10": 0.21,
}
BASELINES = {
    "lightgbm_aggregates": {"stage/macro_f1": 0.50, "purchase_7d/roc_auc": 0.79, "churn_30d/roc_auc": 0.841},
    "popularity": {"rec/ndcg_at_10": 0.05},
    "own_history": {"rec/ndcg_at_10": 0.20},
}
# Hindsight stages of a test window: half awareness.
TEST_STAGE = np.repeat(np.arange(len(STAGES)), [50, 10, 10, 10, 10, 10])


def test_a_good_candidate_passes() -> None:
    assert check_gate(GOOD, GATE_METRICS, GateConfig(), baselines=BASELINES, test_stage=TEST_STAGE) == []


def test_a_churn_auc_worse_than_a_coin_is_refused_and_the_head_named() -> None:
    candidate = {**GOOD, "churn_30d/roc_auc": 0.377}
    failures = check_gate(candidate, GATE_METRICS, GateConfig(), test_stage=TEST_STAGE)
    assert len(failures) == 1
    assert failures[0].startswith("churn_30d/roc_auc")
    assert "below the floor 0.55" in failures[0]


def test_worse_than_the_best_baseline_of_the_run_beyond_the_tolerance_is_refused() -> None:
    candidate = {**GOOD, "churn_30d/roc_auc": 0.70, "rec/ndcg_at_10": 0.195}
    failures = check_gate(candidate, GATE_METRICS, GateConfig(), baselines=BASELINES, test_stage=TEST_STAGE)
    # 0.195 is within 0.01 of own_history's 0.20; 0.70 is 0.141 below lightgbm's 0.841.
    assert len(failures) == 1, failures
    assert failures[0].startswith("churn_30d/roc_auc")
    assert "lightgbm_aggregates" in failures[0]
    assert "0.8410" in failures[0]
    lenient = GateConfig(baseline_tolerance=0.2)
    assert check_gate(candidate, GATE_METRICS, lenient, baselines=BASELINES, test_stage=TEST_STAGE) == []
    # The baselines of a run are compared head by head: a baseline without the head does not count.
    assert (
        check_gate(GOOD, ("rec/ndcg_at_10",), GateConfig(), baselines={"lgbm": {"stage/macro_f1": 0.9}}) == []
    )


def test_a_head_without_labelled_rows_is_refused_and_said_so() -> None:
    candidate = {**GOOD, "rec/ndcg_at_10": float("nan")}
    del candidate["purchase_7d/roc_auc"]  # the evaluation leaves out a head it has no labels for
    failures = check_gate(candidate, GATE_METRICS, GateConfig(), baselines=BASELINES, test_stage=TEST_STAGE)
    assert [f.split(":")[0] for f in failures] == ["purchase_7d/roc_auc", "rec/ndcg_at_10"]
    assert all("no labelled rows" in f for f in failures)


def test_the_stage_must_beat_always_predicting_the_majority_stage() -> None:
    majority = majority_stage_macro_f1(TEST_STAGE)
    # Always "awareness" on rows half awareness: F1 2/3 on that class, 0 on the five others.
    assert majority == pytest.approx((2 / 3) / len(STAGES))
    candidate = {**GOOD, "stage/macro_f1": majority}
    failures = check_gate(candidate, GATE_METRICS, GateConfig(), test_stage=TEST_STAGE)
    assert len(failures) == 1
    assert failures[0].startswith("stage/macro_f1")
    assert "majority stage" in failures[0]
    fixed = GateConfig.from_dict({"floors": {"macro_f1": 0.6}})
    assert check_gate(GOOD, GATE_METRICS, fixed)[0].startswith("stage/macro_f1: 0.5200 is below the floor")


def test_the_champion_is_compared_with_its_own_tolerance() -> None:
    champion = {**GOOD, "stage/macro_f1": 0.55}
    failures = check_gate(GOOD, GATE_METRICS, GateConfig(), champion=champion, test_stage=TEST_STAGE)
    assert len(failures) == 1
    assert "champion" in failures[0]
    assert failures[0].startswith("stage/macro_f1")
    lenient = GateConfig(champion_tolerance=0.05)
    assert check_gate(GOOD, GATE_METRICS, lenient, champion=champion, test_stage=TEST_STAGE) == []


def test_every_failure_is_one_line_in_the_summary() -> None:
    candidate = {**GOOD, "churn_30d/roc_auc": 0.377, "rec/ndcg_at_10": float("nan")}
    failures = check_gate(candidate, GATE_METRICS, GateConfig(), baselines=BASELINES, test_stage=TEST_STAGE)
    decision = GateDecision("3", "2", False, False, candidate, {}, failures, baselines=BASELINES)
    text = decision.summary()
    assert "refused" in text
    assert "promoted" not in text
    for f in failures:
        assert f"  - {f}" in text.splitlines()
    already = GateDecision("2", "2", False, False, {}, {}, [], already_champion=True).summary()
    assert "already the champion" in already
    assert "nan" not in already
    assert "promoted" not in already


def test_settings_come_from_the_shipped_config_and_name_bad_values(tmp_path: Path) -> None:
    from training.config import TrainConfig

    shipped = Path(__file__).resolve().parents[1] / "configs" / "train.yaml"
    gate = TrainConfig.load(shipped).gate_config()
    assert gate == GateConfig()
    assert dict(gate.floors) == DEFAULT_FLOORS
    assert gate.floor_of("purchase_30d/roc_auc") == 0.55
    assert GateConfig.from_dict({"floors": {"churn_30d/roc_auc": 0.7}}).floor_of("churn_30d/roc_auc") == 0.7
    override = gate.with_overrides(floors=parse_floors(["roc_auc=0.6"]), baseline_tolerance=0.05)
    assert override.floor_of("churn_30d/roc_auc") == 0.6
    assert override.baseline_tolerance == 0.05
    with pytest.raises(ValueError, match="unknown gate setting"):
        GateConfig.from_dict({"floor": {}})
    with pytest.raises(ValueError, match="majority"):
        GateConfig.from_dict({"floors": {"roc_auc": "majority"}})
    with pytest.raises(ValueError, match="baseline_tolerance"):
        GateConfig.from_dict({"baseline_tolerance": -1})
    with pytest.raises(ValueError, match="metric=value"):
        parse_floors(["roc_auc"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("gate:\n  tolerance: 0.1\n")
    with pytest.raises(ValueError, match="unknown gate setting"):
        TrainConfig.load(bad)
