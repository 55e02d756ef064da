"""The one validator of raw events: every reader (adapters, the simulator's files, `POST /v1/events`) uses it.

`validate_events` takes candidate rows named after the event contract (`features.schema`), checks each
rule of DESIGN.md "Contracts / Event" with vectorised Arrow compute / numpy / pandas operations (only
the rejected rows are visited one by one, to word their messages), normalises what it accepts
(stripped strings, empty as null, lower-cased enums, default channel, UTC timestamps) and returns the
rows it rejects with their line, field, reason code and a message in words. Nothing is dropped
silently: a row is accepted, rejected, or was skipped on purpose by the reader (and counted in
`skipped`).

Decisions worth knowing:

- **Several broken rules in one row**: the row gives one reject record. Its `reason` and `field` are the
  first broken rule in the order of `Reason` (the order of the checks below); its `message` lists every
  broken rule, so fixing the file takes one pass. `rejects_by_reason` counts the first reason, so it
  sums to `rows_rejected`.
- **Timestamps**: strings are ISO 8601, with or without an offset (`Z`, `+01:00`, `+0100`, a trailing
  `UTC` / `GMT`). Strings without an offset and naive datetimes are wall-clock time in `tz` (UTC when
  `tz` is None); in a DST change an ambiguous wall time is read as its first occurrence and a
  non-existent one is shifted forward. Numbers, and strings of digits, are Unix epochs; unless `ts_unit`
  says which unit, the magnitude decides: |x| < 1e11 seconds (up to the year 5138), < 1e14 milliseconds,
  < 1e17 microseconds, else nanoseconds. Any instant before 1990-01-01 or more than one day after `now`
  is rejected as implausible, which also catches an epoch in the wrong unit.
- **Duplicates**: among rows that pass every other rule, the first row with a given `event_id` is kept
  and the later ones are rejected (`duplicate_event_id`, naming the line of the kept one).
- **Negative numbers**: `value` and `quantity` may be negative only on `refund` events.
- **message_type**: when given (on any event), it must be an `Action` value; `email_sent` and
  `sms_sent` must carry one.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import schema

__all__ = [
    "MAX_FUTURE",
    "MIN_TS",
    "REJECT_COLUMNS",
    "Reason",
    "RejectRatioExceeded",
    "ValidationResult",
    "ValidationSummary",
    "check_reject_ratio",
    "validate_events",
]

# Earliest plausible event time, and how far past `now` an event may lie (clock skew between systems).
MIN_TS = pd.Timestamp("1990-01-01", tz="UTC")
MAX_FUTURE = pd.Timedelta(days=1)

REJECT_COLUMNS: tuple[str, ...] = ("line", "field", "reason", "message", "raw")

_EPOCH_UNITS_US: dict[str, float] = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}
# datetime64[us] holds +-2.9e5 years; anything this far from 1970 is implausible anyway.
_MAX_ABS_US = 1e17
# Arrow compute regexes (RE2): match_substring_regex finds a match anywhere, hence the anchors.
_DIGITS = r"^[+-]?\d+(?:\.\d+)?$"
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_TZ_SUFFIX = r"(?i)\s*(?:Z|UTC|GMT)$"
_SPACED_OFFSET = r"\s+([+-]\d{2}(?::?\d{2})?)$"
_HAS_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?[+-]\d{2}(?::?\d{2})?$"
_NAN_TEXT = r"(?i)^[+-]?(?:nan|inf|infinity)$"


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


@dataclass
class ValidationSummary:
    """Counts of one validation (and of the reader before it).

    `rows_read == rows_accepted + rows_rejected + rows_skipped` always holds.

    Attributes:
        source: what the input was called (an adapter name or a path).
        rows_read: rows the reader saw, skipped ones included.
        rows_accepted: rows that follow the contract.
        rows_rejected: rows that break it (one reject record each).
        rejects_by_reason: rejected rows per (first) reason code, most frequent first.
        skipped: rows the reader left out on purpose, per cause (for example `guest_line`).
        ts_min: earliest accepted event time (ISO 8601, UTC), None when nothing was accepted.
        ts_max: latest accepted event time.
        customers: distinct customers among the accepted rows.
    """

    source: str
    rows_read: int
    rows_accepted: int
    rows_rejected: int
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    ts_min: str | None = None
    ts_max: str | None = None
    customers: int = 0

    @property
    def rows_skipped(self) -> int:
        """Rows left out on purpose by the reader (the sum of `skipped`)."""
        return sum(self.skipped.values())

    @property
    def reject_ratio(self) -> float:
        """Rejected rows over the rows that were validated (skipped rows are not candidates)."""
        candidates = self.rows_accepted + self.rows_rejected
        return self.rows_rejected / candidates if candidates else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The summary as plain JSON-ready values, derived counts included."""
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_accepted": self.rows_accepted,
            "rows_rejected": self.rows_rejected,
            "rows_skipped": self.rows_skipped,
            "reject_ratio": self.reject_ratio,
            "rejects_by_reason": dict(self.rejects_by_reason),
            "skipped": dict(self.skipped),
            "ts_min": self.ts_min,
            "ts_max": self.ts_max,
            "customers": self.customers,
        }


