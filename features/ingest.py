"""The ingest job: read a source, validate it against the event contract, write what came out.

`ingest` writes three files into its output folder:

- `events.parquet`: the accepted events, `schema.EVENT_SCHEMA`, sorted by customer_id then ts (ties in
  file order), so that re-ingesting the same file gives the same bytes;
- `rejects.csv`: one row per rejected input row (line, field, reason, message, raw), always written,
  with only its header when nothing was rejected;
- `summary.json`: the counts (read, accepted, rejected, by reason, skipped by cause), the source, the
  input's path and SHA-256, the time range of the accepted events and the number of customers.

Then it applies the reject-ratio threshold: above it, `RejectRatioExceeded` is raised after the files
are written, so the rejects can be looked at.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from features.sources import (
    ColumnMapping,
    MappingError,
    RawEvents,
    read_generic,
    read_online_retail,
    read_rees46,
    read_retailrocket,
    validate_raw,
)
from features.validate import ValidationSummary, check_reject_ratio

__all__ = [
    "EVENTS_FILE",
    "REJECTS_FILE",
    "SOURCES",
    "SUMMARY_FILE",
    "format_summary",
    "ingest",
    "read_source",
]

logger = logging.getLogger("features.ingest")

EVENTS_FILE = "events.parquet"
REJECTS_FILE = "rejects.csv"
SUMMARY_FILE = "summary.json"

_READERS: dict[str, Callable[[Path], RawEvents]] = {
    "retailrocket": read_retailrocket,
    "rees46": read_rees46,
    "online_retail": read_online_retail,
}
# The names `journey ingest SOURCE` accepts.
SOURCES: tuple[str, ...] = (*_READERS, "generic")


def read_source(source: str, path: Path | str, *, mapping: ColumnMapping | None = None) -> RawEvents:
    """Reads a file with the adapter of `source`.

    Args:
        source: one of `SOURCES`.
        path: the input file.
        mapping: the column mapping, for "generic" only; without one, a generic file's columns that
            carry contract names map onto those fields.

    Returns:
        The candidate events, not yet validated.

    Raises:
        ValueError: unknown source, or a mapping given for a source with a fixed layout.
        FileNotFoundError: the file does not exist.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file: {path}")
    if source == "generic":
        return read_generic(path, mapping)
    if mapping is not None:
        raise MappingError(f"source {source} has a fixed layout; a column mapping applies to generic only")
    return _READERS[source](path)


