"""Readers of real event sources: each maps one source's columns onto the event contract.

A reader returns `RawEvents`: candidate rows under the contract's column names, each row's line in the
file, the source rows themselves (for the rejects file) and counters of rows left out on purpose.
`validate_raw` then runs them through the one validator, `features.validate.validate_events`. Readers
decide only what the source means; every rule of the contract is checked there.

Line numbers are physical lines of the file (header = line 1), for gzip files too: quoted fields that
span lines are counted, blank lines are counted and skipped (`skipped["blank_line"]`), and rows with the
wrong number of fields are rejected as `malformed_row` at their own line.

Sources and the decisions taken for each (see also `features.ingest`):

- RetailRocket (`read_retailrocket`): view / addtocart / transaction -> product_view / add_to_cart /
  purchase; the timestamp is epoch milliseconds; `transactionid` (written like 14418.0) becomes
  `session_id`, since it groups the items of one transaction and so is not unique per row. The file has
  no event id: `event_id` is visitor:timestamp:event:item, so an exact repeat of a row is rejected as
  `duplicate_event_id` (the sample has one such row).
- REES46 (`read_rees46`): view / cart / remove_from_cart / purchase -> product_view / add_to_cart /
  remove_from_cart / purchase; `category` is `category_code` when present, else `category_id`;
  `value` is the price, `session_id` the user session; `event_id` is session:time:event:product.
- UCI Online Retail (`read_online_retail`), invoice lines, UK local time (Europe/London). Rows are left
  out, and counted, in this order: a stock code that is not a product (`non_product:<CODE>`, products
  being 5 digits plus optional letters, or DCGS codes), a line without a customer (`guest_line`: a
  guest checkout cannot be attributed to anyone), a line with a negative quantity on an invoice that is
  not a cancellation (`stock_adjustment`: stock write-offs, not a customer's refund). The rest: invoices
  starting with C are `refund` (value and quantity as absolute amounts), others `purchase` with
  value = Quantity x UnitPrice. Stock codes are upper-cased (15056bl and 15056BL are one product);
  `session_id` is the invoice and `event_id` is invoice:position of the line in the invoice, so
  re-ingesting is idempotent and repeated identical lines of one invoice stay separate lines.
- Generic CSV / Parquet (`read_generic`) with a `ColumnMapping` (columns, constants, value maps, ts
  format / unit / time zone; from YAML or `field=column` pairs); without one, columns named like
  contract fields feed those fields. Parquet rows have no lines: the number reported is the row number
  (1-based).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv
import pyarrow.parquet as pq
import yaml

from features import schema
from features.validate import REJECT_COLUMNS, Reason, ValidationResult, validate_events

__all__ = [
    "ColumnMapping",
    "MappingError",
    "RawEvents",
    "SourceFormatError",
    "read_csv_header",
    "read_csv_rows",
    "read_generic",
    "read_online_retail",
    "read_rees46",
    "read_retailrocket",
    "validate_raw",
]

_EPOCH_UNITS = ("s", "ms", "us", "ns")
_NULL_STR = pa.scalar(None, pa.string())


class SourceFormatError(ValueError):
    """A source file lacks a column its reader needs, or cannot be read as that kind of file."""


class MappingError(ValueError):
    """A column mapping names an unknown contract field, or is otherwise unusable."""


@dataclass
class RawEvents:
    """Candidate events as a reader made them, before validation.

    Attributes:
        source: what to call the input in summaries and messages.
        frame: candidate rows under contract column names (a subset of `schema.EVENT_COLUMNS`).
        lines: each row's line in the file (1-based, header = line 1).
        raw: the source rows as the file holds them, aligned with `frame`, for the rejects' raw JSON.
        skipped: rows left out on purpose, per cause.
        malformed: reject records (`validate.REJECT_COLUMNS`) of rows that could not be parsed at all.
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


# --- reading CSV with exact line numbers ----------------------------------------------------------------


@dataclass
class CsvRows:
    """The rows of a CSV file, all as strings, with their physical line numbers.

    Attributes:
        table: one string column per header name; blank lines and malformed rows removed.
        lines: the line of each row of `table` (its first line when a quoted field spans lines).
        blank_lines: how many blank lines were removed.
        malformed: reject records of rows with the wrong number of fields.
    """

    table: pa.Table
    lines: np.ndarray
    blank_lines: int
    malformed: pd.DataFrame


