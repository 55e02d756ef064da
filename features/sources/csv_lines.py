"""CSV files read with every column as a string and each row's physical line number, malformed rows included.

Line numbers are physical lines of the file (header = line 1), for gzip files too: quoted fields that span
lines are counted, blank lines are counted and skipped, and rows with the wrong number of fields become
`malformed_row` reject records at their own line.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pv

from features.parsing import to_mask
from features.rejects import REJECT_COLUMNS, Reason, empty_rejects
from features.sources.raw import RawEvents, SourceFormatError, _frame, _raw_frame


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
        blank &= to_mask(pc.equal(col, ""))
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
        return empty_rejects()
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
    """A CSV source's candidate events: its contract columns, the rows in `keep`, their lines and raw text."""
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
