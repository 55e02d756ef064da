"""Scoring for the service: events as columns -> the one encoder -> the predictor -> the inputs of the
business rules, with the online store's state laid over the events' view.

The encoder (`features.encoder.encode_columns`, the batch encoder's twin on columns, held to the same
answers by a test) and the rules (`features.policy.eligibility`) are the functions the feature job and
the offline policy evaluation call, so a customer is judged online exactly as the evaluation judged them.
Everything is vectorised over customers and nothing builds a DataFrame: `/v1/score` is a batch of one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np

from features.columns import EventColumns, to_us
from features.encoder import AGGREGATE_NAMES, EncodedBatch, encode_columns
from features.labels import cart_abandon_hours
from features.schema import ACTIONS, CONSENT_VALUE, MESSAGE_ACTIONS, SENT_MESSAGE_EVENTS
from predictor.interface import InferenceUnit, Predictions
from serving.decisions import utcnow as utcnow  # the clock, re-exported for the HTTP layer
from serving.store import SendState, from_us

# Runs the predictor on an encoded batch (the service passes its micro-batcher here).
Forward = Callable[[InferenceUnit, EncodedBatch, int], Predictions]


def direct_forward(predictor: InferenceUnit, batch: EncodedBatch, k: int) -> Predictions:
    return predictor.score(batch, k)


@dataclass
class Scored:
    """Model answers for a batch of customers, row-aligned with `customer_ids`.

    Attributes:
        events: every event the batch saw (stored and inline), sorted by customer then time.
        first, last: each row's slice of `events`.
    """

    customer_ids: list[str]
    now: list[datetime]
    batch: EncodedBatch
    pred: Predictions
    events: EventColumns
    first: np.ndarray
    last: np.ndarray

    def aggregates(self, i: int) -> dict[str, float]:
        return {name: float(self.batch.aggregates[name][i]) for name in AGGREGATE_NAMES}

    def recent(self, i: int, n: int = 3) -> list[tuple[str, str | None, datetime]]:
        """The last `n` events of row i before its scoring time (what the model saw), oldest first."""
        lo, hi = int(self.first[i]), int(self.last[i])
        seen = lo + int(np.searchsorted(self.events.ts_us[lo:hi], to_us(self.now[i]), side="left"))
        rows = range(max(lo, seen - n), seen)
        kinds, items = self.events["event_type"], self.events["item_id"]
        return [(str(kinds[j]), items[j], from_us(int(self.events.ts_us[j]))) for j in rows]


@dataclass(frozen=True)
class CartAnswer:
    """The model's cart-abandonment head as served: its name (`cart_abandon_<h>h`), its window in hours,
    and per row the probability where the customer has an open cart, NaN elsewhere."""

    head: str
    window_hours: int
    probability: np.ndarray


def cart_abandonment(scored: Scored) -> CartAnswer | None:
    """The cart-abandonment answer of a scored batch (None: the model has no such head).

    The head learned from customers with an open cart only (`features.labels`: the encoder's
    `open_cart` aggregate); for anyone else the question has no answer, whatever number the network
    gives, so the answer is NaN there (null in the API, empty in the audience export).
    """
    for name, p in scored.pred.propensity.items():
        hours = cart_abandon_hours(name)
        if hours is not None:
            is_open = np.asarray(scored.batch.aggregates["open_cart"]) >= 1
            return CartAnswer(name, hours, np.where(is_open, np.asarray(p, dtype=np.float64), np.nan))
    return None


def merge_events(stored: EventColumns, inline: Sequence[EventColumns]) -> EventColumns:
    """Stored and inline events together, sorted by (customer, time, arrival); an inline event already
    stored (same customer and event id) counts once."""
    extra = EventColumns.concat(list(inline))
    merged = EventColumns.concat([stored, extra.without_duplicates_of(stored)])
    return merged.sorted() if len(extra) else merged


def customer_slices(events: EventColumns, customer_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's (first, last) positions in events sorted by customer."""
    customers = events["customer_id"].astype(str)
    ids = np.asarray(customer_ids, dtype=object).astype(str)
    return np.searchsorted(customers, ids, side="left"), np.searchsorted(customers, ids, side="right")