def read_csv_header(path: Path) -> list[str]:
    """The column names on the first line of a CSV file (gzip or plain, UTF-8).

    Raises:
        SourceFormatError: the file is empty, not UTF-8, or not the gzip its name says.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            first = f.readline().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceFormatError(f"{path}: cannot read the header line: {exc}") from exc
    header = next(csv.reader([first]), None)
    if not header:
        raise SourceFormatError(f"{path}: empty file, expected a header line")
    return [h.strip() for h in header]


def read_csv_rows(path: Path, *, required: Sequence[str] = (), source: str | None = None) -> CsvRows:
    """Reads a CSV file (plain or .gz) with every column as a string and each row's line number.

    Args:
        path: the file; line 1 must be the header.
        required: columns the caller needs; their absence raises.
        source: what to call the file in messages (default: its path).

    Returns:
        The rows, their lines, the count of blank lines and the malformed rows as reject records.

    Raises:
        SourceFormatError: a required column is missing, or the file cannot be parsed as CSV.
    """
    path = Path(path)
    name = source or str(path)
    header = read_csv_header(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise SourceFormatError(
            f"{name}: column(s) {', '.join(missing)} not found in the header (columns: {', '.join(header)})"
        )
    invalid: list[tuple[str, int]] = []

    def on_invalid(row: Any) -> str:
        invalid.append((row.text, row.actual_columns))
        return "skip"

    try:
        table = pv.read_csv(
            path,
            read_options=pv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pv.ParseOptions(
                newlines_in_values=True, ignore_empty_lines=False, invalid_row_handler=on_invalid
            ),
            convert_options=pv.ConvertOptions(
                column_types=dict.fromkeys(header, pa.string()),
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise SourceFormatError(f"{name}: cannot be read as CSV: {exc}") from exc
    n = table.num_rows
    # Lines spanned by each row: 1 plus the newlines inside its quoted fields.
    height = np.ones(n, dtype=np.int64)
    for col in table.columns:
        height += pc.fill_null(pc.count_substring(col, "\n"), 0).to_numpy(zero_copy_only=False)
    lines = 2 + np.concatenate([[0], np.cumsum(height)[:-1]]).astype(np.int64) if n else np.zeros(0, np.int64)
    malformed = _malformed_records(path, invalid, len(header), name)
    if len(malformed):
        lines = _shift_for_malformed(lines, malformed)
    # A blank line reads as a row of empty fields (one field when the header has one column).
    blank = np.ones(n, dtype=bool)
    for col in table.columns:
        blank &= _np_mask(pc.equal(col, ""))
    if blank.any():
        table = table.filter(pa.array(~blank))
        lines = lines[~blank]
    return CsvRows(table=table, lines=lines, blank_lines=int(blank.sum()), malformed=malformed)


def _malformed_records(path: Path, invalid: list[tuple[str, int]], expected: int, name: str) -> pd.DataFrame:
    """Reject records of rows the CSV parser could not split into the header's columns.

    The parser does not report their line, so each is found by its text in the file (a second read,
    only when there are such rows); a row whose text cannot be found gets line 0.
    """
    if not invalid:
        return pd.DataFrame({c: pd.Series(dtype=np.int64 if c == "line" else object) for c in REJECT_COLUMNS})
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    cursor: dict[bytes, int] = {}
    records = []
    for text, actual in invalid:
        needle = b"\n" + text.encode("utf-8")
        pos = cursor.get(needle, 0)
        line = 0
        while (pos := data.find(needle, pos)) >= 0:
            end = pos + len(needle)
            if end == len(data) or data[end : end + 1] in (b"\n", b"\r"):
                line = data.count(b"\n", 0, pos + 1) + 1
                cursor[needle] = end
                break
            pos += 1
        where = f"line {line}" if line else "line unknown"
        records.append(
            {
                "line": line,
                "field": "",
                "reason": Reason.MALFORMED_ROW.value,
                "message": f"{where}: {actual} fields where the header has {expected}",
                "raw": text,
            }
        )
    return pd.DataFrame(records, columns=list(REJECT_COLUMNS)).sort_values("line", kind="stable")


def _shift_for_malformed(lines: np.ndarray, malformed: pd.DataFrame) -> np.ndarray:
    """Moves the lines of the parsed rows past the malformed rows interleaved with them."""
    found = malformed[malformed["line"] > 0]
    if found.empty:
        return lines
    bad_lines = found["line"].to_numpy(dtype=np.int64)
    heights = 1 + found["raw"].str.count("\n").to_numpy(dtype=np.int64)
    # Where each malformed row sits in the numbering of the parsed rows alone.
    before = np.concatenate([[0], np.cumsum(heights)[:-1]])
    slots = bad_lines - before
    shift = np.concatenate([[0], np.cumsum(heights)])
    return lines + shift[np.searchsorted(slots, lines, side="right")]


# --- helpers on Arrow string columns ------------------------------------------------------------------


def _np_mask(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(arr, False).to_numpy(zero_copy_only=False), dtype=bool)


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


def _raw_events(
    source: str,
    rows: CsvRows,
    columns: Mapping[str, pa.ChunkedArray | pa.Array],
    *,
    keep: np.ndarray | None = None,
    skipped: dict[str, int] | None = None,
    tz: str | None = None,
    ts_unit: str | None = None,
    ts_format: str | None = None,
) -> RawEvents:
    table = rows.table
    lines = rows.lines
    if keep is not None:
        mask = pa.array(keep)
        columns = {k: v.filter(mask) for k, v in columns.items()}
        table = table.filter(mask)
        lines = lines[keep]
    counters = dict(skipped or {})
    if rows.blank_lines:
        counters["blank_line"] = rows.blank_lines
    return RawEvents(
        source=source,
        frame=_frame(columns),
        lines=lines,
        raw=_raw_frame(table),
        skipped=counters,
        malformed=rows.malformed,
        tz=tz,
        ts_unit=ts_unit,
        ts_format=ts_format,
    )


# --- RetailRocket ----------------------------------------------------------------------------------


RETAILROCKET_EVENTS: dict[str, str] = {
    "view": schema.EventType.PRODUCT_VIEW,
    "addtocart": schema.EventType.ADD_TO_CART,
    "transaction": schema.EventType.PURCHASE,
}


def read_retailrocket(path: Path | str) -> RawEvents:
    """Reads RetailRocket's `events.csv` (timestamp, visitorid, event, itemid, transactionid).

    Args:
        path: the CSV file (plain or .gz).

    Returns:
        Candidate events: product_view, add_to_cart and purchase; ts in epoch milliseconds.

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    rows = read_csv_rows(
        path, required=("timestamp", "visitorid", "event", "itemid", "transactionid"), source="retailrocket"
    )
    t = rows.table
    timestamp, visitor, event, item = (
        _strip(t.column(c)) for c in ("timestamp", "visitorid", "event", "itemid")
    )
    columns = {
        "customer_id": visitor,
        "ts": timestamp,
        "event_type": _map_values(pc.utf8_lower(event), RETAILROCKET_EVENTS),
        "item_id": item,
        "session_id": _drop_float_suffix(_strip(t.column("transactionid"))),
        "event_id": _join(visitor, timestamp, event, item),
    }
    return _raw_events("retailrocket", rows, columns, ts_unit="ms")


