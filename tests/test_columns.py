"""The real-time path's events as columns: the same contract checks as `validate_events`, and the same
encoding as the batch encoder on frames."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.columns import EventColumns, from_records
from features.encoder import AGGREGATE_NAMES, EncoderConfig, encode, encode_columns
from features.schema import EVENT_COLUMNS
from features.validate import validate_events
from features.vocab import Vocabulary
from tests.factories import random_events

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def record(**fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
    row.update(customer_id="C1", ts=NOW - timedelta(hours=1), event_type="page_view")
    row.update(fields)
    return row


ROWS = [
    record(),  # valid
    record(event_type="product_view", item_id="  I7 "),  # valid, stripped
    record(event_type="product_view", item_id="   "),  # blank item on a product event
    record(event_type="email_sent"),  # sent message without its action
    record(event_type="email_sent", message_type="welcome_series", channel=None),  # default channel e-mail
    record(event_type="Purchase", item_id="I1", value=12.5),  # lower-cased
    record(event_type="purchase", item_id="I1", value=-1.0),  # negative value
    record(event_type="refund", item_id="I1", value=-1.0),  # refunds may be negative
    record(ts=datetime(1985, 1, 1, tzinfo=UTC)),  # before the plausible range
    record(ts=NOW + timedelta(days=3)),  # beyond tomorrow
    record(event_id="e1"),
    record(event_id="e1"),  # duplicate id
    record(customer_id="  "),  # blank customer
    record(event_type="no_such_event"),
    record(channel="fax"),
    record(message_type="spam"),
    record(value=float("inf")),
    record(quantity=float("nan")),
]


def test_from_records_accepts_and_names_rejects_as_validate_events_does() -> None:
    columns, problems = from_records(ROWS, "events", now=NOW)
    frame = pd.DataFrame(ROWS)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    batch = validate_events(frame, lines=np.arange(len(frame)), now=pd.Timestamp(NOW))
    expected = sorted(
        (int(r["line"]), str(r["field"]), str(r["reason"])) for r in batch.rejects.to_dict("records")
    )
    got = sorted((p["loc"][1], p["loc"][2], p["type"]) for p in problems)
    assert got == expected
    assert len(expected) == 11  # the table above: 7 valid rows (a NaN number is a missing one), 11 broken
    # The accepted rows carry the values the batch validator normalises them to.
    bad = {line for line, _, _ in expected}
    kept = columns.take(np.array([i for i in range(len(ROWS)) if i not in bad]))
    accepted = EventColumns.from_frame(batch.accepted)
    for name in EVENT_COLUMNS:
        if name == "ts":
            np.testing.assert_array_equal(kept.ts_us, accepted.ts_us)
        elif name in ("value", "quantity"):
            np.testing.assert_array_equal(kept[name], accepted[name])
        else:
            assert list(kept[name]) == list(accepted[name]), name


def test_messages_name_the_rule() -> None:
    _, problems = from_records([record(event_type="add_to_cart")], "events", now=NOW)
    assert problems == [
        {
            "loc": ["events", 0, "item_id"],
            "msg": "item_id is missing; add_to_cart events need one",
            "type": "missing_item_id",
        }
    ]


@pytest.mark.parametrize("max_len", [5, 50])
def test_encoding_columns_equals_encoding_the_frame(max_len: int) -> None:
    events = random_events(40, 3_000, seed=3)
    counts = {
        "item_id": events["item_id"].value_counts().head(100),
        "category": events["category"].value_counts(),
    }
    vocab = Vocabulary.fit(counts)
    customers = np.array([*sorted(events["customer_id"].unique())[:25], "nobody"], dtype=object)
    rng = np.random.default_rng(0)
    cut = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 130 * 86_400, 26), unit="s")
    cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": cut})
    config = EncoderConfig(max_len=max_len)
    expected = encode(events.sample(frac=1.0, random_state=1), cutoffs, vocab, config)
    got = encode_columns(EventColumns.from_frame(events), customers, cut.as_unit("ms").asi8, vocab, config)
    np.testing.assert_array_equal(got.length, expected.length)
    for name, values in expected.values.items():
        np.testing.assert_array_equal(got.values[name], values, err_msg=name)
    for name in AGGREGATE_NAMES:
        np.testing.assert_array_equal(got.aggregates[name], expected.aggregates[name], err_msg=name)


def test_columns_round_trip_and_concat() -> None:
    events = random_events(5, 50, seed=1)
    columns = EventColumns.from_frame(events)
    back = columns.to_frame()
    pd.testing.assert_frame_equal(
        back.astype({"ts": "datetime64[us, UTC]"}), events[list(EVENT_COLUMNS)], check_dtype=False
    )
    both = EventColumns.concat(
        [columns.take(slice(0, 20)), EventColumns.empty(), columns.take(slice(20, 50))]
    )
    np.testing.assert_array_equal(both.ts_us, columns.ts_us)
    assert list(both["item_id"]) == list(columns["item_id"])
