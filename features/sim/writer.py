"""A chunk's tables (events, the decision log, the truth), built from numpy columns without Python objects.

`features.sim.run` writes them to their files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from features import schema
from features.sim.customers import _Chunk, _group_rank
from features.sim.world import (
    _DAY_S,
    _N_ACTIONS,
    _N_STAGES,
    ACTIONS,
    LATENT_STAGES,
)

# ----------------------------------------------------------------------------------------------------------
# Fast Arrow columns
# ----------------------------------------------------------------------------------------------------------


def _digits(numbers: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative integers, zero-padded: uint8 [n, width]."""
    x = np.asarray(numbers, dtype=np.int64)
    # 32-bit division is much faster than 64-bit, and ids fit.
    x = x.astype(np.uint32) if len(x) == 0 or x.max() < 2**32 else x.copy()
    out = np.empty((len(x), width), dtype=np.uint8)
    for j in range(width - 1, -1, -1):
        q = x // 10
        out[:, j] = x - q * 10 + 48
        x = q
    return out


def _fixed_strings(
    parts: Sequence[str | tuple[np.ndarray, int]], n: int, valid: np.ndarray | None = None
) -> pa.Array:
    """A string array of fixed-width ids such as "C0000001-E000042", built without Python objects.

    Args:
        parts: literal strings and (numbers, width) pairs, concatenated left to right.
        n: rows.
        valid: where False the row is null.
    """
    width = sum(len(p) if isinstance(p, str) else p[1] for p in parts)
    if n * width >= 2**31:
        raise ValueError("too many ids for one string array; lower chunk_size")
    mat = np.empty((n, width), dtype=np.uint8)
    col = 0
    for p in parts:
        if isinstance(p, str):
            mat[:, col : col + len(p)] = np.frombuffer(p.encode("ascii"), dtype=np.uint8)
            col += len(p)
        else:
            numbers = p[0] if valid is None else np.where(valid, p[0], 0)
            mat[:, col : col + p[1]] = _digits(numbers, p[1])
            col += p[1]
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    bitmap = None
    nulls = 0
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = int(n - np.count_nonzero(valid))
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(mat)], null_count=nulls
    )


def _dictionary(codes: np.ndarray, values: pa.Array, index_type: Any) -> pa.DictionaryArray:
    """A dictionary array from integer codes; negative codes are null."""
    codes = np.asarray(codes)
    mask = codes < 0
    indices = pa.array(
        codes.astype(index_type.to_pandas_dtype()), type=index_type, mask=mask if mask.any() else None
    )
    return pa.DictionaryArray.from_arrays(indices, values)


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype="datetime64[us]"), type=schema.TS_TYPE)


def _floats(x: np.ndarray) -> pa.Array:
    nan = np.isnan(x)
    return pa.array(x, type=pa.float64(), mask=nan if nan.any() else None)


# ----------------------------------------------------------------------------------------------------------
# One chunk's tables
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _ChunkResult:
    events: pa.Table
    decisions: pa.Table
    truth_decisions: pa.Table
    stages: pa.Table
    counts: dict[str, int]
    stage_days: np.ndarray


def _customer_ids(chunk: _Chunk) -> pa.Array:
    return _fixed_strings(
        ["C", (np.arange(chunk.first + 1, chunk.first + chunk.n + 1), chunk.cust_width)], chunk.n
    )


def _chunk_result(chunk: _Chunk) -> _ChunkResult:
    cust_ids = _customer_ids(chunk)
    events = _event_table(chunk, cust_ids)
    decisions, truth = _decision_tables(chunk)
    stages = _stage_table(chunk, cust_ids)
    stage_days = np.bincount(chunk.stage_by_day[chunk.stage_by_day >= 0], minlength=_N_STAGES)
    return _ChunkResult(events, decisions, truth, stages, dict(chunk.counts), stage_days)


