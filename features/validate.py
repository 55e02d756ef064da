"""The one validator of raw events, used by every reader: `features.sources`, the simulator, the API.

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

The reason codes and their messages in words are in `features.rejects`; reading text, numbers and times
is `features.parsing`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import schema
from features.parsing import EPOCH_UNITS_US, as_utc, clean_strings, isin, parse_number, parse_ts, to_mask
from features.rejects import MAX_FUTURE, MIN_TS, REJECT_COLUMNS, Reason, reject_records

__all__ = [
    "RejectRatioExceeded",
    "ValidationResult",
    "ValidationSummary",
    "check_reject_ratio",
    "validate_events",
]


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
    if ts_unit is not None and ts_unit not in EPOCH_UNITS_US:
        raise ValueError(f"ts_unit must be one of {', '.join(EPOCH_UNITS_US)}, got {ts_unit!r}")
    n = len(df)
    df = df.reset_index(drop=True)
    line_arr = np.arange(2, n + 2, dtype=np.int64) if lines is None else np.asarray(lines, dtype=np.int64)
    if len(line_arr) != n:
        raise ValueError(f"{source}: {len(line_arr)} line numbers for {n} rows")
    if raw is not None and len(raw) != n:
        raise ValueError(f"{source}: {len(raw)} raw rows for {n} rows")
    now_ts = pd.Timestamp.now(tz="UTC") if now is None else as_utc(now)

    def column(name: str) -> pd.Series:
        return df[name] if name in df.columns else pd.Series(np.full(n, np.nan))

    # Normalised columns, as Arrow arrays.
    strings = {
        name: clean_strings(df[name], lower=name in ("event_type", "channel", "message_type"))
        if name in df.columns
        else pa.nulls(n, pa.string())
        for name in schema.STRING_COLUMNS
    }
    event_type = strings["event_type"]
    has_type = to_mask(pc.is_valid(event_type))
    known_type = isin(event_type, schema.EVENT_TYPES)
    ts, ts_bad, ts_missing = parse_ts(column("ts"), tz=tz, ts_format=ts_format, ts_unit=ts_unit)
    given_channel = strings["channel"]
    default_channel = pc.take(
        pa.array(list(schema.DEFAULT_CHANNEL.values()), pa.string()),
        pc.index_in(event_type, value_set=pa.array(list(schema.DEFAULT_CHANNEL), pa.string())),
    )
    channel = pc.coalesce(given_channel, default_channel)
    message_type = strings["message_type"]
    has_message_type = to_mask(pc.is_valid(message_type))
    numbers = {name: parse_number(column(name)) for name in schema.NUMBER_COLUMNS}
    is_refund = to_mask(pc.equal(event_type, schema.EventType.REFUND.value))
    ts_out = ~ts_missing & ~ts_bad & ((ts < MIN_TS) | (ts > now_ts + MAX_FUTURE)).to_numpy()

    # Each check: (reason, field, rows that break it). Order = order of `Reason`.
    checks: list[tuple[Reason, str, np.ndarray]] = [
        (Reason.MISSING_FIELD, "customer_id", ~to_mask(pc.is_valid(strings["customer_id"]))),
        (Reason.MISSING_FIELD, "ts", ts_missing),
        (Reason.MISSING_FIELD, "event_type", ~has_type),
        (Reason.UNKNOWN_EVENT_TYPE, "event_type", has_type & ~known_type),
        (Reason.TS_UNPARSEABLE, "ts", ts_bad),
        (Reason.TS_OUT_OF_RANGE, "ts", ts_out),
        (
            Reason.UNKNOWN_CHANNEL,
            "channel",
            to_mask(pc.is_valid(given_channel)) & ~isin(given_channel, schema.CHANNELS),
        ),
        (
            Reason.MISSING_ITEM_ID,
            "item_id",
            isin(event_type, schema.PRODUCT_EVENTS) & ~to_mask(pc.is_valid(strings["item_id"])),
        ),
        (
            Reason.MISSING_MESSAGE_TYPE,
            "message_type",
            isin(event_type, schema.SENT_MESSAGE_EVENTS) & ~has_message_type,
        ),
        (
            Reason.UNKNOWN_MESSAGE_TYPE,
            "message_type",
            has_message_type & ~isin(message_type, schema.ACTIONS),
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
    candidates = ~bad & to_mask(pc.is_valid(strings["event_id"]))
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

    rejects = reject_records(
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