@dataclass
class ValidationResult:
    """What `validate_events` returns.

    Attributes:
        events: the valid, normalised events as an Arrow table with `schema.EVENT_SCHEMA`, in input
            order (what the ingest job writes, without a round trip through Python objects).
        rejects: one row per rejected input row with `REJECT_COLUMNS`: line (int), field, reason (a
            `Reason` value), message (in words, naming field, value and line) and raw (the input row as
            JSON).
        summary: the counts.
    """

    events: pa.Table
    rejects: pd.DataFrame
    summary: ValidationSummary

    @cached_property
    def accepted(self) -> pd.DataFrame:
        """The accepted events as a pandas frame (built on first use from `events`).

        Exactly `schema.EVENT_COLUMNS` in order; strings as objects (None for null), `ts` as
        `datetime64[us, UTC]`, `value` and `quantity` as float64.
        `pa.Table.from_pandas(accepted, schema=schema.EVENT_SCHEMA)` converts it back.
        """
        data: dict[str, Any] = {}
        for f in schema.EVENT_SCHEMA:
            col = self.events.column(f.name)
            if f.name == "ts":
                data[f.name] = col.to_pandas().astype("datetime64[us, UTC]")
            else:
                data[f.name] = col.to_numpy(zero_copy_only=False)
        return pd.DataFrame(data, columns=list(schema.EVENT_COLUMNS))


class RejectRatioExceeded(Exception):
    """Too large a share of the input broke the contract; raised by `check_reject_ratio`."""

    def __init__(
        self, summary: ValidationSummary, max_ratio: float, rejects_path: Path | str | None = None
    ) -> None:
        self.summary = summary
        self.max_ratio = max_ratio
        self.ratio = summary.reject_ratio
        self.rejects_path = rejects_path
        top = list(summary.rejects_by_reason.items())[:3]
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in top)
        where = f"; rejected rows are in {rejects_path}" if rejects_path is not None else ""
        candidates = summary.rows_accepted + summary.rows_rejected
        super().__init__(
            f"{summary.source}: {summary.rows_rejected:,} of {candidates:,} rows rejected "
            f"({self.ratio:.2%}), above the limit of {max_ratio:.2%}; top reasons: {reasons}{where}"
        )


def check_reject_ratio(
    summary: ValidationSummary, max_ratio: float, *, rejects_path: Path | str | None = None
) -> None:
    """Fails when the share of rejected rows is above `max_ratio`.

    The ratio is rejected / (accepted + rejected): rows the reader skipped on purpose do not count.

    Args:
        summary: the counts of a validation.
        max_ratio: the largest acceptable ratio, between 0 and 1.
        rejects_path: where the rejects were written, named in the error message.

    Raises:
        RejectRatioExceeded: the ratio is above `max_ratio`; its message gives the ratio, the threshold,
            the top reasons and the rejects file.
    """
    if not 0.0 <= max_ratio <= 1.0:
        raise ValueError(f"max_ratio must be between 0 and 1, got {max_ratio}")
    if summary.reject_ratio > max_ratio:
        raise RejectRatioExceeded(summary, max_ratio, rejects_path)


