"""Who is evaluated: valid and test rows for every customer with history, segments, and the population line.

A hand-made shop of four customers whose rows and segments are worked out by hand from the dates below
(cutoffs every Monday from 2026-03-02; the plan is asserted first so that a change of the plan reads as
such, not as a change of the population):

* A, active: an event every 4 days from 2026-01-05 to 2026-08-31;
* L, lapsed: events 2026-01-06 .. 2026-02-20, then one purchase on 2026-08-05 (after the last test cutoff:
  a lapsed customer who comes back, the one win-back exists for);
* N2, new in training: two events 2026-03-20 and 03-21, nothing after;
* N, new in test: first event 2026-07-10, then 07-12 and 07-22.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.build import build_features, format_manifest, load_rows
from features.snapshots import SEGMENTS, SPLITS, BuildConfig
from tests.factories import events, write_events
from training.data import FeatureBuild, FeatureData
from training.evaluate import evaluate
from training.interface import Predictions
from training.results import is_valid_metric_name, markdown_table, population_line, results_table

TRAIN = ["03-02", "03-09", "03-16", "03-23", "03-30", "04-06", "04-13", "04-20", "04-27", "05-04", "05-11",
         "05-18", "05-25", "06-01"]  # fmt: skip
VALID = ["06-08", "06-15"]
TEST = ["07-20", "07-27"]


def shop_events() -> pd.DataFrame:
    rows: list[tuple] = []
    for i, day in enumerate(pd.date_range("2026-01-05 10:00", "2026-08-31 10:00", freq="4D")):
        rows.append(("A", day, "purchase", "I1", 10) if i % 5 == 0 else ("A", day, "page_view"))
    for day in pd.date_range("2026-01-06 09:00", "2026-02-20 09:00", freq="5D"):
        rows.append(("L", day, "product_view", "I2"))
    rows += [("L", "2026-02-20 12:00", "purchase", "I2", 20), ("L", "2026-08-05 12:00", "purchase", "I2", 20)]
    rows += [("N2", "2026-03-20 10:00", "page_view"), ("N2", "2026-03-21 10:00", "product_view", "I1")]
    rows += [("N", "2026-07-10 10:00", "page_view"), ("N", "2026-07-12 10:00", "product_view", "I1"),
             ("N", "2026-07-22 10:00", "purchase", "I1", 10)]  # fmt: skip
    return events(*rows)


def segments_by(out: Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """(customer, split) -> [(cutoff MM-DD, segment), ...] in cutoff order."""
    frame = load_rows(out, columns=["customer_id", "cutoff", "split", "segment"]).to_pandas()
    found: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for r in frame.itertuples():
        found.setdefault((r.customer_id, r.split), []).append((r.cutoff.strftime("%m-%d"), r.segment))
    return found


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_events(shop_events(), tmp_path_factory.mktemp("shop") / "events.parquet")


@pytest.fixture(scope="module")
def built(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    build_features(shop, out, BuildConfig(first_cutoff="2026-03-02", workers=1, n_buckets=2), progress=False)
    return out


def test_the_plan_is_the_one_worked_out_by_hand(built: Path) -> None:
    manifest = FeatureBuild.open(built).manifest
    assert manifest["cutoffs"] == {
        s: [f"2026-{d}" for d in days] for s, days in zip(SPLITS, (TRAIN, VALID, TEST), strict=True)
    }


def test_train_rows_only_for_active_customers_valid_and_test_for_everyone(built: Path) -> None:
    found = segments_by(built)
    active, lapsed = "active", "lapsed"
    # A: active at every cutoff (first event 56 days before the first cutoff: not new).
    for split, days in zip(SPLITS, (TRAIN, VALID, TEST), strict=True):
        assert found[("A", split)] == [(d, active) for d in days]
    # L: last event before the test 2026-02-20 12:00, so active at cutoffs up to 04-20 (60 days), then no
    # training row; lapsed at every validation and test cutoff.
    assert found[("L", "train")] == [(d, active) for d in TRAIN[:8]]
    assert found[("L", "valid")] == [(d, lapsed) for d in VALID]
    assert found[("L", "test")] == [(d, lapsed) for d in TEST]
    # N2: no row before its first event; new for 28 days (03-23 .. 04-13, first event 03-20 10:00), active
    # until 60 days after its last event (05-18), then no training row; lapsed in validation and test.
    assert found[("N2", "train")] == [(d, "new") for d in TRAIN[3:7]] + [(d, active) for d in TRAIN[7:12]]
    assert found[("N2", "valid")] == [(d, lapsed) for d in VALID]
    assert found[("N2", "test")] == [(d, lapsed) for d in TEST]
    # N: no history before the validation cutoffs (no row there); new at both test cutoffs.
    assert ("N", "train") not in found
    assert ("N", "valid") not in found
    assert found[("N", "test")] == [(d, "new") for d in TEST]


def test_the_manifest_counts_rows_per_segment_and_says_so(built: Path) -> None:
    manifest = FeatureBuild.open(built).manifest
    assert manifest["segments"]["test"] == {"active": 1 * 2, "lapsed": 2 * 2, "new": 1 * 2}
    assert manifest["segments"]["valid"] == {"active": 2, "lapsed": 4, "new": 0}
    assert manifest["segments"]["train"] == {"active": 14 + 8 + 5, "lapsed": 0, "new": 4}
    for split in SPLITS:
        assert sum(manifest["segments"][split].values()) == manifest["rows"][split]
    from features.build import Manifest

    text = format_manifest(Manifest(manifest))
    assert "test active 2, lapsed 4, new 2" in text


def test_the_old_population_is_one_setting_away(shop: Path, tmp_path: Path) -> None:
    config = BuildConfig(first_cutoff="2026-03-02", workers=1, n_buckets=1, active_only_splits=SPLITS)
    build_features(shop, tmp_path / "old", config, progress=False)
    found = segments_by(tmp_path / "old")
    # The activity filter on every split: lapsed customers have no validation or test rows.
    assert {k for k in found if k[1] != "train"} == {("A", "valid"), ("A", "test"), ("N", "test")}
    assert found[("N", "test")] == [(d, "new") for d in TEST]


def test_population_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="active_only_splits"):
        BuildConfig(active_only_splits=("train", "tset"))
    with pytest.raises(ValueError, match="new_within_days"):
        BuildConfig(new_within_days=-1)
    assert BuildConfig.from_dict({"active_only_splits": ["train", "valid"]}).active_only_splits == (
        "train",
        "valid",
    )


# ------------------------------------------------------------------------------------------ evaluation


def test_evaluation_reports_every_segment_and_the_population_line(built: Path) -> None:
    test = FeatureBuild.open(built).split("test")
    assert test.segment is not None
    assert list(test.segment) == ["active", "active", "lapsed", "lapsed", "new", "new", "lapsed", "lapsed"]
    # Sorted by customer (A, L, N, N2). A buys every 20 days (07-24, 08-13), L comes back on 08-05, N buys
    # on 07-22 only, N2 never again.
    assert list(test.targets["purchase_30d"]) == [1, 1, 1, 1, 1, 0, 0, 0]
    p = np.linspace(0.1, 0.8, len(test))
    result = evaluate(Predictions(propensity={"purchase_30d": p}), test, catalogue_size=3, n_boot=0)
    m = result.metrics
    counts = {s: m[f"segment/{s}/n_rows"] for s in SEGMENTS}
    assert counts == {"active": 2, "lapsed": 4, "new": 2}
    assert sum(counts.values()) == len(test) == result.info["n_rows"]
    assert m["segment/lapsed/purchase_30d/n_rows"] == 4
    assert all(is_valid_metric_name(k) for k in m)
    expected = (
        "Population: test window, 2 cutoffs, 8 customer-cutoffs with history before the cutoff "
        "(active 2, lapsed 4, new 2)"
    )
    assert population_line([result]) == expected
    assert expected in markdown_table(results_table([result]))
    assert expected in markdown_table(results_table([result], ["purchase_30d/roc_auc"]))


def hand_data(segment: list[str] | None) -> FeatureData:
    """Four rows at two cutoffs with purchase_7d labels 0, 1, 1, 0; nothing else."""
    n = 4
    return FeatureData(
        customer_id=np.array(["a", "b", "c", "d"], dtype=object),
        cutoff_ms=np.array([0, 0, 7, 7]) * 86_400_000,
        tokens={},
        length=np.ones(n, dtype=np.int64),
        aggregates=np.zeros((n, 0), dtype=np.float32),
        stage=np.zeros(n, dtype=np.int64),
        targets={"purchase_7d": np.array([0, 1, 1, 0], dtype=np.float32)},
        next_items=[np.array([], dtype=np.int64)] * n,
        logged_action=np.full(n, -1),
        logged_propensity=np.full(n, np.nan),
        outcome=np.full(n, np.nan, dtype=np.float32),
        unsubscribed=np.full(n, np.nan, dtype=np.float32),
        n_items=2,
        segment=None if segment is None else np.array(segment, dtype=object),
        split="valid",
        population=None if segment is None else "with history before the cutoff",
    )


def test_segment_metrics_by_hand_and_the_gate_metric_stays_on_all_rows() -> None:
    data = hand_data(["active", "lapsed", "new", "lapsed"])
    pred = Predictions(propensity={"purchase_7d": np.array([0.1, 0.4, 0.35, 0.8])})
    m = evaluate(pred, data, catalogue_size=2, n_boot=20).metrics
    # All rows: positives 0.4, 0.35 against negatives 0.1, 0.8: 2 of 4 pairs ordered right -> 0.5.
    assert m["purchase_7d/roc_auc"] == pytest.approx(0.5)
    # Lapsed rows 1 and 3: the positive (0.4) scores below the negative (0.8) -> 0.
    assert m["segment/lapsed/purchase_7d/roc_auc"] == pytest.approx(0.0)
    assert m["segment/lapsed/purchase_7d/base_rate"] == pytest.approx(0.5)
    assert m["segment/new/purchase_7d/base_rate"] == 1.0  # row 2
    assert np.isnan(m["segment/active/purchase_7d/roc_auc"])  # one class: undefined, not 0.5
    assert "segment/lapsed/purchase_7d/roc_auc_lo" in m
    line = population_line([evaluate(pred, data, catalogue_size=2, n_boot=0)])
    assert line == (
        "Population: valid window, 2 cutoffs, 4 customer-cutoffs with history before the cutoff "
        "(active 1, lapsed 2, new 1)"
    )


def test_without_segments_only_the_rows_are_counted() -> None:
    """Data without a segment column (a build from before segments, or hand-made): no segment metrics."""
    data = hand_data(None)
    pred = Predictions(propensity={"purchase_7d": np.array([0.1, 0.4, 0.35, 0.8])})
    result = evaluate(pred, data, catalogue_size=2, n_boot=0)
    assert not any(k.startswith("segment/") for k in result.metrics)
    assert population_line([result]) == "Population: valid window, 2 cutoffs, 4 customer-cutoffs"


def test_messages_the_shop_sent_are_not_the_customers_activity(tmp_path: Path) -> None:
    """M last acted on 2026-02-20 and has been e-mailed every week since: lapsed, not active, at the
    validation and test cutoffs, and without training rows once 60 days have passed (from 04-27 on)."""
    anchor = [r for r in shop_events().itertuples(index=False) if r.customer_id == "A"]
    rows: list[tuple] = [("M", "2026-02-20 12:00", "purchase", "I2", 20)]
    rows += [("M", day, "email_sent", None, None, "newsletter")
             for day in pd.date_range("2026-02-23 08:00", "2026-08-31 08:00", freq="7D")]  # fmt: skip
    frame = pd.concat([pd.DataFrame(anchor), events(*rows)], ignore_index=True)
    shop = write_events(frame, tmp_path / "events.parquet")
    out = tmp_path / "features"
    build_features(shop, out, BuildConfig(first_cutoff="2026-03-02", workers=1, n_buckets=1), progress=False)
    found = segments_by(out)
    assert found[("M", "valid")] == [("06-08", "lapsed"), ("06-15", "lapsed")]
    assert found[("M", "test")] == [("07-20", "lapsed"), ("07-27", "lapsed")]
    # Active in training while the purchase is within 60 days: cutoffs up to 04-20 (59 days after it).
    assert [c for c, _ in found[("M", "train")]] == TRAIN[: TRAIN.index("04-20") + 1]