def default_now(events: EventColumns, first: np.ndarray, last: np.ndarray, clock: datetime) -> list[datetime]:
    """Scoring time per customer: the clock, or just after their latest event if that is later (a
    platform's clock a little ahead of ours must not hide the event it just sent)."""
    out = []
    clock_us = to_us(clock)
    for lo, hi in zip(first, last, strict=True):
        latest = int(events.ts_us[lo:hi].max()) if hi > lo else None
        if latest is None or latest + 1_000 <= clock_us:
            out.append(clock)
        else:
            out.append(from_us(latest) + timedelta(milliseconds=1))
    return out


def score_customers(
    predictor: InferenceUnit,
    events: EventColumns,
    customer_ids: Sequence[str],
    now: Sequence[datetime],
    k: int,
    forward: Forward = direct_forward,
    slices: tuple[np.ndarray, np.ndarray] | None = None,
) -> Scored:
    """Encodes the customers' events (sorted by customer, time) and runs the model once for the batch."""
    ids = list(customer_ids)
    cutoff_ms = np.array([to_us(t) // 1000 for t in now], dtype=np.int64)
    batch = encode_columns(
        events, np.array(ids, dtype=object), cutoff_ms, predictor.vocab, predictor.encoder_config
    )
    k = max(1, min(k, predictor.catalogue_size))
    first, last = slices if slices is not None else customer_slices(events, ids)
    return Scored(ids, list(now), batch, forward(predictor, batch, k), events, first, last)


def inputs_digests(batch: EncodedBatch) -> list[str]:
    """sha256 of each row's model inputs (tokens and aggregates): what its decision was made on."""
    offsets = batch.offsets  # computed once: per row it would make the batch quadratic
    names = sorted(batch.values)
    values = {name: np.ascontiguousarray(batch.values[name]) for name in names}
    aggregates = np.column_stack([np.asarray(batch.aggregates[a], dtype=np.float64) for a in AGGREGATE_NAMES])
    out = []
    for i in range(len(batch)):
        h = hashlib.sha256()
        lo, hi = offsets[i], offsets[i + 1]
        for name in names:
            h.update(name.encode())
            h.update(values[name][lo:hi].tobytes())
        h.update(aggregates[i].tobytes())
        out.append(h.hexdigest()[:32])
    return out


@dataclass
class InlineState:
    """What a request's own events say that the rules read: the newest consent event and the last send
    of each action, per customer.

    Attributes:
        consent: customer -> (1.0 subscribed / 0.0 unsubscribed, when), the newest consent event (at the
            same time, the unsubscription).
        last_send: customer -> action -> the last send of it at or before the customer's time.
    """

    consent: dict[str, tuple[float, datetime]] = field(default_factory=dict)
    last_send: dict[str, dict[str, datetime]] = field(default_factory=dict)


def newer(a: tuple[float, datetime], b: tuple[float, datetime] | None) -> bool:
    """Whether consent `a` wins over `b`: the later event, and at the same time the unsubscription."""
    return b is None or (a[1], -a[0]) > (b[1], -b[0])


def inline_state(
    inline: EventColumns | None, extra: EventColumns | None, now: dict[str, datetime]
) -> InlineState:
    """The consent and sends of events not (yet) in the store.

    Args:
        inline: the requests' inline events: every consent event counts (the platform tells what the
            customer said, even stamped a little after the scoring time); sends count at or before now.
        extra: events read in bulk (the audience export's events file): only what happened before the
            customer's time counts, as in the encoder (a backtest must not see the future).
        now: each customer's scoring time.
    """
    out = InlineState()
    now_us = {c: to_us(t) for c, t in now.items()}
    for events, past_only in ((inline, False), (extra, True)):
        if events is None or not len(events):
            continue
        kinds, messages = events["event_type"], events["message_type"]
        is_consent = np.isin(kinds, list(CONSENT_VALUE))
        is_send = np.isin(kinds, list(SENT_MESSAGE_EVENTS)) & np.isin(messages, list(MESSAGE_ACTIONS))
        rows = np.flatnonzero(is_consent | is_send)
        if not len(rows):
            continue
        customers, ts = events["customer_id"][rows], events.ts_us[rows]
        limit = np.array([now_us.get(c, _UNKNOWN) for c in customers], dtype=np.int64)
        known = limit != _UNKNOWN
        consent = is_consent[rows] & known & ((ts < limit) if past_only else True)
        if consent.any():
            value = np.array([CONSENT_VALUE[k] for k in kinds[rows][consent]])
            for (c,), t, v in _latest([customers[consent]], ts[consent], -value):
                evidence = (-v, from_us(t))
                if newer(evidence, out.consent.get(c)):
                    out.consent[c] = evidence
        send = is_send[rows] & known & (ts <= limit)
        if send.any():
            groups = [customers[send], messages[rows][send]]
            for (c, action), t, _ in _latest(groups, ts[send], np.zeros(int(send.sum()))):
                kept = out.last_send.setdefault(c, {})
                at = from_us(t)
                if action not in kept or at > kept[action]:
                    kept[action] = at
    return out


_UNKNOWN = np.iinfo(np.int64).min  # a customer not in the batch


def _latest(
    groups: list[np.ndarray], ts: np.ndarray, tie: np.ndarray
) -> list[tuple[tuple[str, ...], int, float]]:
    """Per group (the rows' values of `groups`), the row with the largest (ts, tie): (group, ts, tie)."""
    keys = [g.astype(str) for g in groups]
    order = np.lexsort((tie, ts, *reversed(keys)))
    keys, ts, tie = [k[order] for k in keys], ts[order], tie[order]
    changed = np.zeros(len(ts), dtype=bool)
    changed[-1:] = True
    for k in keys:
        changed[:-1] |= k[1:] != k[:-1]
    rows = np.flatnonzero(changed)
    return [(tuple(str(k[j]) for k in keys), int(ts[j]), float(tie[j])) for j in rows]


@dataclass
class RuleInputs:
    """The aggregates the rules read, with the online store's state laid over the events' view.

    Attributes:
        aggregates: the encoder's aggregates, with consent, sends and the time since the last e-mail
            taken from the store (and the request's own events) where they know more.
        days_since_action: action -> (n,) days since that action was last sent (NaN: never).
        consent_ts: per row, the time of the consent evidence the rules read (None: none), which the
            store checks again when the decision is committed.
    """

    aggregates: dict[str, np.ndarray]
    days_since_action: dict[str, np.ndarray]
    consent_ts: list[datetime | None]


def rule_inputs(
    scored: Scored, states: dict[str, SendState], inline: InlineState | None = None
) -> RuleInputs:
    """Consent, sends in 7 / 28 days, the time since the last send and per action, from the store where it
    knows more.

    The store keeps consent and the send log beyond the last L events, and counts the decisions of
    every replica; the events seen by the encoder may include inline ones the store does not have yet.

    - Consent: the newest consent event by time wins, the store's or the request's own (at the same time,
      the unsubscription); the encoder's view where neither knows.
    - Sends in 7 / 28 days: the larger of the two counts.
    - Time since the last marketing send (the minimum gap reads it as `days_since_last_email`) and since
      the last send of each action (cooldowns): the most recent of the store's send log, the request's
      own sends and (for the gap) the encoder's view.
    """
    inline = inline or InlineState()
    agg = {
        name: np.asarray(scored.batch.aggregates[name], dtype=np.float64).copy() for name in AGGREGATE_NAMES
    }
    ids = scored.customer_ids
    n = len(ids)
    consent_ts: list[datetime | None] = []
    when: datetime | None
    for i, c in enumerate(ids):
        state, own = states[c], inline.consent.get(c)
        stored_at = state.consent_ts
        if own is not None and (
            state.consent < 0 or stored_at is None or newer(own, (state.consent, stored_at))
        ):
            value, when = own[0], own[1]
        elif state.consent >= 0:
            value, when = state.consent, stored_at
        else:
            consent_ts.append(None)
            continue
        agg["email_consent"][i] = value
        consent_ts.append(when)
    agg["emails_received_7d"] = np.maximum(agg["emails_received_7d"], [states[c].sends_7d for c in ids])
    agg["emails_received_28d"] = np.maximum(agg["emails_received_28d"], [states[c].sends_28d for c in ids])
    days: dict[str, np.ndarray] = {}
    last_any = np.full(n, np.nan)
    for action in ACTIONS:
        col = np.full(n, np.nan)
        for i, c in enumerate(ids):
            known = (states[c].last_send.get(action), inline.last_send.get(c, {}).get(action))
            last = max((t for t in known if t is not None), default=None)
            if last is not None:
                col[i] = (scored.now[i] - last).total_seconds() / 86_400
        days[action] = col
        last_any = np.fmin(last_any, col)
    agg["days_since_last_email"] = np.fmin(agg["days_since_last_email"], last_any)
    return RuleInputs(agg, days, consent_ts)