def validate_events(
    df: pd.DataFrame,
    *,
    lines: np.ndarray | None = None,
    source: str = "input",
    tz: str | None = None,
    ts_format: str | None = None,
    ts_unit: str | None = None,
    now: pd.Timestamp | None = None,
    skipped: dict[str, int] | None = None,
    raw: pd.DataFrame | None = None,
    extra_rejects: pd.DataFrame | None = None,
) -> ValidationResult:
    """Checks candidate events against the contract and normalises the valid ones.

    Vectorised over rows (Arrow compute and numpy); only the rejected rows are visited one by one, to
    word their messages.

    Args:
        df: raw rows with the contract's column names (`schema.EVENT_COLUMNS`), values as read (strings,
            numbers, datetimes). Optional columns may be absent; other columns are ignored (they appear
            in the rejects' raw JSON only).
        lines: each row's line number in the source file, for messages; default row index + 2 (a CSV
            whose line 1 is the header).
        source: what to call the input in the summary and in errors.
        tz: time zone of timestamps written without an offset (for example "Europe/London"); UTC when
            None.
        ts_format: a `strftime` format for the ts strings, when they are not ISO 8601 or epochs.
        ts_unit: the epoch unit of numeric timestamps ("s", "ms", "us" or "ns"); guessed from the
            magnitude when None.
        now: the present, for the "not in the future" check; the current time when None.
        skipped: rows the reader left out on purpose, per cause; added to the summary's counts.
        raw: the source rows as the file holds them (its own column names), aligned with `df`, for the
            rejects' raw JSON; `df` itself when None.
        extra_rejects: reject records (`REJECT_COLUMNS`) the reader made for rows it could not parse at
            all (`malformed_row`); they join the rejects and the counts.

    Returns:
        The accepted events, the rejects and the summary.

    Raises:
        schema.EventSchemaError: a required column is absent altogether (a mapping error rather than
            bad rows).
        ValueError: `lines` or `raw` do not match the rows, or `ts_unit` is unknown.
    """
    missing_cols = [c for c in schema.REQUIRED_COLUMNS if c not in df.columns]
    if missing_cols:
        raise schema.EventSchemaError(
            f"{source}: no column for required field(s) {', '.join(missing_cols)} "
            f"(columns present: {', '.join(map(str, df.columns))})"
        )
    if ts_unit is not None and ts_unit not in _EPOCH_UNITS_US:
        raise ValueError(f"ts_unit must be one of {', '.join(_EPOCH_UNITS_US)}, got {ts_unit!r}")
    n = len(df)
    df = df.reset_index(drop=True)
    line_arr = np.arange(2, n + 2, dtype=np.int64) if lines is None else np.asarray(lines, dtype=np.int64)
    if len(line_arr) != n:
        raise ValueError(f"{source}: {len(line_arr)} line numbers for {n} rows")
    if raw is not None and len(raw) != n:
        raise ValueError(f"{source}: {len(raw)} raw rows for {n} rows")
    now_ts = pd.Timestamp.now(tz="UTC") if now is None else _as_utc(now)

    def column(name: str) -> pd.Series:
        return df[name] if name in df.columns else pd.Series(np.full(n, np.nan))

    # Normalised columns, as Arrow arrays.
    strings = {
        name: _clean_strings(df[name], lower=name in ("event_type", "channel", "message_type"))
        if name in df.columns
        else pa.nulls(n, pa.string())
        for name in schema.STRING_COLUMNS
    }
    event_type = strings["event_type"]
    has_type = _mask(pc.is_valid(event_type))
    known_type = _isin(event_type, schema.EVENT_TYPES)
    ts, ts_bad, ts_missing = _parse_ts(column("ts"), tz=tz, ts_format=ts_format, ts_unit=ts_unit)
    given_channel = strings["channel"]
    default_channel = pc.take(
        pa.array(list(schema.DEFAULT_CHANNEL.values()), pa.string()),
        pc.index_in(event_type, value_set=pa.array(list(schema.DEFAULT_CHANNEL), pa.string())),
    )
    channel = pc.coalesce(given_channel, default_channel)
    message_type = strings["message_type"]
    has_message_type = _mask(pc.is_valid(message_type))
    numbers = {name: _parse_number(column(name)) for name in schema.NUMBER_COLUMNS}
    is_refund = _mask(pc.equal(event_type, schema.EventType.REFUND.value))
    ts_out = ~ts_missing & ~ts_bad & ((ts < MIN_TS) | (ts > now_ts + MAX_FUTURE)).to_numpy()

    # Each check: (reason, field, rows that break it). Order = order of `Reason`.
    checks: list[tuple[Reason, str, np.ndarray]] = [
        (Reason.MISSING_FIELD, "customer_id", ~_mask(pc.is_valid(strings["customer_id"]))),
        (Reason.MISSING_FIELD, "ts", ts_missing),
        (Reason.MISSING_FIELD, "event_type", ~has_type),
        (Reason.UNKNOWN_EVENT_TYPE, "event_type", has_type & ~known_type),
        (Reason.TS_UNPARSEABLE, "ts", ts_bad),
        (Reason.TS_OUT_OF_RANGE, "ts", ts_out),
        (
            Reason.UNKNOWN_CHANNEL,
            "channel",
            _mask(pc.is_valid(given_channel)) & ~_isin(given_channel, schema.CHANNELS),
        ),
        (
            Reason.MISSING_ITEM_ID,
            "item_id",
            _isin(event_type, schema.PRODUCT_EVENTS) & ~_mask(pc.is_valid(strings["item_id"])),
        ),
        (
            Reason.MISSING_MESSAGE_TYPE,
            "message_type",
            _isin(event_type, schema.SENT_MESSAGE_EVENTS) & ~has_message_type,
        ),
        (
            Reason.UNKNOWN_MESSAGE_TYPE,
            "message_type",
            has_message_type & ~_isin(message_type, schema.ACTIONS),
        ),
    ]
    checks += [(Reason.NON_NUMERIC, name, numbers[name].non_numeric) for name in schema.NUMBER_COLUMNS]
    checks += [(Reason.NON_FINITE, name, numbers[name].non_finite) for name in schema.NUMBER_COLUMNS]
    checks += [
        (Reason.NEGATIVE_VALUE, name, (numbers[name].values < 0) & ~is_refund)
        for name in schema.NUMBER_COLUMNS
    ]
    bad = np.zeros(n, dtype=bool)
    for _, _, mask in checks:
        bad |= mask
    # Duplicates only among rows that are otherwise valid, so that the first valid copy is kept.
    event_id = strings["event_id"].to_numpy(zero_copy_only=False)
    dup = np.zeros(n, dtype=bool)
    candidates = ~bad & _mask(pc.is_valid(strings["event_id"]))
    if candidates.any():
        dup[candidates] = pd.Series(event_id[candidates]).duplicated(keep="first").to_numpy()
    checks.append((Reason.DUPLICATE_EVENT_ID, "event_id", dup))
    bad |= dup

    keep = pa.array(~bad)
    columns = {
        **strings,
        "ts": pa.array(ts, type=schema.TS_TYPE),
        "channel": channel,
        "value": pa.array(numbers["value"].values, pa.float64(), from_pandas=True),
        "quantity": pa.array(numbers["quantity"].values, pa.float64(), from_pandas=True),
    }
    events = pa.Table.from_arrays(
        [pc.filter(columns[f.name], keep).cast(f.type) for f in schema.EVENT_SCHEMA],
        schema=schema.EVENT_SCHEMA,
    )

    rejects = _reject_records(
        df,
        df if raw is None else raw,
        bad,
        checks,
        line_arr,
        ts,
        event_type.to_numpy(zero_copy_only=False),
        event_id,
        now_ts,
        f"format {ts_format!r}" if ts_format else "ISO 8601 or epoch seconds / milliseconds",
    )
    if extra_rejects is not None and len(extra_rejects):
        extra = extra_rejects[list(REJECT_COLUMNS)]
        rejects = pd.concat([extra, rejects], ignore_index=True) if len(rejects) else extra.copy()
        rejects = rejects.sort_values("line", kind="stable").reset_index(drop=True)
        rejects["line"] = rejects["line"].astype(np.int64)
    skipped = dict(skipped or {})
    by_reason = rejects["reason"].value_counts().to_dict() if len(rejects) else {}
    has_rows = events.num_rows > 0
    summary = ValidationSummary(
        source=source,
        rows_read=n + sum(skipped.values()) + (0 if extra_rejects is None else len(extra_rejects)),
        rows_accepted=events.num_rows,
        rows_rejected=len(rejects),
        rejects_by_reason={str(k): int(v) for k, v in by_reason.items()},
        skipped=skipped,
        ts_min=_iso(pc.min(events.column("ts"))) if has_rows else None,
        ts_max=_iso(pc.max(events.column("ts"))) if has_rows else None,
        customers=pc.count_distinct(events.column("customer_id")).as_py(),
    )
    return ValidationResult(events=events, rejects=rejects, summary=summary)


