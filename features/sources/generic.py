"""Any CSV (plain or .gz) or Parquet file, with a `ColumnMapping` from its columns onto the event contract."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from features import schema
from features.parsing import EPOCH_UNITS_US
from features.rejects import empty_rejects
from features.sources.csv_lines import CsvRows, read_csv_header, read_csv_rows
from features.sources.raw import RawEvents, SourceFormatError, _chunked, _map_values


class MappingError(ValueError):
    """A column mapping names an unknown contract field, or is otherwise unusable."""


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
        if self.ts_unit is not None and self.ts_unit not in EPOCH_UNITS_US:
            raise MappingError(f"mapping ts_unit: {self.ts_unit!r} is not one of {', '.join(EPOCH_UNITS_US)}")

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
            malformed=empty_rejects(),
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
