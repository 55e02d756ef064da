"""Events as plain columns (numpy arrays), the form the real-time path keeps them in from the request to
the encoder: no DataFrame per request.

A request's events arrive already typed by the API's request model (times, enums, finite numbers); what
the request model cannot say (an item for product events, the action of a sent message, a time in the
plausible range, duplicate event ids, default channels, blank strings) `from_records` checks and
normalises with the rules, reason codes and messages of `features.validate.validate_events`, which the
batch path uses on files. A test holds the two to the same answers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import numpy as np
import pandas as pd

from features import schema
from features.rejects import MAX_FUTURE, MIN_TS, Reason, describe

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TEXT = tuple(c for c in schema.EVENT_COLUMNS if c not in ("ts", *schema.NUMBER_COLUMNS))
_LOWER = ("event_type", "channel", "message_type")  # compared lower-cased, as `validate_events` does
_MIN_US = int(MIN_TS.value // 1000)
_MAX_FUTURE_US = int(MAX_FUTURE.value // 1000)


def to_us(ts: datetime) -> int:
    """A tz-aware time as epoch microseconds (exact: no float on the way)."""
    return (ts - _EPOCH) // timedelta(microseconds=1)


@dataclass
class EventColumns:
    """Events of the contract as columns: `ts_us` epoch microseconds (UTC), numbers float64 with NaN,
    every other field an object array of str or None."""

    columns: dict[str, np.ndarray]
    ts_us: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_us)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @classmethod
    def empty(cls) -> EventColumns:
        return cls.of_lists({name: [] for name in schema.EVENT_COLUMNS})

    @classmethod
    def of_lists(cls, values: Mapping[str, Sequence[Any]]) -> EventColumns:
        """Columns from lists (`ts` in epoch microseconds, None for missing values)."""
        columns: dict[str, np.ndarray] = {}
        for name in schema.EVENT_COLUMNS:
            if name == "ts":
                continue
            raw = values[name]
            if name in schema.NUMBER_COLUMNS:
                columns[name] = np.array([np.nan if v is None else v for v in raw], dtype=np.float64)
            else:
                text = np.empty(len(raw), dtype=object)
                text[:] = list(raw)
                columns[name] = text
        return cls(columns, np.asarray(values["ts"], dtype=np.int64).reshape(-1))

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> EventColumns:
        """Validated events (a frame of the contract's columns, tz-aware `ts`) as columns."""
        n = len(frame)
        ts = pd.DatetimeIndex(frame["ts"])
        ts_us = ts.tz_convert("UTC").as_unit("us").asi8.copy() if n else np.zeros(0, dtype=np.int64)
        columns: dict[str, np.ndarray] = {}
        for name in schema.EVENT_COLUMNS:
            if name == "ts":
                continue
            if name not in frame.columns:
                columns[name] = np.full(n, np.nan) if name in schema.NUMBER_COLUMNS else np.full(n, None)
            elif name in schema.NUMBER_COLUMNS:
                columns[name] = pd.to_numeric(frame[name], errors="coerce").to_numpy(
                    np.float64, na_value=np.nan
                )
            else:
                column = frame[name].astype(object)
                columns[name] = column.where(column.notna(), None).to_numpy(dtype=object)
        return cls(columns, ts_us)

    def to_frame(self) -> pd.DataFrame:
        """The contract's frame (ts as `datetime64[us, UTC]`), for the batch tools that read frames."""
        data: dict[str, Any] = {"ts": pd.to_datetime(self.ts_us, unit="us", utc=True)}
        data.update(self.columns)
        return pd.DataFrame(data, columns=list(schema.EVENT_COLUMNS))

    def records(self) -> list[dict[str, Any]]:
        """One dict per event (ts in epoch microseconds, missing values None)."""
        names = list(self.columns)
        out = []
        for i in range(len(self)):
            row: dict[str, Any] = {"ts": int(self.ts_us[i])}
            for name in names:
                v = self.columns[name][i]
                row[name] = None if isinstance(v, float) and math.isnan(v) else v
            out.append(row)
        return out

    def take(self, rows: np.ndarray | slice) -> EventColumns:
        return EventColumns({k: v[rows] for k, v in self.columns.items()}, self.ts_us[rows])

    @staticmethod
    def concat(parts: Sequence[EventColumns]) -> EventColumns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return EventColumns.empty()
        if len(parts) == 1:
            return parts[0]
        names = parts[0].columns
        return EventColumns(
            {k: np.concatenate([p.columns[k] for p in parts]) for k in names},
            np.concatenate([p.ts_us for p in parts]),
        )

    def sorted(self) -> EventColumns:
        """Ordered by (customer, time), ties in input order (the store's and the encoder's order)."""
        customers = self.columns["customer_id"].astype(str)
        order = np.lexsort((np.arange(len(self)), self.ts_us, customers))
        return self.take(order)

    def without_duplicates_of(self, other: EventColumns) -> EventColumns:
        """These events less those whose (customer, event id) `other` already holds."""
        if not len(self) or not len(other):
            return self
        seen = set(zip(other["customer_id"], other["event_id"], strict=True))
        keep = np.array(
            [
                e is None or (c, e) not in seen
                for c, e in zip(self["customer_id"], self["event_id"], strict=True)
            ]
        )
        return self if keep.all() else self.take(np.flatnonzero(keep))


def _text(value: Any) -> str | None:
    """Stripped text (an enum's value), None for missing or blank."""
    if value is None:
        return None
    text = (value.value if isinstance(value, Enum) else str(value)).strip()
    return text or None


def from_records(
    records: Sequence[Mapping[str, Any]], where: str, now: datetime | None = None
) -> tuple[EventColumns, list[dict[str, Any]]]:
    """Typed event records (tz-aware `ts`) as columns, after the contract's row checks.

    Args:
        records: events with the contract's field names; times tz-aware, numbers float or None.
        where: what to call the events in errors (`loc` is [where, row, field]).
        now: the present, for the "not in the future" bound (default: the clock).

    Returns:
        The columns of every event, and the problems (empty when all are valid): one
        {"loc", "msg", "type"} per broken row, the first broken rule of the row, as `validate_events`
        names it.
    """
    now = now or datetime.now(UTC)
    now_ts = pd.Timestamp(now)
    latest = to_us(now) + _MAX_FUTURE_US
    values: dict[str, list[Any]] = {name: [] for name in schema.EVENT_COLUMNS}
    problems: list[dict[str, Any]] = []
    first_line: dict[str, int] = {}
    for i, record in enumerate(records):
        row = {name: _text(record.get(name)) for name in _TEXT}
        for name in _LOWER:
            text = row[name]
            row[name] = text.lower() if text is not None else None
        event_type = row["event_type"]
        if row["channel"] is None and event_type is not None:
            row["channel"] = schema.DEFAULT_CHANNEL.get(event_type)
        ts = record.get("ts")
        ts_us = to_us(ts) if isinstance(ts, datetime) and ts.tzinfo is not None else None
        # NaN is a missing number, as in a frame.
        numbers = {name: _number(record.get(name)) for name in schema.NUMBER_COLUMNS}
        broken = _first_broken(row, ts_us, latest, numbers)
        if broken is None and row["event_id"] is not None:
            if row["event_id"] in first_line:
                broken = (Reason.DUPLICATE_EVENT_ID, "event_id")
            else:
                first_line[row["event_id"]] = i
        if broken is not None:
            reason, field = broken
            shown = ts if field == "ts" else record.get(field)
            at = pd.Timestamp(ts) if isinstance(ts, datetime) else now_ts
            message = describe(reason, field, shown, at, event_type, now_ts, first_line, "a time")
            problems.append({"loc": [where, i, field], "msg": message, "type": reason.value})
        for name in _TEXT:
            values[name].append(row[name])
        values["ts"].append(ts_us or 0)
        for name, v in numbers.items():
            values[name].append(None if v is None else float(v))
    return EventColumns.of_lists(values), problems


def _number(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _first_broken(
    row: Mapping[str, str | None], ts_us: int | None, latest_us: int, numbers: Mapping[str, Any]
) -> tuple[Reason, str] | None:
    """The first rule of `validate_events` that the row breaks (its order of `Reason`), or None."""
    event_type = row["event_type"]
    if row["customer_id"] is None:
        return Reason.MISSING_FIELD, "customer_id"
    if ts_us is None:
        return Reason.MISSING_FIELD, "ts"
    if event_type is None:
        return Reason.MISSING_FIELD, "event_type"
    if event_type not in schema.EVENT_TYPES:
        return Reason.UNKNOWN_EVENT_TYPE, "event_type"
    if not _MIN_US <= ts_us <= latest_us:
        return Reason.TS_OUT_OF_RANGE, "ts"
    if row["channel"] is not None and row["channel"] not in schema.CHANNELS:
        return Reason.UNKNOWN_CHANNEL, "channel"
    if event_type in schema.PRODUCT_EVENTS and row["item_id"] is None:
        return Reason.MISSING_ITEM_ID, "item_id"
    message_type = row["message_type"]
    if event_type in schema.SENT_MESSAGE_EVENTS and message_type is None:
        return Reason.MISSING_MESSAGE_TYPE, "message_type"
    if message_type is not None and message_type not in schema.ACTIONS:
        return Reason.UNKNOWN_MESSAGE_TYPE, "message_type"
    for name, v in numbers.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            return Reason.NON_NUMERIC, name
    for name, v in numbers.items():
        if v is not None and not math.isfinite(v):
            return Reason.NON_FINITE, name
    for name, v in numbers.items():
        if v is not None and v < 0 and event_type != schema.EventType.REFUND:
            return Reason.NEGATIVE_VALUE, name
    return None
