"""The one encoder: a customer's events before a cutoff -> model input.

The batch feature job calls `encode` on a bucket of customers and the online scorer calls it on one
customer; the output for a customer depends only on that customer's events, so both paths give the same
arrays (a test proves it). Everything is vectorised over all events of all customers passed in.

Point-in-time rule: the inputs for cutoff `t` use only events with `ts < t` (strictly before).

How it works: events are sorted by (customer, ts) and given a combined integer key, so that for any
(customer, time) pair `np.searchsorted` finds the first event at or after that time. Window counts are
then differences of prefix sums, and the last `max_len` events are a gather of the positions before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

# Re-exported here, their home before `features.aggregates` and `features.prepared` took them out.
from features.aggregates import AGGREGATE_NAMES as AGGREGATE_NAMES
from features.aggregates import COUNT_AGGREGATES as COUNT_AGGREGATES
from features.aggregates import MS_PER_DAY as MS_PER_DAY
from features.aggregates import NEVER_DAYS as NEVER_DAYS
from features.aggregates import aggregates as _aggregates
from features.arrays import factorize_sorted, to_epoch_ms
from features.columns import EventColumns
from features.history import item_profile, padded
from features.prepared import PreparedEvents as PreparedEvents
from features.vocab import FIRST, Vocabulary

# Token fields of each event in the sequence, in this order.
TOKEN_FIELDS: tuple[str, ...] = (
    "event_type",
    "item_id",
    "category",
    "channel",
    "message_type",
    "dt_bucket",
    "hour",
    "weekday",
    "value_bucket",
)
# Time since the previous event of the same customer, in seconds: bucket edges (log-spaced).
DT_EDGES_S = np.array([60, 300, 1_800, 3_600, 3 * 3_600, 12 * 3_600, 86_400, 3 * 86_400, 7 * 86_400,
                       14 * 86_400, 30 * 86_400, 90 * 86_400], dtype=np.int64)  # fmt: skip
# Money value edges; bucket FIRST means "no value".
VALUE_EDGES = np.array([1, 5, 10, 25, 50, 100, 250, 500, 1_000, 5_000], dtype=np.float64)


@dataclass(frozen=True)
class EncoderConfig:
    """How sequences are cut and tokenised.

    Attributes:
        max_len: events kept per sequence (the most recent ones, left-padded).
        history_items: distinct items of the customer's whole-history profile kept per row
            (`features.history`: the most-bought, then the most recent); 0 turns the profile off.
    """

    max_len: int = 50
    history_items: int = 100


def prepare(events: pd.DataFrame, vocab: Vocabulary) -> PreparedEvents:
    """Sorts and tokenises events once, for encoding and labelling at many cutoffs.

    Args:
        events: validated events (the contract's columns; strings may be categorical), any order,
            any number of customers.
        vocab: vocabularies fitted on the training window.
    """
    n = len(events)
    customers, cust = factorize_sorted(events["customer_id"])
    tokens = {name: vocab.lookup(name, events[name]) if name in events else _zeros(n) for name in _LOOKED_UP}
    value = (
        pd.to_numeric(events["value"], errors="coerce").to_numpy(dtype=np.float64)
        if "value" in events
        else np.full(n, np.nan)
    )
    return _prepared(customers, cust, to_epoch_ms(events["ts"]), tokens, value)


def prepare_columns(events: EventColumns, vocab: Vocabulary) -> PreparedEvents:
    """`prepare` on events held as columns (the real-time path: a few customers, no DataFrame)."""
    customers, inverse = np.unique(events["customer_id"].astype(str), return_inverse=True)
    tokens = {name: vocab.lookup_array(name, events[name]) for name in _LOOKED_UP}
    return _prepared(
        customers.astype(object), inverse.astype(np.int64).reshape(-1), events.ts_us // 1000, tokens,
        events["value"],
    )  # fmt: skip


# Token fields read through the vocabulary (the others are derived from times and values).
_LOOKED_UP = ("event_type", "item_id", "category", "channel", "message_type")


def _prepared(
    customers: np.ndarray,
    cust: np.ndarray,
    ts_ms: np.ndarray,
    looked_up: dict[str, np.ndarray],
    value: np.ndarray,
) -> PreparedEvents:
    """Orders events by (customer, time, input order) and derives the time and value tokens."""
    # Stable order: customer, time, then input order for ties (events at the same instant).
    order = np.lexsort((np.arange(len(ts_ms)), ts_ms, cust))
    cust, ts_ms = cust[order], np.asarray(ts_ms, dtype=np.int64)[order]
    base = int(ts_ms.min()) if len(ts_ms) else 0
    span = int(ts_ms.max() - base + 2) if len(ts_ms) else 1
    if len(customers) * span >= 2**62:
        raise ValueError(
            f"{len(customers)} customers over {span / MS_PER_DAY:.0f} days do not fit one key; "
            "use more buckets"
        )
    key = cust * span + (ts_ms - base)
    tokens = {name: looked_up[name][order] for name in _LOOKED_UP}
    # Index into EVENT_TYPES (the vocabulary's token minus FIRST), -1 for anything else.
    event_type = (tokens["event_type"] - FIRST).astype(np.int16)

    # Time since the previous event of the same customer; the first event of a customer gets FIRST.
    dt_s = np.diff(ts_ms, prepend=0) // 1000
    first = np.ones(len(cust), dtype=bool)
    first[1:] = cust[1:] != cust[:-1]
    dt_bucket = np.where(first, FIRST, FIRST + 1 + np.searchsorted(DT_EDGES_S, dt_s, side="right"))
    tokens["dt_bucket"] = dt_bucket.astype(np.int32)
    # Hour of day and weekday in UTC by integer arithmetic (1970-01-01 was a Thursday, weekday 3).
    tokens["hour"] = ((ts_ms // 3_600_000) % 24 + 1).astype(np.int32)  # 1..24, 0 is padding
    tokens["weekday"] = ((ts_ms // MS_PER_DAY + 3) % 7 + 1).astype(np.int32)  # 1..7, Monday 1
    value = np.asarray(value, dtype=np.float64)[order]
    value_bucket = np.where(
        np.isnan(value),
        FIRST,
        FIRST + 1 + np.searchsorted(VALUE_EDGES, np.abs(np.where(np.isnan(value), 0.0, value))),
    )
    tokens["value_bucket"] = value_bucket.astype(np.int32)
    return PreparedEvents(
        customers=customers,
        cust=cust,
        ts_ms=ts_ms,
        key=key,
        base=base,
        span=span,
        event_type=event_type,
        tokens=tokens,
        value=value,
        item_token=tokens["item_id"],
    )


def token_sizes(vocab: Vocabulary) -> dict[str, int]:
    """Embedding table size of each token field (padding included)."""
    sizes = {
        name: vocab.size(name) for name in ("event_type", "item_id", "category", "channel", "message_type")
    }
    sizes.update(
        dt_bucket=FIRST + 2 + len(DT_EDGES_S),
        hour=25,
        weekday=8,
        value_bucket=FIRST + 2 + len(VALUE_EDGES),
    )
    return sizes


@dataclass
class EncodedBatch:
    """Model input for a batch of (customer, cutoff) rows.

    Token sequences are held ragged (each row's real events, oldest first, rows concatenated), which is
    how the feature job stores them; `tokens` gives the model's left-padded layout.

    Attributes:
        values: field -> (sum(length),) int32 tokens of all rows, row after row.
        length: (n_rows,) number of real events in each sequence (at most max_len).
        max_len: the sequence length of the padded layout.
        aggregates: name -> (n_rows,) float64.
        history: field -> (sum(history_length),) int32, the whole-history item profile
            (`features.history.HISTORY_FIELDS`) of all rows, row after row; empty when off.
        history_length: (n_rows,) profile items of each row (at most history_items); empty: all 0.
        history_items: the profile width of the padded layout (`history_padded`).
    """

    values: dict[str, np.ndarray]
    length: np.ndarray
    max_len: int
    aggregates: dict[str, np.ndarray]
    history: dict[str, np.ndarray] = field(default_factory=dict)
    history_length: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    history_items: int = 0

    def __len__(self) -> int:
        return len(self.length)

    @property
    def history_rows(self) -> np.ndarray:
        """(n_rows,) profile items of each row (zeros for a batch built without the profile)."""
        return self.history_length if len(self.history_length) else np.zeros(len(self), np.int32)

    @property
    def history_padded(self) -> dict[str, np.ndarray]:
        """field -> (n_rows, history_items) int32, each row's profile from the left, zero-padded."""
        return padded(self.history, self.history_rows, self.history_items)

    @classmethod
    def concat(cls, batches: list[EncodedBatch]) -> EncodedBatch:
        """The rows of several batches of one encoder config, in order (the service's micro-batches)."""
        one = batches[0]
        return cls(
            values={k: np.concatenate([b.values[k] for b in batches]) for k in one.values},
            length=np.concatenate([b.length for b in batches]),
            max_len=one.max_len,
            aggregates={k: np.concatenate([b.aggregates[k] for b in batches]) for k in one.aggregates},
            history={k: np.concatenate([b.history[k] for b in batches]) for k in one.history},
            history_length=np.concatenate([b.history_rows for b in batches]),
            history_items=one.history_items,
        )

    @property
    def offsets(self) -> np.ndarray:
        """(n_rows + 1,) start of each row in `values`."""
        return np.concatenate([[0], np.cumsum(self.length)]).astype(np.int64)

    @property
    def tokens(self) -> dict[str, np.ndarray]:
        """field -> (n_rows, max_len) int32, left-padded with 0, oldest event first."""
        real = np.arange(self.max_len)[None, :] >= (self.max_len - self.length)[:, None]
        out = {}
        for name, flat in self.values.items():
            padded = np.zeros((len(self.length), self.max_len), dtype=np.int32)
            padded[real] = flat
            out[name] = padded
        return out


def encode(
    events: pd.DataFrame,
    cutoffs: pd.DataFrame,
    vocab: Vocabulary,
    config: EncoderConfig | None = None,
) -> EncodedBatch:
    """Encodes each (customer_id, cutoff) row of `cutoffs` from that customer's events before the cutoff.

    This is the function both the batch feature job and the online scorer call.

    Args:
        events: validated events of the customers (others are ignored); any order.
        cutoffs: columns customer_id and cutoff (UTC timestamps); a customer may appear at many cutoffs.
        vocab: vocabularies fitted on the training window.
        config: sequence length and tokenisation settings.
    """
    return encode_prepared(prepare(events, vocab), cutoffs, config or EncoderConfig())


def encode_prepared(prep: PreparedEvents, cutoffs: pd.DataFrame, config: EncoderConfig) -> EncodedBatch:
    """`encode` on events already passed through `prepare` (the batch job prepares a bucket once)."""
    return encode_at(prep, cutoffs["customer_id"], to_epoch_ms(cutoffs["cutoff"]), config)


def encode_columns(
    events: EventColumns,
    customer_ids: np.ndarray,
    cutoff_ms: np.ndarray,
    vocab: Vocabulary,
    config: EncoderConfig,
) -> EncodedBatch:
    """`encode` for events held as columns and cutoffs as epoch milliseconds (the real-time path)."""
    return encode_at(
        prepare_columns(events, vocab), np.asarray(customer_ids, dtype=object), cutoff_ms, config
    )


def encode_at(
    prep: PreparedEvents, customer_ids: pd.Series | np.ndarray, t_ms: np.ndarray, config: EncoderConfig
) -> EncodedBatch:
    """Encodes each (customer, cutoff in epoch milliseconds) row from the prepared events."""
    cust = prep.customer_codes(customer_ids)
    t_ms = np.asarray(t_ms, dtype=np.int64)
    start = prep.starts(cust)
    end = prep.search(cust, t_ms)  # first event at or after the cutoff: excluded
    length = np.minimum(end - start, config.max_len)

    # Positions of each row's last `length` events, oldest first, rows concatenated.
    offsets = np.concatenate([[0], np.cumsum(length)])
    pos = np.repeat(end - length - offsets[:-1], length) + np.arange(offsets[-1])
    values = {name: prep.tokens[name][pos] for name in TOKEN_FIELDS}
    aggregates = _aggregates(prep, cust, start, end, t_ms)
    history, history_length = item_profile(prep, cust, t_ms, config.history_items)
    return EncodedBatch(
        values=values,
        length=length.astype(np.int32),
        max_len=config.max_len,
        aggregates=aggregates,
        history=history,
        history_length=history_length,
        history_items=config.history_items,
    )


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int32)
