"""The events of the customers on a journey map, as compact code arrays, read from a frame or streamed from
Parquet (only the map's customers are kept)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from features.build import input_files
from features.schema import CHANNELS, EVENT_TYPES

_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


def _codes(values: pa.Array | pa.ChunkedArray, vocabulary: pa.Array) -> np.ndarray:
    """Position of each value in `vocabulary` (-1 where absent), hashing each distinct value once."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        inner = _codes(values.dictionary, vocabulary)
        indices = values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = inner[indices] if len(inner) else np.full(len(indices), -1, dtype=np.int64)
        if values.null_count:
            out[values.is_null().to_numpy(zero_copy_only=False)] = -1
        return out
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    found = pc.index_in(values, value_set=vocabulary.cast(pa.string()))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class Events:
    """The events of the customers on a journey map, as compact code arrays (about 20 bytes an event).

    Attributes:
        customer: (m,) index into the map's customers.
        ts_ms: (m,) epoch milliseconds.
        event_type: (m,) index into `EVENT_TYPES` (-1: not in the contract).
        channel: (m,) index into `CHANNELS` (-1: unknown).
        value: (m,) the event's value (NaN where none).
    """

    customer: np.ndarray
    ts_ms: np.ndarray
    event_type: np.ndarray
    channel: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.customer)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, customers: np.ndarray) -> Events:
        """Events of a contract frame (customer_id, ts, event_type, channel[, value]) for these customers."""
        return cls.from_table(pa.Table.from_pandas(frame, preserve_index=False), customers)

    @classmethod
    def from_table(cls, table: pa.Table | pa.RecordBatch, customers: np.ndarray) -> Events:
        vocabulary = pa.array(customers.astype(str), pa.string())
        customer = _codes(table.column("customer_id"), vocabulary)
        keep = customer >= 0
        ts = table.column("ts")
        if not pa.types.is_timestamp(ts.type):
            raise ValueError(f"events: ts must be a timestamp column, not {ts.type}")
        # Naive timestamps are UTC, as everywhere in the event contract; floored to milliseconds.
        raw = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
        ts_ms = raw * 1000 if ts.type.unit == "s" else raw // _PER_MS[ts.type.unit]
        event_type = _codes(table.column("event_type"), pa.array(EVENT_TYPES))
        names = table.schema.names
        channel = (
            _codes(table.column("channel"), pa.array(CHANNELS))
            if "channel" in names
            else np.full(table.num_rows, -1, dtype=np.int64)
        )
        value = (
            table.column("value").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            if "value" in names
            else np.full(table.num_rows, np.nan)
        )
        return cls(
            customer=customer[keep].astype(np.int32),
            ts_ms=ts_ms[keep].astype(np.int64),
            event_type=event_type[keep].astype(np.int8),
            channel=channel[keep].astype(np.int8),
            value=value[keep].astype(np.float32),
        )

    @classmethod
    def read(cls, path: Path, customers: np.ndarray, batch_rows: int = 1_000_000) -> Events:
        """Streams a Parquet file or folder of events, keeping only these customers' events."""
        dataset = ds.dataset([str(f) for f in input_files(path)], format="parquet")
        wanted = ["customer_id", "ts", "event_type", "channel", "value"]
        columns = [c for c in wanted if c in dataset.schema.names]
        parts = [
            cls.from_table(b, customers) for b in dataset.to_batches(columns=columns, batch_size=batch_rows)
        ]
        return cls.concat(parts)

    @classmethod
    def concat(cls, parts: list[Events]) -> Events:
        if not parts:
            empty = np.zeros(0)
            return cls(
                empty.astype(np.int32),
                empty.astype(np.int64),
                empty.astype(np.int8),
                empty.astype(np.int8),
                empty.astype(np.float32),
            )
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))