def _event_table(chunk: _Chunk, cust_ids: pa.Array) -> pa.Table:
    ev = chunk.events
    cust = np.concatenate(ev.cust)
    ts = np.concatenate(ev.ts)
    order = np.lexsort((ts, cust))  # stable: ties keep the order in which they were made
    cust, ts = cust[order], ts[order]

    def col(parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts)[order]

    etype, channel, item = col(ev.etype), col(ev.channel), col(ev.item)
    quantity, value, message = col(ev.quantity), col(ev.value), col(ev.message)
    campaign, session = col(ev.campaign), col(ev.session)
    seq, _ = _group_rank(cust)
    number = cust.astype(np.int64) + chunk.first + 1
    w = chunk.cust_width
    has_item = item >= 0
    category = np.where(has_item, chunk.cat.category[np.maximum(item, 0)], -1)
    arrays = {
        "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust, type=pa.int32()), cust_ids),
        "ts": _timestamps(ts),
        "event_type": _dictionary(etype, pa.array(schema.EVENT_TYPES), pa.int8()),
        "channel": _dictionary(channel, pa.array(schema.CHANNELS), pa.int8()),
        "item_id": _dictionary(item, _item_ids(len(chunk.cat.price)), pa.int32()),
        "category": _dictionary(category, pa.array(chunk.cat.names), pa.int16()),
        "value": _floats(value),
        "quantity": _floats(quantity),
        "message_type": _dictionary(message, pa.array(ACTIONS), pa.int8()),
        "campaign_id": _fixed_strings(
            ["D", (number, w), "-", (campaign, chunk.dec_width)], len(cust), campaign >= 0
        ),
        "session_id": _fixed_strings(
            ["C", (number, w), "-S", (session // 10, chunk.day_width), (session % 10, 1)],
            len(cust),
            session >= 0,
        ),
        "event_id": _fixed_strings(["C", (number, w), "-E", (seq, 6)], len(cust)),
    }
    if len(seq) and seq.max() >= 10**6:
        raise ValueError("a customer has a million events; event ids would not be unique")
    fields = [pa.field(f.name, arrays[f.name].type, nullable=f.nullable) for f in schema.EVENT_SCHEMA]
    return pa.Table.from_arrays([arrays[f.name] for f in fields], schema=pa.schema(fields))


def _decision_tables(chunk: _Chunk) -> tuple[pa.Table, pa.Table]:
    d = chunk.decisions
    n = chunk.rows
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        cust = day = seq = stage = action = sends = unsub = intended = empty
        control = np.zeros(0, dtype=bool)
        propensity = np.zeros(0)
        p = np.zeros((0, _N_ACTIONS))
    else:
        cust, day, seq = np.concatenate(d.cust), np.concatenate(d.day), np.concatenate(d.seq)
        stage, action = np.concatenate(d.stage), np.concatenate(d.action)
        propensity, p = np.concatenate(d.propensity), np.concatenate(d.p_convert)
        sends, unsub = np.concatenate(d.sends_28d), np.concatenate(d.unsubscribed)
        control, intended = np.concatenate(d.control), np.concatenate(d.intended)
    # Rows were made day by day; sort by customer then time like the events.
    order = np.lexsort((day, cust))
    converted = chunk.converted[:n][order]
    cust, day, seq, stage, action = cust[order], day[order], seq[order], stage[order], action[order]
    propensity, p, sends, unsub = propensity[order], p[order], sends[order], unsub[order]
    control, intended = control[order], intended[order]
    number = cust.astype(np.int64) + chunk.first + 1
    ids = _fixed_strings(["D", (number, chunk.cust_width), "-", (seq, chunk.dec_width)], n)
    customer = _fixed_strings(["C", (number, chunk.cust_width)], n)
    ts = _timestamps(
        chunk._day_us(0)
        + day.astype(np.int64) * _DAY_S * 1_000_000
        + chunk.cfg.decision_hour * 3600 * 1_000_000
    )
    action_str = _dictionary(action, pa.array(ACTIONS), pa.int8()).cast(pa.string())
    decisions = pa.table(
        {
            "decision_id": ids,
            "customer_id": customer,
            "ts": ts,
            "action": action_str,
            "propensity": pa.array(propensity, type=pa.float64()),
            "policy": pa.array(np.full(n, chunk.cfg.policy, dtype=object), type=pa.string()),
            "control": pa.array(control, type=pa.bool_()),
            "intended_action": _dictionary(intended, pa.array(ACTIONS), pa.int8()).cast(pa.string()),
        }
    )
    truth = {
        "decision_id": ids,
        "customer_id": customer,
        "ts": ts,
        "stage": _dictionary(stage, pa.array(LATENT_STAGES), pa.int8()).cast(pa.string()),
        "action": action_str,
        "propensity": pa.array(propensity, type=pa.float64()),
        "converted": pa.array(converted, type=pa.int8()),
        "unsubscribed": pa.array(unsub.astype(np.int8), type=pa.int8()),
        "sends_28d": pa.array(sends.astype(np.int8), type=pa.int8()),
    }
    for a, name in enumerate(ACTIONS):
        truth[f"p_convert__{name}"] = pa.array(p[:, a], type=pa.float64())
    return decisions, pa.table(truth)


def _stage_table(chunk: _Chunk, cust_ids: pa.Array) -> pa.Table:
    by_customer = chunk.stage_by_day.T  # [n, days]: row-major order is customer, then day
    mask = by_customer >= 0
    cust = np.repeat(np.arange(chunk.n, dtype=np.int32), mask.sum(axis=1))
    day = np.broadcast_to(np.arange(chunk.cfg.days, dtype=np.int32), by_customer.shape)[mask]
    epoch_day = (chunk.cfg.start_date - dt.date(1970, 1, 1)).days
    return pa.table(
        {
            "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust, type=pa.int32()), cust_ids),
            "day": pa.array(day + epoch_day, type=pa.int32()).cast(pa.date32()),
            "stage": _dictionary(by_customer[mask], pa.array(LATENT_STAGES), pa.int8()),
        }
    )


def _item_ids(n: int) -> pa.Array:
    return _fixed_strings(["I", (np.arange(1, n + 1), max(6, len(str(n))))], n)
