"""The one encoder: point-in-time correctness, batch independence, tokens and aggregates on known frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS, EncoderConfig, encode
from features.schema import EVENT_TYPES
from features.vocab import FIRST, OOV, PAD, Vocabulary
from tests.factories import events, random_events


@pytest.fixture
def vocab() -> Vocabulary:
    counts = {
        "item_id": pd.Series({"I1": 5, "I2": 3, "I3": 1}),
        "category": pd.Series({"cat_1": 5, "cat_2": 3, "cat_3": 1}),
    }
    return Vocabulary.fit(counts)


def cutoffs(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [r[0] for r in rows], "cutoff": [pd.Timestamp(r[1], tz="UTC") for r in rows]}
    )


def test_tokens_and_aggregates_by_hand(vocab: Vocabulary) -> None:
    ev = events(
        ("a", "2026-01-01 10:00", "newsletter_signup"),
        ("a", "2026-01-02 10:00", "product_view", "I1"),
        ("a", "2026-01-02 10:05", "add_to_cart", "I1"),
        ("a", "2026-01-02 10:10", "purchase", "I1", 30.0),
        ("a", "2026-01-05 09:00", "email_sent", None, None, "cross_sell"),
        ("a", "2026-01-06 12:00", "product_view", "I9"),  # unknown item -> OOV
        ("a", "2026-01-08 00:00", "purchase", "I2", 99.0),  # exactly at the cutoff: excluded
    )
    batch = encode(ev, cutoffs(("a", "2026-01-08")), vocab, EncoderConfig(max_len=8))
    assert batch.length.tolist() == [6]
    et = batch.tokens["event_type"][0]
    # Left-padded, oldest first.
    assert et[:2].tolist() == [PAD, PAD]
    expected = ["newsletter_signup", "product_view", "add_to_cart", "purchase", "email_sent", "product_view"]
    assert et[2:].tolist() == [EVENT_TYPES.index(e) + FIRST for e in expected]
    assert batch.tokens["item_id"][0, 2:].tolist() == [PAD, FIRST, FIRST, FIRST, PAD, OOV]
    assert batch.tokens["message_type"][0, 6] == vocab.tokens["message_type"].index("cross_sell") + FIRST
    # First event of a customer has its own dt bucket; 5 minutes -> the 300 s bucket.
    assert batch.tokens["dt_bucket"][0, 2] == FIRST
    assert batch.tokens["dt_bucket"][0, 4] == batch.tokens["dt_bucket"][0, 5]
    assert batch.tokens["hour"][0, 2] == 10 + 1
    assert batch.tokens["weekday"][0, 2] == pd.Timestamp("2026-01-01").weekday() + 1
    agg = {k: v[0] for k, v in batch.aggregates.items()}
    assert agg["n_purchases"] == 1
    assert agg["monetary"] == pytest.approx(30.0)
    assert agg["emails_received_7d"] == 1
    assert agg["n_events"] == 5  # the e-mail sent is not the customer's activity
    assert agg["recency_days"] == pytest.approx(1.5)
    assert agg["days_since_last_purchase"] == pytest.approx(5 + 13 / 24 + 50 / 1440)
    assert agg["email_consent"] == 1.0
    assert agg["open_cart"] == 0.0  # the cart was bought
    assert set(batch.aggregates) == set(AGGREGATE_NAMES)


def test_sequence_keeps_the_last_max_len_events(vocab: Vocabulary) -> None:
    ev = events(*[("a", f"2026-01-01 00:{m:02d}", "page_view") for m in range(10)])
    batch = encode(ev, cutoffs(("a", "2026-01-02")), vocab, EncoderConfig(max_len=4))
    assert batch.length.tolist() == [4]
    assert (batch.tokens["event_type"] > 0).all()


def test_customer_without_history_gets_empty_input(vocab: Vocabulary) -> None:
    ev = events(("a", "2026-01-05", "page_view"))
    batch = encode(ev, cutoffs(("a", "2026-01-05"), ("new", "2026-01-05")), vocab, EncoderConfig(max_len=4))
    assert batch.length.tolist() == [0, 0]
    assert all((t == PAD).all() for t in batch.tokens.values())
    assert batch.aggregates["email_consent"].tolist() == [-1.0, -1.0]


def test_changing_events_after_a_cutoff_never_changes_its_inputs(vocab: Vocabulary) -> None:
    """The leakage test: inputs at a cutoff depend only on events strictly before it."""
    base = random_events(n_customers=30, n_events=3_000, seed=1)
    cut = pd.Timestamp("2026-03-01", tz="UTC")
    rows = pd.DataFrame({"customer_id": sorted(base["customer_id"].unique()), "cutoff": cut})
    before = encode(base, rows, vocab)

    rng = np.random.default_rng(2)
    after = base["ts"] >= cut
    changed = base.copy()
    # Rewrite everything at or after the cutoff: other types, items, values, and new events.
    changed.loc[after, "event_type"] = rng.choice(["purchase", "add_to_cart"], after.sum())
    changed.loc[after, "item_id"] = "I1"
    changed.loc[after, "value"] = 1_000.0
    extra = base[after].copy()
    extra["ts"] = cut  # exactly at the cutoff counts as after
    changed = pd.concat([changed, extra], ignore_index=True).sample(frac=1.0, random_state=3)
    again = encode(changed, rows, vocab)

    for name in TOKEN_FIELDS:
        np.testing.assert_array_equal(before.tokens[name], again.tokens[name], err_msg=name)
    np.testing.assert_array_equal(before.length, again.length)
    for name in AGGREGATE_NAMES:
        np.testing.assert_array_equal(before.aggregates[name], again.aggregates[name], err_msg=name)


def test_one_customer_alone_equals_the_same_customer_in_a_batch(vocab: Vocabulary) -> None:
    """The online scorer encodes one customer; the batch job a bucket: the arrays must be identical."""
    base = random_events(n_customers=50, n_events=5_000, seed=4)
    cuts = [pd.Timestamp(d, tz="UTC") for d in ("2026-02-01", "2026-03-15", "2026-04-20")]
    ids = sorted(base["customer_id"].unique())
    rows = pd.DataFrame([(c, t) for c in ids for t in cuts], columns=["customer_id", "cutoff"])
    batch = encode(base, rows, vocab)
    for i, customer in enumerate(ids[:10]):
        alone = encode(base[base["customer_id"] == customer], rows[rows["customer_id"] == customer], vocab)
        sel = np.flatnonzero(rows["customer_id"].to_numpy() == customer)
        for name in TOKEN_FIELDS:
            np.testing.assert_array_equal(alone.tokens[name], batch.tokens[name][sel], err_msg=f"{i} {name}")
        for name in AGGREGATE_NAMES:
            np.testing.assert_array_equal(alone.aggregates[name], batch.aggregates[name][sel], err_msg=name)


def test_categorical_input_encodes_like_strings(vocab: Vocabulary) -> None:
    """Parquet dictionary columns arrive as categoricals; they must give the same tokens."""
    base = random_events(n_customers=20, n_events=1_000, seed=5)
    cats = base.copy()
    for col in ("customer_id", "event_type", "channel", "item_id", "category", "message_type"):
        cats[col] = cats[col].astype("category")
    rows = pd.DataFrame(
        {"customer_id": sorted(base["customer_id"].unique()), "cutoff": pd.Timestamp("2026-03-01", tz="UTC")}
    )
    a, b = encode(base, rows, vocab), encode(cats, rows, vocab)
    for name in TOKEN_FIELDS:
        np.testing.assert_array_equal(a.tokens[name], b.tokens[name])
