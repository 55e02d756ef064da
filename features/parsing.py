"""Text, number and time parsing of raw event values, vectorised with Arrow compute, numpy and pandas.

What `features.validate.validate_events` reads values with: strings trimmed (empty as null), numbers with
their non-numeric and non-finite masks, and timestamps of every supported form (ISO 8601 with or without an
offset, epochs in any unit, a `strftime` format) as UTC instants. The rules about which values are
acceptable live in the validator; these functions only say what a value is.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "EPOCH_UNITS_US",
    "NUMBER",
    "Numbers",
    "as_utc",
    "clean_strings",
    "isin",
    "parse_number",
    "parse_ts",
    "to_mask",
]

# Epoch units and their length in microseconds.
EPOCH_UNITS_US: dict[str, float] = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}
# datetime64[us] holds +-2.9e5 years; anything this far from 1970 is implausible anyway.
_MAX_ABS_US = 1e17
# Arrow compute regexes (RE2): match_substring_regex finds a match anywhere, hence the anchors.
_DIGITS = r"^[+-]?\d+(?:\.\d+)?$"
NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_TZ_SUFFIX = r"(?i)\s*(?:Z|UTC|GMT)$"
_SPACED_OFFSET = r"\s+([+-]\d{2}(?::?\d{2})?)$"
_HAS_OFFSET = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?[+-]\d{2}(?::?\d{2})?$"
_NAN_TEXT = r"(?i)^[+-]?(?:nan|inf|infinity)$"


@dataclass
class Numbers:
    """Numbers as read from raw values, with the masks of the ones that are not numbers or not finite."""

    values: np.ndarray  # float64, NaN where missing or bad
    non_numeric: np.ndarray  # bool
    non_finite: np.ndarray  # bool


def as_utc(ts: pd.Timestamp) -> pd.Timestamp:
    """A timestamp in UTC; a naive one is read as UTC."""
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An Arrow boolean array as a numpy mask, null as False."""
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


def isin(arr: pa.Array, values: Iterable[str]) -> np.ndarray:
    """Whether each string of `arr` is one of `values`, as a numpy mask (null as False)."""
    return to_mask(pc.is_in(arr, value_set=pa.array(sorted(str(v) for v in values), pa.string())))


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


def clean_strings(s: pd.Series, *, lower: bool = False) -> pa.Array:
    """Stripped strings, optionally lower-cased; empty strings become null."""
    arr = pc.utf8_trim_whitespace(_to_arrow_text(s))
    if lower:
        arr = pc.utf8_lower(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def parse_number(s: pd.Series) -> Numbers:
    """Floats (NaN where missing or bad), with the non-numeric and the non-finite masks."""
    if pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64, na_value=np.nan)
        non_finite = np.isinf(values)
        return Numbers(np.where(non_finite, np.nan, values), np.zeros(len(s), dtype=bool), non_finite)
    text = clean_strings(s)
    given = to_mask(pc.is_valid(text))
    ok = to_mask(pc.match_substring_regex(text, NUMBER))
    non_finite = to_mask(pc.match_substring_regex(text, _NAN_TEXT))
    values = pc.cast(pc.if_else(pa.array(ok), text, pa.scalar(None, pa.string())), pa.float64())
    values_np = values.to_numpy(zero_copy_only=False)
    return Numbers(values_np, given & ~ok & ~non_finite, non_finite)


def _epoch_to_ts(x: np.ndarray, ts_unit: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Epoch numbers to UTC microseconds (datetime64[us]); the mask says which could not be read."""
    if ts_unit is not None:
        us = x * EPOCH_UNITS_US[ts_unit]
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


def parse_ts(
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

    text = clean_strings(raw)
    missing = ~to_mask(pc.is_valid(text))
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    if ts_format is not None:
        has_zone = any(code in ts_format for code in ("%z", "%Z"))
        parsed = pd.to_datetime(
            pd.Series(text.to_numpy(zero_copy_only=False)), format=ts_format, errors="coerce", utc=has_zone
        )
        out = _naive_utc(parsed if has_zone else _localize(parsed, tz))
    else:
        numeric = to_mask(pc.match_substring_regex(text, _DIGITS))
        if numeric.any():
            x = pc.cast(text.filter(pa.array(numeric)), pa.float64()).to_numpy(zero_copy_only=False)
            out[numeric], _ = _epoch_to_ts(x, ts_unit)
        rest = ~missing & ~numeric
        if rest.any():
            iso = pc.replace_substring_regex(text.filter(pa.array(rest)), _TZ_SUFFIX, "+00:00")
            iso = pc.replace_substring_regex(iso, _SPACED_OFFSET, r"\1")
            aware = to_mask(pc.match_substring_regex(iso, _HAS_OFFSET))
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