def _iso(scalar: pa.TimestampScalar) -> str:
    return pd.Timestamp(scalar.value, unit="us", tz="UTC").isoformat()


# --- normalisation ---------------------------------------------------------------------------------


@dataclass
class _Numbers:
    values: np.ndarray  # float64, NaN where missing or bad
    non_numeric: np.ndarray  # bool
    non_finite: np.ndarray  # bool


def _as_utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow boolean array as a numpy mask, null as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def _isin(arr: pa.Array, values: Iterable[str]) -> np.ndarray:
    return _mask(pc.is_in(arr, value_set=pa.array(sorted(str(v) for v in values), pa.string())))


def _to_arrow_text(s: pd.Series) -> pa.Array:
    """Values as an Arrow string array (null for missing); integral floats lose their ".0"."""
    if isinstance(s.dtype, pd.ArrowDtype | pd.StringDtype):
        arr = pa.array(s.array)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return arr.cast(pa.string())
    if pd.api.types.is_float_dtype(s.dtype):
        x = s.to_numpy(dtype=np.float64, na_value=np.nan)
        finite = np.isfinite(x)
        integral = finite & (x == np.round(x)) & (np.abs(x) < 2**63)
        text = np.full(len(x), None, dtype=object)
        text[integral] = x[integral].astype(np.int64).astype(str)
        text[finite & ~integral] = x[finite & ~integral].astype(str)
        text[np.isinf(x)] = x[np.isinf(x)].astype(str)
        return pa.array(text, pa.string())
    values = s.to_numpy(dtype=object, copy=True)
    given = s.notna().to_numpy()
    values[~given] = None
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        # Numbers, booleans, datetimes or a mix of them (as JSON gives): one string each.
        values[given] = values[given].astype(str)
    return pa.array(values, pa.string(), from_pandas=True)


