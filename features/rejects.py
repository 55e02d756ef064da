"""Why a row of events is rejected, and how it is said.

The reason codes in the order the checks of `features.validate.validate_events` run, the plausible time
range, the columns of a reject record, each broken rule in words (`describe`, which the real-time path in
`features.columns` words its rejects with too) and the records of a validation's rejects.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

from features import schema

__all__ = [
    "MAX_FUTURE",
    "MIN_TS",
    "REJECT_COLUMNS",
    "Reason",
    "describe",
    "empty_rejects",
    "reject_records",
]

# Earliest plausible event time, and how far past `now` an event may lie (clock skew between systems).
MIN_TS = pd.Timestamp("1990-01-01", tz="UTC")
MAX_FUTURE = pd.Timedelta(days=1)

REJECT_COLUMNS: tuple[str, ...] = ("line", "field", "reason", "message", "raw")


class Reason(StrEnum):
    """Reject reason codes, in the order the checks run (the first broken one names a reject).

    `malformed_row` comes from the CSV reader (a row with the wrong number of fields), the others from
    `validate_events`.
    """

    MALFORMED_ROW = "malformed_row"
    MISSING_FIELD = "missing_field"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    TS_UNPARSEABLE = "ts_unparseable"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    UNKNOWN_CHANNEL = "unknown_channel"
    MISSING_ITEM_ID = "missing_item_id"
    MISSING_MESSAGE_TYPE = "missing_message_type"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    NON_NUMERIC = "non_numeric"
    NON_FINITE = "non_finite"
    NEGATIVE_VALUE = "negative_value"
    DUPLICATE_EVENT_ID = "duplicate_event_id"


def reject_records(
    df: pd.DataFrame,
    raw: pd.DataFrame,
    bad: np.ndarray,
    checks: list[tuple[Reason, str, np.ndarray]],
    lines: np.ndarray,
    ts: pd.Series,
    event_type: np.ndarray,
    event_id: np.ndarray,
    now: pd.Timestamp,
    ts_expected: str,
) -> pd.DataFrame:
    """One record per bad row: the first broken rule names it, the message lists them all."""
    idx = np.flatnonzero(bad)
    if len(idx) == 0:
        return empty_rejects()
    broken = np.column_stack([mask[idx] for _, _, mask in checks])
    records = _records(df.iloc[idx])
    raw_records = records if raw is df else _records(raw.iloc[idx])
    first_line_of_id: dict[str, int] = {}
    dup_mask = checks[-1][2]
    if dup_mask.any():
        dup_ids = set(event_id[dup_mask])
        valid = ~bad | dup_mask
        keep = valid & pd.Series(event_id).isin(dup_ids).to_numpy()
        for eid, line in zip(event_id[keep], lines[keep], strict=True):
            first_line_of_id.setdefault(eid, int(line))

    out_line, out_field, out_reason, out_message, out_raw = [], [], [], [], []
    for k, i in enumerate(idx):
        record = records[k]
        problems = []
        first: tuple[Reason, str] | None = None
        for j in np.flatnonzero(broken[k]):
            reason, name, _ = checks[j]
            if first is None:
                first = (reason, name)
            problems.append(
                describe(
                    reason,
                    name,
                    record.get(name),
                    ts.iloc[i],
                    event_type[i],
                    now,
                    first_line_of_id,
                    ts_expected,
                )
            )
        assert first is not None
        line = int(lines[i])
        out_line.append(line)
        out_field.append(first[1])
        out_reason.append(str(first[0]))
        out_message.append(f"line {line}: " + "; ".join(problems))
        out_raw.append(json.dumps(raw_records[k], default=str, ensure_ascii=False))
    return pd.DataFrame(
        {
            "line": np.asarray(out_line, dtype=np.int64),
            "field": out_field,
            "reason": out_reason,
            "message": out_message,
            "raw": out_raw,
        },
        columns=list(REJECT_COLUMNS),
    )


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    rows = rows.astype(object)
    return [
        {str(k): v for k, v in r.items()} for r in rows.where(rows.notna(), None).to_dict(orient="records")
    ]


def empty_rejects() -> pd.DataFrame:
    """No rejects, with the columns and types of reject records."""
    return pd.DataFrame(
        {
            "line": pd.Series(dtype=np.int64),
            **{c: pd.Series(dtype=object) for c in REJECT_COLUMNS[1:]},
        }
    )


def describe(
    reason: Reason,
    name: str,
    value: Any,
    ts: pd.Timestamp,
    event_type: str | None,
    now: pd.Timestamp,
    first_line_of_id: dict[str, int],
    ts_expected: str,
) -> str:
    """One broken rule in words."""
    shown = repr(value.strip() if isinstance(value, str) else value)
    messages: dict[Reason, Callable[[], str]] = {
        Reason.MISSING_FIELD: lambda: f"{name} is missing (required)",
        Reason.UNKNOWN_EVENT_TYPE: lambda: (
            f"event_type {shown} is not an event type of the contract ({', '.join(schema.EVENT_TYPES)})"
        ),
        Reason.TS_UNPARSEABLE: lambda: f"ts {shown} is not a timestamp (expected {ts_expected})",
        Reason.TS_OUT_OF_RANGE: lambda: (
            f"ts {shown} ({ts.isoformat()}) is outside the plausible range "
            f"{MIN_TS.date()} .. {(now + MAX_FUTURE).isoformat(timespec='seconds')}"
        ),
        Reason.UNKNOWN_CHANNEL: lambda: f"channel {shown} is not a channel ({', '.join(schema.CHANNELS)})",
        Reason.MISSING_ITEM_ID: lambda: f"item_id is missing; {event_type} events need one",
        Reason.MISSING_MESSAGE_TYPE: lambda: (
            f"message_type is missing; {event_type} events need the action they carried"
        ),
        Reason.UNKNOWN_MESSAGE_TYPE: lambda: (
            f"message_type {shown} is not an action ({', '.join(schema.ACTIONS)})"
        ),
        Reason.NON_NUMERIC: lambda: f"{name} {shown} is not a number",
        Reason.NON_FINITE: lambda: f"{name} {shown} is not a finite number",
        Reason.NEGATIVE_VALUE: lambda: f"{name} {shown} is negative; only refund events may be negative",
        Reason.DUPLICATE_EVENT_ID: lambda: (
            f"event_id {shown} repeats the event on line "
            f"{first_line_of_id.get(str(value).strip(), '?')} (kept there)"
        ),
    }
    return messages[reason]()