# --- REES46 ----------------------------------------------------------------------------------------


REES46_EVENTS: dict[str, str] = {
    "view": schema.EventType.PRODUCT_VIEW,
    "cart": schema.EventType.ADD_TO_CART,
    "remove_from_cart": schema.EventType.REMOVE_FROM_CART,
    "purchase": schema.EventType.PURCHASE,
}


def read_rees46(path: Path | str) -> RawEvents:
    """Reads a REES46 "eCommerce behavior data" monthly CSV.

    Args:
        path: the CSV file (plain or .gz) with event_time, event_type, product_id, category_id,
            category_code, brand, price, user_id, user_session.

    Returns:
        Candidate events: product_view, add_to_cart, remove_from_cart and purchase, value = price.

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    needed = ("event_time", "event_type", "product_id", "category_id", "category_code", "price", "user_id")
    rows = read_csv_rows(path, required=(*needed, "user_session"), source="rees46")
    t = rows.table
    ts, event, product, session = (
        _strip(t.column(c)) for c in ("event_time", "event_type", "product_id", "user_session")
    )
    columns = {
        "customer_id": _strip(t.column("user_id")),
        "ts": ts,
        "event_type": _map_values(pc.utf8_lower(event), REES46_EVENTS),
        "item_id": product,
        "category": pc.coalesce(_strip(t.column("category_code")), _strip(t.column("category_id"))),
        "value": _strip(t.column("price")),
        "session_id": session,
        "event_id": _join(session, ts, event, product),
    }
    return _raw_events("rees46", rows, columns)


# --- UCI Online Retail -----------------------------------------------------------------------------


ONLINE_RETAIL_TZ = "Europe/London"
# Products: 5 digits and optional letters (85123A), or the DCGS codes (e.g. DCGSSGIRL "GIRLS PARTY BAG").
# Everything else is postage, fees, discounts, manual entries, samples, vouchers: POST, DOT, M, C2, D, S,
# B, BANK CHARGES, AMAZONFEE, CRUK, PADS, gift_0001_20, ...
_PRODUCT_CODE = r"^(?:\d{5}[A-Za-z]*|DCGS\w+)$"
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"


def read_online_retail(path: Path | str) -> RawEvents:
    """Reads UCI Online Retail invoice lines (InvoiceNo, StockCode, Quantity, InvoiceDate, UnitPrice, ...).

    Args:
        path: the CSV file (plain or .gz).

    Returns:
        Candidate purchase and refund events (UK local time, converted by the validator); rows left out
        on purpose are counted in `skipped` (see the module docstring for the rules).

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    needed = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
    rows = read_csv_rows(path, required=needed, source="online_retail")
    t = rows.table
    invoice = _strip(t.column("InvoiceNo"))
    code = _strip(t.column("StockCode"))
    customer = _drop_float_suffix(_strip(t.column("CustomerID")))
    quantity_text = _strip(t.column("Quantity"))
    price_text = _strip(t.column("UnitPrice"))

    q_ok = _np_mask(pc.match_substring_regex(quantity_text, _NUMBER))
    p_ok = _np_mask(pc.match_substring_regex(price_text, _NUMBER))
    q = _to_float(quantity_text, q_ok)
    p = _to_float(price_text, p_ok)
    refund = _np_mask(pc.starts_with(invoice, "C"))

    # Position of each line within its invoice, over all lines (skipped ones too) so that ids are stable.
    inv = pd.Series(invoice.to_numpy(zero_copy_only=False))
    position = (inv.groupby(inv, dropna=False, sort=False).cumcount() + 1).to_numpy()

    non_product = ~_np_mask(pc.match_substring_regex(code, _PRODUCT_CODE))
    guest = ~non_product & ~_np_mask(pc.is_valid(customer))
    adjustment = ~non_product & ~guest & ~refund & q_ok & (q < 0)
    skipped: dict[str, int] = {}
    codes = pd.Series(code.to_numpy(zero_copy_only=False))[non_product]
    for stock_code, count in codes.fillna("").value_counts().sort_index().items():
        skipped[f"non_product:{stock_code or '(empty)'}"] = int(count)
    skipped["guest_line"] = int(guest.sum())
    skipped["stock_adjustment"] = int(adjustment.sum())
    keep = ~(non_product | guest | adjustment)

    # Refunds carry absolute amounts; the event type says which way the money went.
    value = np.where(refund, np.abs(q * p), q * p)
    quantity = np.where(refund, np.abs(q), q)
    columns = {
        "customer_id": customer,
        "ts": _strip(t.column("InvoiceDate")),
        "event_type": pa.array(
            np.where(refund, schema.EventType.REFUND.value, schema.EventType.PURCHASE.value), pa.string()
        ),
        "item_id": pc.utf8_upper(code),
        # Unreadable numbers keep their text, so that the validator rejects them by name.
        "value": _number_or_text(value, q_ok & p_ok, pc.if_else(pa.array(p_ok), _NULL_STR, price_text)),
        "quantity": _number_or_text(quantity, q_ok, quantity_text),
        "session_id": invoice,
        "event_id": _join(invoice, pa.array(position.astype(str), pa.string())),
    }
    return _raw_events("online_retail", rows, columns, keep=keep, skipped=skipped, tz=ONLINE_RETAIL_TZ)