def _clean_strings(s: pd.Series, *, lower: bool = False) -> pa.Array:
    """Stripped strings, optionally lower-cased; empty strings become null."""
    arr = pc.utf8_trim_whitespace(_to_arrow_text(s))
    if lower:
        arr = pc.utf8_lower(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _parse_number(s: pd.Series) -> _Numbers:
    """Floats (NaN where missing or bad), with the non-numeric and the non-finite masks."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        non_finite = np.isinf(values)
        return _Numbers(np.where(non_finite, np.nan, values), np.zeros(len(s), dtype=bool), non_finite)
    text = _clean_strings(s)
    given = _mask(pc.is_valid(text))
    ok = _mask(pc.match_substring_regex(text, _NUMBER))
    non_finite = _mask(pc.match_substring_regex(text, _NAN_TEXT))
    values = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())), pa.float64())
    values_np = values.to_numpy(zero_copy_only=False)
    return _Numbers(values_np, given & ~ok & ~non_finite, non_finite)


def _epoch_to_ts(x: np.ndarray, ts_unit: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers to UTC microseconds (datetime64[us]); the mask says which could not be read."""
    if ts_unit is not None:
        us = x * _EPOCH_UNITS_US[ts_unit]
    else:
        mag = np.abs(x)
        factor = np.select([mag < 1e11, mag < 1e14, mag < 1e17], [1e6, 1e3, 1.0], default=1e-3)
        us = x * factor
    ok = np.isfinite(us) & (np.abs(np.nan_to_num(us)) < _MAX_ABS_US)
    ints = np.round(np.where(ok, us, 0.0)).astype(np.int64)
    out = ints.astype("datetime64[us]")
    out[~ok] = np.datetime64("NaT")
    return out, ~ok


def _localize(ts: pd.Series, tz: str | None) -> pd.Series:
    """Naive datetimes, read as wall-clock time in `tz` (UTC when None), to UTC."""
    if tz is None:
        return ts.dt.tz_localize("UTC")
    # An ambiguous wall time (clocks go back) is read as its first occurrence, which is the DST one.
    first = np.ones(len(ts), dtype=bool)
    return ts.dt.tz_localize(tz, ambiguous=first, nonexistent="shift_forward").dt.tz_convert("UTC")


def _utc_us(values: np.ndarray) -> pd.Series:
    """UTC instants as datetime64[us] values to a `datetime64[us, UTC]` series."""
    return pd.Series(values.astype("datetime64[us]")).dt.tz_localize("UTC")


def _parse_ts(
    raw: pd.Series, *, tz: str | None, ts_format: str | None, ts_unit: str | None
) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Timestamps of any supported form to `datetime64[us, UTC]`.

    Returns:
        The instants (NaT where missing or unreadable), the mask of unreadable ones and the mask of
        missing ones (null or blank).
    """
    raw = raw.reset_index(drop=True)
    n = len(raw)
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        ts = raw.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
        return ts, np.zeros(n, dtype=bool), ts.isna().to_numpy()
    if pd.api.types.is_datetime64_dtype(raw.dtype):
        ts = _localize(raw, tz).astype("datetime64[us, UTC]")
        return ts, np.zeros(n, dtype=bool), ts.isna().to_numpy()
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        missing = raw.isna().to_numpy()
        values, bad = _epoch_to_ts(raw.to_numpy(dtype=np.float64, na_value=np.nan), ts_unit)
        return _utc_us(values), bad & ~missing, missing

    text = _clean_strings(raw)
    missing = ~_mask(pc.is_valid(text))
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    if ts_format is not None:
        has_zone = any(code in ts_format for code in ("%z", "%Z"))
        parsed = pd.to_datetime(
            pd.Series(text.to_numpy(zero_copy_only=False)), format=ts_format, errors="coerce", utc=has_zone
        )
        out = _naive_utc(parsed if has_zone else _localize(parsed, tz))
    else:
        numeric = _mask(pc.match_substring_regex(text, _DIGITS))
        if numeric.any():
            x = pc.cast(text.filter(pa.array(numeric)), pa.float64()).to_numpy(zero_copy_only=False)
            out[numeric], _ = _epoch_to_ts(x, ts_unit)
        rest = ~missing & ~numeric
        if rest.any():
            iso = pc.replace_substring_regex(text.filter(pa.array(rest)), _TZ_SUFFIX, "+00:00")
            iso = pc.replace_substring_regex(iso, _SPACED_OFFSET, r"\1")
            aware = _mask(pc.match_substring_regex(iso, _HAS_OFFSET))
            # The two kinds parse apart: in one call, pandas carries an offset over to the naive
            # strings that follow it.
            strings = pd.Series(iso.to_numpy(zero_copy_only=False))
            values = np.full(len(strings), np.datetime64("NaT"), dtype="datetime64[us]")
            if aware.any():
                parsed = pd.to_datetime(strings[aware], format="ISO8601", utc=True, errors="coerce")
                values[aware] = _naive_utc(parsed)
            if (~aware).any():
                values[~aware] = _parse_naive(strings[~aware], tz)
            out[rest] = values
    ts = _utc_us(out)
    return ts, ts.isna().to_numpy() & ~missing, missing


def _parse_naive(strings: pd.Series, tz: str | None) -> np.ndarray:
    """ISO 8601 strings without an offset, as wall time in `tz`, to naive UTC datetime64[us] values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "mixed time zones", handled below
        parsed = pd.to_datetime(strings, format="ISO8601", errors="coerce")
    if isinstance(parsed.dtype, np.dtype) and parsed.dtype.kind == "M":
        return _naive_utc(_localize(parsed, tz))
    # Some strings carried an offset that the pattern did not see (such as "T11+01"): pandas gave
    # Python objects. Rare, so this goes element by element.
    has_zone = np.array([getattr(x, "tzinfo", None) is not None for x in parsed], dtype=bool)
    out = np.full(len(strings), np.datetime64("NaT"), dtype="datetime64[us]")
    zoned = pd.to_datetime(strings[has_zone], format="ISO8601", utc=True, errors="coerce")
    out[has_zone] = _naive_utc(zoned)
    if (~has_zone).any():
        out[~has_zone] = _parse_naive(strings[~has_zone], tz)
    return out


def _naive_utc(ts: pd.Series) -> np.ndarray:
    """A tz-aware series as naive UTC datetime64[us] values."""
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


# --- rejects -----------------------------------------------------------------------------------------


def _reject_records(
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
        return _empty_rejects()
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


def _empty_rejects() -> pd.DataFrame:
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
