"""The feature job: hindsight labels, time splits, vocabularies, buckets, manifest, and the Spark engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.build import build_features, load_rows, padded_tokens
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS, EncoderConfig, encode, prepare
from features.labels import LabelConfig, hindsight_labels
from features.snapshots import BuildConfig, plan_splits
from features.vocab import FIRST, OOV, Vocabulary
from tests.factories import events, random_events, write_events

T = pd.Timestamp("2026-03-02", tz="UTC")


def label(ev: pd.DataFrame, customer: str = "a", decisions: pd.DataFrame | None = None) -> dict:
    vocab = Vocabulary.fit({"item_id": pd.Series({"I1": 2, "I2": 1, "I3": 1})})
    rows = pd.DataFrame({"customer_id": [customer], "cutoff": [T]})
    out = hindsight_labels(prepare(ev, vocab), rows, LabelConfig(), decisions)
    return {k: v.to_pylist()[0] for k, v in out.items()}


def test_stage_rules_by_hand() -> None:
    # One case per stage; tests/test_labels.py has the rules' edge cases and the check against the truth.
    buy_in_three_days = events(("a", "2026-02-01", "page_view"), ("a", "2026-03-04", "purchase", "I1", 10))
    assert label(buy_in_three_days)["stage"] == "decision"

    bought_last_week = events(("a", "2026-02-25", "purchase", "I1", 10), ("a", "2026-03-20", "page_view"))
    assert label(bought_last_week)["stage"] == "post_purchase"

    lapsing_buyer = events(("a", "2026-01-10", "purchase", "I1", 10), ("a", "2026-02-20", "page_view"))
    assert label(lapsing_buyer)["stage"] == "at_risk"
    assert label(lapsing_buyer)["churn_30d"] is True

    repeat_buyer = events(
        ("a", "2026-01-10", "purchase", "I1", 10), ("a", "2026-01-20", "purchase", "I2", 10),
        ("a", "2026-02-25", "page_view"), ("a", "2026-03-04", "page_view"), ("a", "2026-03-06", "page_view"),
    )  # fmt: skip
    assert label(repeat_buyer)["stage"] == "loyal"

    browsing = events(
        ("a", "2025-11-01", "signup"), ("a", "2026-02-25", "product_view", "I1"),
        ("a", "2026-02-26", "search"), ("a", "2026-03-03", "page_view"), ("a", "2026-03-05", "page_view"),
    )  # fmt: skip
    assert label(browsing)["stage"] == "consideration"

    newcomer = events(("a", "2026-02-25", "signup"), ("a", "2026-03-20", "page_view"))
    got = label(newcomer)
    assert got["stage"] == "awareness"
    assert got["churn_30d"] is False


def test_purchase_and_next_item_labels() -> None:
    ev = events(
        ("a", "2026-02-01", "purchase", "I3", 5),  # before the cutoff: not a label
        ("a", "2026-03-02", "purchase", "I2", 10),  # at the cutoff: the first thing after it
        ("a", "2026-03-04", "purchase", "I1", 10),
        ("a", "2026-03-10", "purchase", "I2", 10),  # repeat: listed once
        ("a", "2026-03-20", "purchase", "I9", 10),  # unknown to the vocabulary -> OOV
        ("a", "2026-04-05", "purchase", "I3", 10),  # beyond 30 days
    )
    got = label(ev)
    assert got["purchase_7d"] is True
    assert got["purchase_30d"] is True
    i1, i2 = FIRST, FIRST + 1
    assert got["next_items"] == [i2, i1, OOV]


def test_logged_decision_and_its_outcome() -> None:
    ev = events(
        ("a", "2026-02-01", "add_to_cart", "I1"),
        ("a", "2026-03-02 09:00", "email_sent", None, None, "cart_abandonment"),
        ("a", "2026-03-05", "purchase", "I1", 42.5),
        ("a", "2026-03-12", "purchase", "I1", 10),  # outside the 7-day outcome window
    )
    decisions = pd.DataFrame(
        {
            "decision_id": ["d1", "d0"],
            "customer_id": ["a", "a"],
            "ts": [pd.Timestamp("2026-03-02 09:00", tz="UTC"), pd.Timestamp("2026-02-23 09:00", tz="UTC")],
            "action": ["cart_abandonment", "no_send"],
            "propensity": [0.1, 0.5],
        }
    )
    got = label(ev, decisions=decisions)
    assert got["decision_id"] == "d1"
    assert got["logged_action"] == "cart_abandonment"
    assert got["logged_propensity"] == pytest.approx(0.1)
    assert got["outcome_purchase"] is True
    assert got["outcome_revenue"] == pytest.approx(42.5)
    assert got["outcome_unsubscribe"] is False

    none_logged = label(ev, decisions=decisions.iloc[1:])
    assert none_logged["decision_id"] is None
    assert none_logged["outcome_purchase"] is None


def test_unknown_action_in_decision_log_is_named() -> None:
    decisions = pd.DataFrame(
        {"decision_id": ["d"], "customer_id": ["a"], "ts": [T], "action": ["spam_blast"], "propensity": [1.0]}
    )
    with pytest.raises(ValueError, match="spam_blast"):
        label(events(("a", "2026-02-01", "page_view")), decisions=decisions)


def test_split_plan_is_by_time_and_test_labels_do_not_overlap() -> None:
    plan = plan_splits(
        pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-06-30 12:00", tz="UTC"), BuildConfig()
    )
    train, valid, test = plan.cutoffs["train"], plan.cutoffs["valid"], plan.cutoffs["test"]
    assert max(train) < min(valid) < min(test)
    horizon = pd.Timedelta(days=LabelConfig().horizon_days)
    assert max(valid) + horizon <= min(test)
    assert max(test) + horizon <= pd.Timestamp("2026-07-01", tz="UTC")
    assert len(test) == 2
    assert len(valid) == 2


def test_too_short_history_says_why() -> None:
    with pytest.raises(ValueError, match="no cutoff fits"):
        plan_splits(pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-20", tz="UTC"), BuildConfig())


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ev = random_events(n_customers=300, n_events=30_000, seed=7, days=180)
    # An item that only appears after the training window must be out of vocabulary.
    late = events(
        ("C1", "2026-06-20", "product_view", "LATE1"), ("C1", "2026-06-21", "product_view", "LATE1")
    )
    return write_events(
        pd.concat([ev, late], ignore_index=True), tmp_path_factory.mktemp("shop") / "events.parquet"
    )


@pytest.fixture(scope="module")
def built(shop: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("features")
    build_features(shop, out, BuildConfig(n_buckets=3, workers=1), progress=False)
    return out


def test_build_writes_rows_vocab_and_manifest(shop: Path, built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    rows = load_rows(built)
    assert manifest["input"]["n_events"] == 30_002
    assert sum(manifest["rows"].values()) == rows.num_rows > 0
    for split in ("train", "valid", "test"):
        part = load_rows(built, split)
        assert part.num_rows == manifest["rows"][split]
        assert {c.date().isoformat() for c in part.column("cutoff").to_pandas()} <= set(
            manifest["cutoffs"][split]
        )
    vocab = Vocabulary.load(built / "vocab.json")
    assert "LATE1" not in vocab.tokens["item_id"]
    assert manifest["vocab_sizes"]["item_id"] == vocab.size("item_id")
    assert len(manifest["input"]["digest"]) == 64
    # One row per customer and cutoff, never twice.
    frame = rows.select(["customer_id", "cutoff"]).to_pandas()
    assert not frame.duplicated().any()
    seq = padded_tokens(rows, "event_type", BuildConfig().encoder.max_len)
    assert seq.shape == (rows.num_rows, BuildConfig().encoder.max_len)
    np.testing.assert_array_equal((seq > 0).sum(axis=1), rows.column("seq_len").to_numpy())


def test_rows_do_not_depend_on_buckets_or_workers(shop: Path, built: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    build_features(shop, other, BuildConfig(n_buckets=5, workers=2), progress=False)
    assert_same_rows(load_rows(built), load_rows(other))


def test_bad_config_key_is_named() -> None:
    with pytest.raises(ValueError, match="max_lenn"):
        BuildConfig.from_dict({"encoder": {"max_lenn": 3}})
    assert BuildConfig.from_yaml(None, {"encoder.max_len": 7}).encoder.max_len == 7


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"customer_id": ["a"], "event_type": ["page_view"]}), bad)
    with pytest.raises(ValueError, match="ts"):
        build_features(bad, tmp_path / "out", progress=False)


def assert_same_rows(a: pa.Table, b: pa.Table) -> None:
    assert a.num_rows == b.num_rows
    assert a.column_names == b.column_names
    left, right = a.to_pandas(), b.to_pandas()
    for col in left.columns:
        x, y = left[col], right[col]
        if x.dtype == object and len(x) and isinstance(x.iloc[0], np.ndarray):
            assert all(np.array_equal(p, q) for p, q in zip(x, y, strict=True)), col
        else:
            pd.testing.assert_series_equal(x, y, check_dtype=False, check_names=False, obj=col)


@pytest.mark.integration
@pytest.mark.slow
def test_spark_engine_writes_the_same_rows_as_pandas(shop: Path, built: Path, tmp_path: Path) -> None:
    decisions = tmp_path / "decisions.parquet"
    pq.write_table(
        pa.table(
            {
                "decision_id": ["d1", "d2"],
                "customer_id": ["C1", "C2"],
                "ts": pa.array(
                    [pd.Timestamp("2026-03-02 09:00", tz="UTC")] * 2, pa.timestamp("us", tz="UTC")
                ),
                "action": ["cross_sell", "no_send"],
                "propensity": [0.2, 0.5],
            }
        ),
        decisions,
    )
    config = BuildConfig(n_buckets=3, workers=1, first_cutoff="2026-01-26")
    build_features(shop, tmp_path / "pandas", config, decisions=decisions, progress=False)
    build_features(shop, tmp_path / "spark", config, decisions=decisions, engine="spark", progress=False)
    pandas_rows, spark_rows = load_rows(tmp_path / "pandas"), load_rows(tmp_path / "spark")
    assert pandas_rows.column("logged_action").null_count < pandas_rows.num_rows
    assert_same_rows(pandas_rows, spark_rows)


def test_stored_rows_equal_what_the_online_encoder_gives(shop: Path, built: Path) -> None:
    """What the batch job writes is exactly what `encode` gives one customer at serving time."""
    rows = load_rows(built)
    vocab = Vocabulary.load(built / "vocab.json")
    max_len = BuildConfig().encoder.max_len
    events_frame = pq.read_table(shop).to_pandas()
    picked = rows.slice(0, 40)
    for i in range(picked.num_rows):
        customer = picked.column("customer_id")[i].as_py()
        cutoff = picked.column("cutoff").to_pandas().iloc[i]
        online = encode(
            events_frame[events_frame["customer_id"] == customer],
            pd.DataFrame({"customer_id": [customer], "cutoff": [cutoff]}),
            vocab,
            EncoderConfig(max_len=max_len),
        )
        for name in TOKEN_FIELDS:
            np.testing.assert_array_equal(
                padded_tokens(picked.slice(i, 1), name, max_len), online.tokens[name]
            )
        for name in AGGREGATE_NAMES:
            assert picked.column(name)[i].as_py() == online.aggregates[name][0], name


def test_shipped_features_config_states_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[1] / "configs" / "features.yaml"
    assert BuildConfig.from_yaml(shipped) == BuildConfig()