def _to_float(text: pa.ChunkedArray | pa.Array, ok: np.ndarray) -> np.ndarray:
    values = pc.cast(pc.if_else(pa.array(ok), text, _NULL_STR), pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _number_or_text(
    values: np.ndarray, ok: np.ndarray, text: pa.ChunkedArray | pa.Array
) -> pa.ChunkedArray | pa.Array:
    """Numbers as their shortest exact text where `ok`, else `text` (left for the validator to reject)."""
    numbers = pc.cast(pa.array(np.where(ok, values, np.nan), pa.float64(), mask=~ok), pa.string())
    return pc.if_else(pa.array(ok), numbers, text)


# --- generic CSV / Parquet with a column mapping ------------------------------------------------------


_MAPPING_KEYS = ("columns", "constants", "value_maps", "ts_format", "ts_unit", "tz")


@dataclass(frozen=True)
class ColumnMapping:
    """How a generic file's columns map onto the event contract.

    Attributes:
        columns: contract field -> source column.
        constants: contract field -> one value for every row (for example `channel: app`).
        value_maps: contract field -> {source value: contract value} (for example
            `event_type: {view: product_view}`); values not in the map pass through unchanged.
        ts_format: `strftime` format of the ts column, when not ISO 8601 or an epoch.
        ts_unit: epoch unit of the ts column ("s", "ms", "us", "ns"), when the magnitude should not decide.
        tz: time zone of timestamps written without an offset (default UTC).

    YAML form (every key optional except `columns`)::

        columns: {customer_id: user, ts: time, event_type: action, item_id: sku}
        constants: {channel: app}
        value_maps: {event_type: {view: product_view, buy: purchase}}
        ts_unit: ms
        tz: Europe/London
    """

    columns: Mapping[str, str] = field(default_factory=dict)
    constants: Mapping[str, Any] = field(default_factory=dict)
    value_maps: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    ts_format: str | None = None
    ts_unit: str | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        for part in ("columns", "constants", "value_maps"):
            unknown = [f for f in getattr(self, part) if f not in schema.EVENT_COLUMNS]
            if unknown:
                raise MappingError(
                    f"mapping {part}: unknown contract field(s) {', '.join(map(repr, unknown))} "
                    f"(fields: {', '.join(schema.EVENT_COLUMNS)})"
                )
        both = sorted(set(self.columns) & set(self.constants))
        if both:
            raise MappingError(f"mapping: field(s) {', '.join(both)} given both a column and a constant")
        for name, source_col in self.columns.items():
            if not isinstance(source_col, str) or not source_col.strip():
                raise MappingError(f"mapping: field {name} needs a source column name, got {source_col!r}")
        for name, values in self.value_maps.items():
            if not isinstance(values, Mapping):
                raise MappingError(f"mapping value_maps: {name} must map source values to contract values")
        missing = [f for f in schema.REQUIRED_COLUMNS if f not in self.columns and f not in self.constants]
        if missing:
            raise MappingError(f"mapping: no column for required field(s) {', '.join(missing)}")
        if self.ts_unit is not None and self.ts_unit not in _EPOCH_UNITS:
            raise MappingError(f"mapping ts_unit: {self.ts_unit!r} is not one of {', '.join(_EPOCH_UNITS)}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "mapping") -> ColumnMapping:
        """Builds a mapping from its dict form (the YAML form).

        Raises:
            MappingError: an unknown key or field, or a missing required field.
        """
        if not isinstance(data, Mapping):
            raise MappingError(f"{source}: expected a mapping with keys {', '.join(_MAPPING_KEYS)}")
        unknown = [k for k in data if k not in _MAPPING_KEYS]
        if unknown:
            raise MappingError(
                f"{source}: unknown key(s) {', '.join(map(repr, unknown))} (keys: {', '.join(_MAPPING_KEYS)})"
            )
        value_maps = {
            str(f): {str(k): str(v) for k, v in (m or {}).items()} if isinstance(m, Mapping) else m
            for f, m in (data.get("value_maps") or {}).items()
        }
        return cls(
            columns={str(k): v for k, v in (data.get("columns") or {}).items()},
            constants={str(k): v for k, v in (data.get("constants") or {}).items()},
            value_maps=value_maps,
            ts_format=data.get("ts_format"),
            ts_unit=data.get("ts_unit"),
            tz=data.get("tz"),
        )

    @classmethod
    def from_yaml(cls, path: Path | str) -> ColumnMapping:
        """Loads a mapping from a YAML file (see the class docstring for its form).

        Raises:
            MappingError: the file is not a valid mapping.
        """
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise MappingError(f"{path}: not valid YAML: {exc}") from exc
        return cls.from_dict(data or {}, source=str(path))

    @classmethod
    def from_pairs(cls, pairs: Iterable[str]) -> ColumnMapping:
        """Builds a mapping from `field=column` pairs, as given on the command line.

        Args:
            pairs: for example `["customer_id=user", "ts=time", "event_type=action"]`.

        Raises:
            MappingError: a pair without "=", or an unknown contract field.
        """
        return cls.from_dict({"columns": _parse_pairs(pairs)}, source="--map")

    @classmethod
    def identity(cls, available: Iterable[str]) -> ColumnMapping:
        """Maps each contract field onto the column of the same name, where `available` has one.

        Raises:
            MappingError: a required field has no column of its name.
        """
        present = set(available)
        return cls(columns={f: f for f in schema.EVENT_COLUMNS if f in present})

    def with_pairs(self, pairs: Iterable[str]) -> ColumnMapping:
        """This mapping with `field=column` pairs added or overriding its columns (YAML, then flags)."""
        columns = {**self.columns, **_parse_pairs(pairs)}
        constants = {k: v for k, v in self.constants.items() if k not in columns}
        return ColumnMapping(columns, constants, self.value_maps, self.ts_format, self.ts_unit, self.tz)

    def to_dict(self) -> dict[str, Any]:
        """The mapping in its YAML form, for summaries."""
        return {
            "columns": dict(self.columns),
            "constants": dict(self.constants),
            "value_maps": {k: dict(v) for k, v in self.value_maps.items()},
            "ts_format": self.ts_format,
            "ts_unit": self.ts_unit,
            "tz": self.tz,
        }


def _parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, column = pair.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise MappingError(f"--map {pair!r}: expected field=column, for example customer_id=user_id")
        out[name.strip()] = column.strip()
    unknown = [f for f in out if f not in schema.EVENT_COLUMNS]
    if unknown:
        raise MappingError(
            f"--map: unknown contract field(s) {', '.join(map(repr, unknown))} "
            f"(fields: {', '.join(schema.EVENT_COLUMNS)})"
        )
    return out


def read_generic(path: Path | str, mapping: ColumnMapping | None = None) -> RawEvents:
    """Reads a CSV (plain or .gz) or Parquet file whose columns a `ColumnMapping` maps onto the contract.

    Args:
        path: the file; `.parquet` / `.pq` is read as Parquet, anything else as CSV with a header.
        mapping: which source column feeds which contract field, constants and value maps. None: the
            file's columns named like contract fields feed those fields (a file in the contract's form).

    Returns:
        Candidate events; for Parquet, `lines` holds 1-based row numbers.

    Raises:
        SourceFormatError: a mapped source column is not in the file.
        MappingError: without a mapping, the file lacks a column named like a required field.
    """
    path = Path(path)
    name = str(path)
    is_parquet = path.suffix.lower() in (".parquet", ".pq")
    if is_parquet:
        try:
            available = pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise SourceFormatError(f"{name}: cannot be read as Parquet: {exc}") from exc
    else:
        available = read_csv_header(path)
    if mapping is None:
        mapping = ColumnMapping.identity(available)
    missing = [f"{col} (for {fld})" for fld, col in mapping.columns.items() if col not in available]
    if missing:
        raise SourceFormatError(
            f"{name}: mapped column(s) not found: {', '.join(missing)} (columns: {', '.join(available)})"
        )
    if is_parquet:
        table = pq.read_table(path)
        rows = CsvRows(
            table=table,
            lines=np.arange(1, table.num_rows + 1, dtype=np.int64),
            blank_lines=0,
            malformed=_malformed_records(path, [], 0, name),
        )
    else:
        rows = read_csv_rows(path, source=name)
    n = rows.table.num_rows
    frame: dict[str, pa.ChunkedArray | pa.Array] = {}
    for fld, col in mapping.columns.items():
        arr = rows.table.column(col)
        if fld in mapping.value_maps:
            text = arr if pa.types.is_string(arr.type) else pc.cast(arr, pa.string())
            arr = _map_values(pc.utf8_trim_whitespace(text), mapping.value_maps[fld])
        frame[fld] = arr
    for fld, value in mapping.constants.items():
        frame[fld] = pa.repeat(pa.scalar(value), n)
    raw = RawEvents(
        source=name,
        frame=_typed_frame(frame),
        lines=rows.lines,
        raw=_typed_frame({c: rows.table.column(c) for c in rows.table.column_names}),
        skipped={"blank_line": rows.blank_lines} if rows.blank_lines else {},
        malformed=rows.malformed,
        tz=mapping.tz,
        ts_format=mapping.ts_format,
        ts_unit=mapping.ts_unit,
    )
    return raw


def _typed_frame(columns: Mapping[str, pa.ChunkedArray | pa.Array]) -> pd.DataFrame:
    """Arrow columns to pandas: strings stay Arrow-backed, other types become numpy / datetime columns."""
    out = {}
    for name, col in columns.items():
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            out[name] = pd.Series(pd.arrays.ArrowExtensionArray(_chunked(col)))
        else:
            out[name] = _chunked(col).to_pandas()
    return pd.DataFrame(out)
