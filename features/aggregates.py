"""Aggregates of a customer's events before a cutoff: recency, frequency, monetary value, engagement counts.

Part of the one encoder (`features.encoder.encode_at` calls `aggregates`); apart only to keep modules short.
Point-in-time: events strictly before the cutoff, as everywhere in the encoder.
"""

from __future__ import annotations

import numpy as np

from features.arrays import cents, is_open_cart, last_index, prefix_sum
from features.prepared import PreparedEvents
from features.schema import EVENT_TYPES, SHOP_SENT_EVENTS, EventType

MS_PER_DAY = 86_400_000
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


def aggregates(
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

    cart = et == EVENT_TYPES.index(EventType.ADD_TO_CART)
    out["open_cart"] = is_open_cart(days_since(cart), out["days_since_last_purchase"]).astype(np.float64)

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
