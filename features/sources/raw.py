"""What every reader returns (`RawEvents`), its way into the validator, and the Arrow helpers they share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.validate import ValidationResult, validate_events

_NULL_STR = pa.scalar(None, pa.string())


class SourceFormatError(ValueError):
    """A source file lacks a column its reader needs, or cannot be read as that kind of file."""


@dataclass
class RawEvents:
    """Candidate events as a reader made them, before validation.

    Attributes:
        source: what to call the input in summaries and messages.
        frame: candidate rows under contract column names (a subset of `schema.EVENT_COLUMNS`).
        lines: each row's line in the file (1-based, header = line 1).
        raw: the source rows as the file holds them, aligned with `frame`, for the rejects' raw JSON.
        skipped: rows left out on purpose, per cause.
        malformed: reject records (`features.rejects.REJECT_COLUMNS`) of rows that could not be parsed at all.
        tz: time zone of timestamps written without an offset (None: UTC).
        ts_format: `strftime` format of the timestamps, when not ISO 8601 or epochs.
        ts_unit: epoch unit of numeric timestamps, when known.
    """

    source: str
    frame: pd.DataFrame
    lines: np.ndarray
    raw: pd.DataFrame | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    malformed: pd.DataFrame | None = None
    tz: str | None = None
    ts_format: str | None = None
    ts_unit: str | None = None


def validate_raw(
    raw: RawEvents, *, tz: str | None = None, now: pd.Timestamp | None = None
) -> ValidationResult:
    """Runs a reader's rows through `validate_events`.

    Args:
        raw: what a reader returned.
        tz: overrides the reader's time zone for timestamps without an offset.
        now: the present for the "not in the future" check (default: the current time).

    Returns:
        The validation result; its summary counts the reader's skipped and malformed rows too.
    """
    return validate_events(
        raw.frame,
        lines=raw.lines,
        source=raw.source,
        tz=tz if tz is not None else raw.tz,
        ts_format=raw.ts_format,
        ts_unit=raw.ts_unit,
        now=now,
        skipped=raw.skipped,
        raw=raw.raw,
        extra_rejects=raw.malformed,
    )


# --- helpers on Arrow string columns ------------------------------------------------------------------


def _strip(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Trimmed strings, empty as null."""
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), _NULL_STR, arr)


def _map_values(arr: pa.ChunkedArray | pa.Array, mapping: Mapping[str, str]) -> pa.ChunkedArray | pa.Array:
    """Replaces the values found in `mapping`; others pass through unchanged (the validator judges them)."""
    if not mapping:
        return arr
    keys = pa.array([str(k) for k in mapping], pa.string())
    values = pa.array([str(v) for v in mapping.values()], pa.string())
    return pc.coalesce(pc.take(values, pc.index_in(arr, value_set=keys)), arr)


def _join(*parts: pa.ChunkedArray | pa.Array, sep: str = ":") -> pa.ChunkedArray | pa.Array:
    """Element-wise join; null where any part is null."""
    return pc.binary_join_element_wise(*parts, sep)


def _drop_float_suffix(arr: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    """Ids written as floats ("17850.0") back to their integer text."""
    return pc.replace_substring_regex(arr, r"^(\d+)\.0+$", r"\1")


def _frame(columns: Mapping[str, pa.ChunkedArray | pa.Array]) -> pd.DataFrame:
    """Arrow columns to a frame of Arrow-backed columns (no copy into Python objects)."""
    return pd.DataFrame(
        {name: pd.Series(pd.arrays.ArrowExtensionArray(_chunked(col))) for name, col in columns.items()}
    )


def _chunked(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    return col if isinstance(col, pa.ChunkedArray) else pa.chunked_array([col])


def _raw_frame(table: pa.Table) -> pd.DataFrame:
    return _frame({name: table.column(name) for name in table.column_names})
