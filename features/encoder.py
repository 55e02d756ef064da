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

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.arrays import cents, factorize_sorted, last_index, prefix_sum, to_epoch_ms
from features.columns import EventColumns
from features.schema import EVENT_TYPES, SHOP_SENT_EVENTS, EventType
from features.vocab import FIRST, Vocabulary

MS_PER_DAY = 86_400_000

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

# Aggregates: (name, event types counted, window in days or None for all history).
_ET = EventType
COUNT_AGGREGATES: tuple[tuple[str, frozenset[str] | None, int | None], ...] = (
    ("n_events", None, None),
    ("n_events_28d", None, 28),
    ("n_purchases", frozenset({_ET.PURCHASE}), None),
    ("n_purchases_90d", frozenset({_ET.PURCHASE}), 90),
    ("n_refunds", frozenset({_ET.REFUND}), None),
    ("n_product_views_7d", frozenset({_ET.PRODUCT_VIEW}), 7),
    ("n_product_views_28d", frozenset({_ET.PRODUCT_VIEW}), 28),
    ("n_searches_28d", frozenset({_ET.SEARCH}), 28),
    ("n_carts_7d", frozenset({_ET.ADD_TO_CART}), 7),
    ("n_carts_28d", frozenset({_ET.ADD_TO_CART}), 28),
    ("n_checkouts_28d", frozenset({_ET.CHECKOUT_START}), 28),
    ("n_email_opens_28d", frozenset({_ET.EMAIL_OPEN}), 28),
    ("n_email_clicks_28d", frozenset({_ET.EMAIL_CLICK}), 28),
    ("emails_received_7d", frozenset({_ET.EMAIL_SENT}), 7),
    ("emails_received_28d", frozenset({_ET.EMAIL_SENT}), 28),
)
AGGREGATE_NAMES: tuple[str, ...] = (
    *(name for name, _, _ in COUNT_AGGREGATES),
    "monetary",
    "recency_days",
    "tenure_days",
    "n_purchase_days",
    "days_since_last_purchase",
    "days_since_signup",
    "days_since_last_email",
    "open_cart",
    "email_consent",
)
# Days reported when something never happened (recency of a customer with no activity, ...).
NEVER_DAYS = 365.0


@dataclass(frozen=True)
class EncoderConfig:
    """How sequences are cut and tokenised.

    Attributes:
        max_len: events kept per sequence (the most recent ones, left-padded).
    """

    max_len: int = 50