def ingest(
    source: str,
    path: Path | str,
    out: Path | str,
    *,
    mapping: ColumnMapping | None = None,
    max_reject_ratio: float = 0.05,
    tz: str | None = None,
    now: pd.Timestamp | None = None,
) -> ValidationSummary:
    """Reads, validates and writes one source file; fails when too many rows break the contract.

    Args:
        source: one of `SOURCES` ("retailrocket", "rees46", "online_retail", "generic").
        path: the input file (CSV, CSV.gz, or Parquet for generic).
        out: the output folder (created if needed); see the module docstring for what goes in it.
        mapping: the column mapping, for "generic" only (without one, contract-named columns map
            onto their fields).
        max_reject_ratio: the largest acceptable share of rejected rows among the validated ones
            (rows skipped on purpose do not count).
        tz: time zone of timestamps written without an offset; overrides the source's default (UTC,
            or Europe/London for online_retail) and the mapping's.
        now: the present, for the "not in the future" check (default: the current time).

    Returns:
        The validation summary.

    Raises:
        RejectRatioExceeded: too many rows were rejected; the three files are written first.
        ValueError: unknown source, bad mapping, a mapped column not in the file, or a bad ratio.
        FileNotFoundError: no input file.
    """
    if not 0.0 <= max_reject_ratio <= 1.0:
        raise ValueError(f"max_reject_ratio must be between 0 and 1, got {max_reject_ratio}")
    path = Path(path)
    out = Path(out)
    raw = read_source(source, path, mapping=mapping)
    left_out = sum(raw.skipped.values())
    logger.info(
        "%s: read %s rows from %s (%s left out on purpose)",
        source,
        f"{len(raw.frame) + left_out:,}",
        path,
        f"{left_out:,}",
    )
    result = validate_raw(raw, tz=tz, now=now)
    summary = result.summary
    summary.source = source
    logger.info(
        "%s: validated %s rows: %s accepted, %s rejected, %s skipped",
        source,
        f"{summary.rows_read:,}",
        f"{summary.rows_accepted:,}",
        f"{summary.rows_rejected:,}",
        f"{summary.rows_skipped:,}",
    )

    out.mkdir(parents=True, exist_ok=True)
    # Arrow's sort is stable: ties keep file order.
    table = result.events.sort_by([("customer_id", "ascending"), ("ts", "ascending")])
    _write_atomic(out / EVENTS_FILE, lambda tmp: pq.write_table(table, tmp))
    _write_atomic(out / REJECTS_FILE, lambda tmp: result.rejects.to_csv(tmp, index=False))
    record: dict[str, Any] = {
        **summary.to_dict(),
        "path": str(path.resolve()),
        "sha256": _sha256(path),
        "max_reject_ratio": max_reject_ratio,
        "outputs": {"events": EVENTS_FILE, "rejects": REJECTS_FILE},
    }
    if mapping is not None:
        record["mapping"] = mapping.to_dict()
    if tz is not None:
        record["tz"] = tz
    text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
    _write_atomic(out / SUMMARY_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    logger.info("%s: wrote %s, %s and %s in %s", source, EVENTS_FILE, REJECTS_FILE, SUMMARY_FILE, out)

    check_reject_ratio(summary, max_reject_ratio, rejects_path=out / REJECTS_FILE)
    return summary


def format_summary(summary: ValidationSummary) -> str:
    """The summary in a few lines of text, for the command line.

    Args:
        summary: what `ingest` (or `validate_events`) returned.

    Returns:
        Lines like "online_retail: 370,931 rows read: 271,533 accepted, 0 rejected (0.00%), 99,398
        skipped", then the reasons, the skip causes and the time range.
    """
    lines = [
        f"{summary.source}: {summary.rows_read:,} rows read: {summary.rows_accepted:,} accepted, "
        f"{summary.rows_rejected:,} rejected ({summary.reject_ratio:.2%}), {summary.rows_skipped:,} skipped"
    ]
    if summary.rejects_by_reason:
        lines.append("  rejected: " + _counts(summary.rejects_by_reason))
    if summary.skipped:
        lines.append("  skipped:  " + _counts(summary.skipped))
    if summary.ts_min is not None:
        lines.append(f"  events from {summary.ts_min} to {summary.ts_max}, {summary.customers:,} customers")
    return "\n".join(lines)


def _counts(counts: dict[str, int]) -> str:
    """ "a 3, b:x 2, b:y 1" -> "a 3, b 3 (x 2, y 1)": detailed counters grouped under their prefix."""
    groups: dict[str, dict[str, int]] = {}
    for key, count in counts.items():
        if count:
            head, _, detail = key.partition(":")
            groups.setdefault(head, {})[detail] = count
    parts = []
    for head, details in sorted(groups.items(), key=lambda g: (-sum(g[1].values()), g[0])):
        total = sum(details.values())
        if set(details) == {""}:
            parts.append(f"{head} {total:,}")
            continue
        ordered = sorted(details.items(), key=lambda kv: (-kv[1], kv[0]))
        parts.append(f"{head} {total:,} (" + ", ".join(f"{d} {c:,}" for d, c in ordered) + ")")
    return ", ".join(parts) or "none"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(target: Path, write: Callable[[Path], Any]) -> None:
    """Writes through a temporary file in the same folder, so a failed run leaves no half file."""
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
