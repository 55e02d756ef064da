"""The validator: one reason code per broken rule, the right line, nothing dropped, UTC timestamps."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from features import schema
from features.rejects import REJECT_COLUMNS, Reason
from features.sources import read_generic, validate_raw
from features.validate import (
    RejectRatioExceeded,
    ValidationResult,
    ValidationSummary,
    check_reject_ratio,
    validate_events,
)

FIXTURES = Path(__file__).parent / "fixtures"
NOW = pd.Timestamp("2024-06-01", tz="UTC")
UTC = "UTC"


def _events(**columns: list) -> pd.DataFrame:
    """A frame of candidate rows; customer_id and event_type default to valid values."""
    n = len(next(iter(columns.values())))
    base = {"customer_id": ["c1"] * n, "event_type": ["page_view"] * n}
    return pd.DataFrame({**base, **columns})


@pytest.fixture(scope="module")
def contract_csv() -> ValidationResult:
    """The hand-made CSV with seven good rows and one bad row per rule (see its line numbers)."""
    return validate_raw(read_generic(FIXTURES / "events_contract.csv"), now=NOW)


# Line in events_contract.csv -> (reason, field) of its reject.
EXPECTED_REJECTS = {
    10: (Reason.MISSING_FIELD, "customer_id"),
    11: (Reason.MISSING_FIELD, "ts"),
    12: (Reason.MISSING_FIELD, "event_type"),
    13: (Reason.TS_UNPARSEABLE, "ts"),
    14: (Reason.TS_OUT_OF_RANGE, "ts"),  # 1985
    15: (Reason.TS_OUT_OF_RANGE, "ts"),  # 2030, after now + 1 day
    16: (Reason.UNKNOWN_EVENT_TYPE, "event_type"),
    17: (Reason.UNKNOWN_CHANNEL, "channel"),
    18: (Reason.UNKNOWN_MESSAGE_TYPE, "message_type"),
    19: (Reason.MISSING_ITEM_ID, "item_id"),
    20: (Reason.MISSING_MESSAGE_TYPE, "message_type"),
    21: (Reason.NON_NUMERIC, "value"),
    22: (Reason.NON_FINITE, "quantity"),
    23: (Reason.NEGATIVE_VALUE, "value"),
    24: (Reason.DUPLICATE_EVENT_ID, "event_id"),
    25: (Reason.MALFORMED_ROW, ""),
    27: (Reason.MISSING_FIELD, "customer_id"),  # also a bad ts and an unknown event type
}


def test_each_broken_rule_has_its_reason_and_line(contract_csv: ValidationResult) -> None:
    rejects = contract_csv.rejects
    assert list(rejects.columns) == list(REJECT_COLUMNS)
    got = {int(r.line): (r.reason, r.field) for r in rejects.itertuples()}
    assert got == {line: (reason.value, field) for line, (reason, field) in EXPECTED_REJECTS.items()}
    for r in rejects.itertuples():
        assert r.message.startswith(f"line {r.line}: ")


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (13, ["ts", "'yesterday'", "not a timestamp"]),
        (16, ["event_type", "'teleport'"]),
        (17, ["channel", "'fax'"]),
        (21, ["value", "'abc'", "not a number"]),
        (22, ["quantity", "'inf'", "finite"]),
        (23, ["value", "'-10'", "negative"]),
        (24, ["event_id", "'e01'", "line 2"]),
        (25, ["13 fields", "12"]),
    ],
)
def test_messages_name_field_value_and_line(
    contract_csv: ValidationResult, line: int, words: list[str]
) -> None:
    message = contract_csv.rejects.set_index("line").loc[line, "message"]
    assert message.startswith(f"line {line}: ")
    for word in words:
        assert word in message


def test_a_row_breaking_several_rules_is_one_reject_listing_them_all(contract_csv: ValidationResult) -> None:
    row = contract_csv.rejects.set_index("line").loc[27]
    assert row["reason"] == Reason.MISSING_FIELD
    assert "customer_id is missing" in row["message"]
    assert "'teleport'" in row["message"]
    assert "'soon'" in row["message"]


def test_nothing_is_dropped_silently(contract_csv: ValidationResult) -> None:
    s = contract_csv.summary
    # 26 data lines: one row spans two lines, one line is blank.
    assert s.rows_read == 25
    assert (s.rows_accepted, s.rows_rejected, s.skipped) == (7, 17, {"blank_line": 1})
    assert s.rows_read == s.rows_accepted + s.rows_rejected + s.rows_skipped
    assert sum(s.rejects_by_reason.values()) == s.rows_rejected
    assert s.rejects_by_reason[Reason.MISSING_FIELD] == 4
    assert s.rejects_by_reason[Reason.TS_OUT_OF_RANGE] == 2


def test_rejects_keep_the_raw_row_as_json(contract_csv: ValidationResult) -> None:
    raw = json.loads(contract_csv.rejects.set_index("line").loc[17, "raw"])
    assert raw["channel"] == "fax"
    assert raw["event_id"] == "e17"


def test_accepted_rows_are_normalised(contract_csv: ValidationResult) -> None:
    acc = contract_csv.accepted
    assert list(acc.columns) == list(schema.EVENT_COLUMNS)
    assert acc["event_id"].tolist() == ["e01", "e02", "e03", "e04", "e05", "e06", "e26"]
    by_id = acc.set_index("event_id")
    ten = pd.Timestamp("2024-03-01 10:00", tz=UTC)
    eleven = pd.Timestamp("2024-03-01 11:00", tz=UTC)
    assert by_id.loc["e01", "ts"] == ten
    assert by_id.loc["e02", "ts"] == ten  # 11:00+01:00
    assert by_id.loc["e03", "ts"] == eleven  # epoch seconds
    assert by_id.loc["e04", "ts"] == eleven  # epoch milliseconds
    assert by_id.loc["e06", "ts"] == pd.Timestamp("2024-03-01 12:00", tz=UTC)  # naive: UTC
    # Stripped and lower-cased; channel defaults by event type.
    assert by_id.loc["e06", ["customer_id", "event_type", "channel"]].tolist() == ["c3", "page_view", "web"]
    assert by_id.loc["e03", "channel"] == "web"  # "WEB"
    assert by_id.loc["e04", "channel"] == "email"  # default of email_sent
    assert by_id.loc["e05", "channel"] == "store"
    assert by_id.loc["e03", "category"] == "multi\nline category"
    assert by_id.loc["e05", "value"] == -5.5  # a refund may be negative
    assert by_id.loc["e01", "item_id"] == "i1"
    assert by_id.loc["e06", "item_id"] is None


def test_accepted_converts_to_the_event_schema(contract_csv: ValidationResult) -> None:
    table = pa.Table.from_pandas(contract_csv.accepted, schema=schema.EVENT_SCHEMA, preserve_index=False)
    assert table.schema.equals(schema.EVENT_SCHEMA)
    assert schema.conform_table(table).num_rows == 7
    assert str(contract_csv.accepted["ts"].dtype) == "datetime64[us, UTC]"


INSTANT = pd.Timestamp("2011-06-01 11:00:00", tz=UTC)


@pytest.mark.parametrize(
    "ts",
    [
        "2011-06-01T11:00:00Z",
        "2011-06-01T11:00:00z",
        "2011-06-01 11:00:00",
        "2011-06-01T11:00:00.000000",
        "2011-06-01 11:00:00 UTC",
        "2011-06-01T12:00:00+01:00",
        "2011-06-01T12:00:00+0100",
        "2011-06-01 06:00:00 -05:00",
        "1306926000",
        "1306926000000",
        "1306926000.0",
        1306926000,
        1306926000000,
        1306926000000000,
        pd.Timestamp("2011-06-01 13:00", tz="Europe/Paris"),
    ],
)
def test_timestamp_forms_normalise_to_one_utc_instant(ts: object) -> None:
    result = validate_events(_events(ts=[ts]), now=NOW)
    assert result.summary.rows_rejected == 0, result.rejects["message"].tolist()
    assert result.accepted["ts"].iloc[0] == INSTANT


def test_timestamp_forms_mixed_in_one_column() -> None:
    forms = [
        "2011-06-01T11:00:00Z",
        "2011-06-01 12:00:00+01:00",
        "1306926000",
        "1306926000000",
        "2011-06-01 11:00",
    ]
    result = validate_events(_events(ts=forms), now=NOW)
    assert (result.accepted["ts"] == INSTANT).all()
    assert len(result.accepted) == len(forms)


@pytest.mark.parametrize(
    ("local", "utc"),
    [
        ("2010-12-01 08:26:00", "2010-12-01 08:26:00"),  # GMT
        ("2011-03-27 00:30:00", "2011-03-27 00:30:00"),  # just before the change to BST
        ("2011-03-27 01:30:00", "2011-03-27 01:00:00"),  # does not exist: shifted to 02:00 BST
        ("2011-03-27 02:30:00", "2011-03-27 01:30:00"),  # BST
        ("2011-06-01 12:00:00", "2011-06-01 11:00:00"),
        ("2011-09-30 17:22:00", "2011-09-30 16:22:00"),
        ("2011-10-30 01:30:00", "2011-10-30 00:30:00"),  # happens twice: the first (BST) one
        ("2011-10-30 02:30:00", "2011-10-30 02:30:00"),  # GMT again
    ],
)
def test_naive_uk_time_converts_across_bst(local: str, utc: str) -> None:
    expected = pd.Timestamp(utc, tz=UTC)
    as_text = validate_events(_events(ts=[local]), tz="Europe/London", now=NOW)
    as_datetime = validate_events(_events(ts=pd.to_datetime([local])), tz="Europe/London", now=NOW)
    assert as_text.accepted["ts"].iloc[0] == expected
    assert as_datetime.accepted["ts"].iloc[0] == expected


def test_tz_does_not_move_instants_that_carry_an_offset() -> None:
    result = validate_events(_events(ts=["2011-06-01T11:00:00Z", "1306926000"]), tz="Europe/London", now=NOW)
    assert (result.accepted["ts"] == INSTANT).all()


def test_epoch_unit_can_be_forced() -> None:
    # 1306926000 read as milliseconds is in January 1970: implausible.
    result = validate_events(_events(ts=["1306926000", "1306926000000"]), ts_unit="ms", now=NOW)
    assert result.rejects["reason"].tolist() == [Reason.TS_OUT_OF_RANGE]
    assert result.accepted["ts"].tolist() == [INSTANT]


def test_ts_format_for_other_layouts() -> None:
    result = validate_events(
        _events(ts=["01/06/2011 12:00", "2011-06-01 12:00"]), ts_format="%d/%m/%Y %H:%M", tz="Europe/London"
    )
    assert result.accepted["ts"].tolist() == [INSTANT]
    assert "format '%d/%m/%Y %H:%M'" in result.rejects["message"].iloc[0]


def test_future_is_relative_to_now() -> None:
    frame = _events(ts=["2024-06-01T23:00:00Z", "2024-06-02T01:00:00Z"])
    result = validate_events(frame, now=NOW)
    assert result.rejects["line"].tolist() == [3]
    assert result.rejects["reason"].tolist() == [Reason.TS_OUT_OF_RANGE]


def test_lines_argument_numbers_the_rejects() -> None:
    frame = _events(ts=["2020-01-01", "bad", "2020-01-01"], event_type=["page_view", "page_view", "nope"])
    result = validate_events(frame, lines=np.array([7, 9, 12]), now=NOW)
    assert result.rejects["line"].tolist() == [9, 12]
    assert result.rejects["message"].iloc[1].startswith("line 12: ")


def test_duplicates_keep_the_first_valid_copy() -> None:
    frame = _events(ts=["bad", "2020-01-01", "2020-01-02", "2020-01-03"], event_id=["e1", "e1", "e1", " e1 "])
    result = validate_events(frame, now=NOW)
    assert result.accepted["ts"].tolist() == [pd.Timestamp("2020-01-01", tz=UTC)]
    assert result.rejects["reason"].tolist() == [
        Reason.TS_UNPARSEABLE,
        Reason.DUPLICATE_EVENT_ID,
        Reason.DUPLICATE_EVENT_ID,
    ]
    assert "line 3" in result.rejects["message"].iloc[1]


def test_negative_numbers_only_on_refunds() -> None:
    frame = _events(
        ts=["2020-01-01"] * 4,
        event_type=["refund", "purchase", "refund", "purchase"],
        item_id=["i"] * 4,
        value=[-5.0, -5.0, 5.0, 5.0],
        quantity=[-1, 1, 1, -1],
    )
    result = validate_events(frame, now=NOW)
    assert result.rejects[["line", "field", "reason"]].values.tolist() == [
        [3, "value", Reason.NEGATIVE_VALUE],
        [5, "quantity", Reason.NEGATIVE_VALUE],
    ]


def test_typed_columns_are_accepted() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": [17850.0, 42.0],  # ids read as floats lose their ".0"
            "ts": pd.to_datetime(["2020-01-01 10:00", "2020-01-01 11:00"]).tz_localize("UTC"),
            "event_type": ["purchase", "purchase"],
            "item_id": [1, 2],
            "value": [1.5, np.inf],
        }
    )
    result = validate_events(frame, now=NOW)
    assert result.accepted["customer_id"].tolist() == ["17850"]
    assert result.accepted["item_id"].tolist() == ["1"]
    assert result.rejects["reason"].tolist() == [Reason.NON_FINITE]


def test_json_like_objects_are_accepted() -> None:
    frame = pd.DataFrame(
        {
            "customer_id": ["a", 7],
            "ts": ["2020-01-01T00:00:00Z", 1577836800],
            "event_type": ["page_view", "page_view"],
            "value": ["1.5", 2],
        }
    )
    result = validate_events(frame, now=NOW)
    assert result.summary.rows_rejected == 0
    assert result.accepted["customer_id"].tolist() == ["a", "7"]
    assert result.accepted["value"].tolist() == [1.5, 2.0]
    assert (result.accepted["ts"] == pd.Timestamp("2020-01-01", tz=UTC)).all()


def test_missing_required_column_is_a_clear_error() -> None:
    with pytest.raises(schema.EventSchemaError, match="event_type"):
        validate_events(pd.DataFrame({"customer_id": ["a"], "ts": ["2020-01-01"]}), source="x.csv")


def test_empty_input() -> None:
    result = validate_events(_events(ts=[]).astype(object), now=NOW)
    assert result.summary.rows_read == 0
    assert list(result.accepted.columns) == list(schema.EVENT_COLUMNS)
    assert list(result.rejects.columns) == list(REJECT_COLUMNS)
    pa.Table.from_pandas(result.accepted, schema=schema.EVENT_SCHEMA, preserve_index=False)


def test_skipped_counts_join_the_summary() -> None:
    result = validate_events(_events(ts=["2020-01-01"]), skipped={"guest_line": 3}, now=NOW)
    assert result.summary.rows_read == 4
    assert result.summary.rows_skipped == 3


def _summary(accepted: int, rejected: int, skipped: int = 0) -> ValidationSummary:
    return ValidationSummary(
        source="shop.csv",
        rows_read=accepted + rejected + skipped,
        rows_accepted=accepted,
        rows_rejected=rejected,
        rejects_by_reason={"ts_unparseable": rejected - 1, "unknown_channel": 1} if rejected else {},
        skipped={"guest_line": skipped} if skipped else {},
    )


def test_reject_ratio_within_threshold_passes() -> None:
    check_reject_ratio(_summary(95, 5), 0.05)
    # Skipped rows are not candidates: 5 of 100 validated rows, whatever was skipped.
    check_reject_ratio(_summary(95, 5, skipped=900), 0.05)


def test_reject_ratio_above_threshold_fails_with_its_reasons() -> None:
    with pytest.raises(RejectRatioExceeded) as info:
        check_reject_ratio(_summary(90, 10), 0.05, rejects_path="out/rejects.csv")
    message = str(info.value)
    for words in ("10 of 100", "10.00%", "5.00%", "ts_unparseable 9", "unknown_channel 1", "out/rejects.csv"):
        assert words in message
    assert info.value.ratio == pytest.approx(0.1)


def test_reject_ratio_must_be_a_fraction() -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        check_reject_ratio(_summary(1, 0), 5)