@dataclass
class PreparedEvents:
    """Events of some customers sorted by (customer, ts), with their tokens and search keys.

    Build it with `prepare`; both `encode_prepared` and the hindsight labels read it.
    """

    customers: np.ndarray  # (n_customers,) sorted unique customer ids (object)
    cust: np.ndarray  # (n_events,) int64 index into `customers`
    ts_ms: np.ndarray  # (n_events,) int64 epoch milliseconds
    key: np.ndarray  # (n_events,) int64, increasing: cust * span + (ts_ms - base)
    base: int
    span: int
    event_type: np.ndarray  # (n_events,) int16 index into EVENT_TYPES, -1 for none
    tokens: dict[str, np.ndarray]  # field -> (n_events,) int32 token
    value: np.ndarray  # (n_events,) float64, NaN where none
    item_token: np.ndarray  # (n_events,) int32 item vocabulary index

    @property
    def n_events(self) -> int:
        return len(self.ts_ms)

    def customer_codes(self, customer_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Index of each id in `customers`, -1 for a customer without events."""
        if isinstance(customer_ids, pd.Series):
            ids = customer_ids.astype(str).to_numpy(dtype=object)
        else:
            ids = np.asarray(customer_ids, dtype=object)
        if len(self.customers) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.customers, ids)
        pos = np.minimum(pos, len(self.customers) - 1)
        found = self.customers[pos] == ids
        return np.where(found, pos, -1).astype(np.int64)

    def search(self, cust: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """Position of the first event of customer `cust` at or after `t_ms` (vectorised).

        Customers without events (code -1) get position 0 with an empty range; callers pair this with
        `starts` so that their counts are zero.
        """
        t = np.clip(t_ms - self.base, -1, self.span - 1)
        keys = np.where(cust >= 0, cust * self.span + t, -(2**62))
        pos = np.searchsorted(self.key, keys, side="left")
        return np.where(cust >= 0, pos, 0)

    def starts(self, cust: np.ndarray) -> np.ndarray:
        """Position of each customer's first event (0 for unknown customers)."""
        return np.where(cust >= 0, self.search(cust, np.full(len(cust), self.base - 1)), 0)


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
    """

    values: dict[str, np.ndarray]
    length: np.ndarray
    max_len: int
    aggregates: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.length)

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
    return EncodedBatch(
        values=values, length=length.astype(np.int32), max_len=config.max_len, aggregates=aggregates
    )


def _aggregates(
    prep: PreparedEvents, cust: np.ndarray, start: np.ndarray, end: np.ndarray, t_ms: np.ndarray
) -> dict[str, np.ndarray]:
    """Recency, frequency, monetary value and engagement counts before each cutoff."""
    et = prep.event_type
    activity = ~_of_types(et, SHOP_SENT_EVENTS)
    out: dict[str, np.ndarray] = {}
    window_start: dict[int | None, np.ndarray] = {None: start}
    for name, types, days in COUNT_AGGREGATES:
        mask = activity if types is None else _of_types(et, types)
        csum = prefix_sum(mask.astype(np.int64))
        if days is not None and days not in window_start:
            window_start[days] = np.maximum(start, prep.search(cust, t_ms - days * MS_PER_DAY))
        out[name] = (csum[end] - csum[window_start[days]]).astype(np.float64)

    purchase = et == EVENT_TYPES.index(EventType.PURCHASE)
    refund = et == EVENT_TYPES.index(EventType.REFUND)
    money = np.where(purchase, cents(prep.value), 0) - np.where(refund, np.abs(cents(prep.value)), 0)
    msum = prefix_sum(money)
    out["monetary"] = (msum[end] - msum[start]) / 100.0

    def days_since(mask: np.ndarray) -> np.ndarray:
        last = last_index(mask)
        idx = np.where(end > start, last[np.maximum(end - 1, 0)] if len(last) else -1, -1)
        ok = (idx >= start) & (idx >= 0)
        ts = prep.ts_ms[np.maximum(idx, 0)] if len(prep.ts_ms) else np.zeros(len(idx))
        return np.where(ok, np.minimum((t_ms - ts) / MS_PER_DAY, NEVER_DAYS), NEVER_DAYS)

    out["recency_days"] = days_since(activity)
    first_ts = (
        prep.ts_ms[np.minimum(start, max(prep.n_events - 1, 0))] if prep.n_events else np.zeros(len(end))
    )
    out["tenure_days"] = np.where(end > start, np.minimum((t_ms - first_ts) / MS_PER_DAY, NEVER_DAYS), 0.0)
    out["days_since_last_purchase"] = days_since(purchase)
    # Orders, roughly: days with a purchase. A multi-item order (one purchase event per item, as UCI's
    # invoice lines) is one purchase day, so "repeat buyer" rules are not fooled by a big basket.
    day = prep.ts_ms // MS_PER_DAY
    new_day = np.ones(len(day), dtype=bool)
    if len(day):
        last_purchase = last_index(purchase)
        previous = np.concatenate([[-1], last_purchase[:-1]])
        same = (
            (previous >= 0)
            & (prep.cust[np.maximum(previous, 0)] == prep.cust)
            & (day[np.maximum(previous, 0)] == day)
        )
        new_day = ~same
    dsum = prefix_sum((purchase & new_day).astype(np.int64))
    out["n_purchase_days"] = (dsum[end] - dsum[start]).astype(np.float64)
    signup = _of_types(et, frozenset({EventType.SIGNUP, EventType.NEWSLETTER_SIGNUP}))
    out["days_since_signup"] = days_since(signup)
    out["days_since_last_email"] = days_since(et == EVENT_TYPES.index(EventType.EMAIL_SENT))

    # An open cart: something added since the last purchase, within the last 7 days.
    cart = et == EVENT_TYPES.index(EventType.ADD_TO_CART)
    since_cart = days_since(cart)
    out["open_cart"] = ((since_cart < 7) & (since_cart < out["days_since_last_purchase"])).astype(np.float64)

    # E-mail consent from the last consent event: 1 subscribed, 0 unsubscribed, -1 unknown.
    subscribe = et == EVENT_TYPES.index(EventType.NEWSLETTER_SIGNUP)
    unsubscribe = et == EVENT_TYPES.index(EventType.EMAIL_UNSUBSCRIBE)
    last = last_index(subscribe | unsubscribe)
    idx = np.where(end > start, last[np.maximum(end - 1, 0)] if len(last) else -1, -1)
    known = (idx >= start) & (idx >= 0)
    subscribed = subscribe[np.maximum(idx, 0)] if len(subscribe) else np.zeros(len(idx), dtype=bool)
    out["email_consent"] = np.where(known, subscribed.astype(np.float64), -1.0)
    return {name: out[name] for name in AGGREGATE_NAMES}


def _of_types(event_type: np.ndarray, types: frozenset[str]) -> np.ndarray:
    """Whether each event (index into EVENT_TYPES, -1 for none) is of one of `types`: a table lookup,
    which on the real-time path's few events costs far less than `np.isin`'s sort."""
    table = np.zeros(len(EVENT_TYPES) + 1, dtype=bool)
    table[[EVENT_TYPES.index(e) + 1 for e in types]] = True
    return table[event_type.astype(np.int64) + 1]


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int32)
