"""Hindsight labels: what happened at and after each cutoff.

Real data carries no stage labels, so the stage is a documented, configurable function of the customer's
events before and after the cutoff (DESIGN.md, "Journey stages"). They are hindsight targets: the rules may
look on both sides of the cutoff, the model only ever sees the events before it.

Two counts make the rules hold across data sources:

* an *order* is a day (UTC) with at least one purchase event. A shop that logs one purchase event per item
  (the simulator, most web trackers) or per invoice line (UCI Online Retail) logs one basket as many
  events; a customer who bought twice came back twice, on two days.
* an *active day* is a day with at least one event the customer did (anything but the shop's own sends,
  `SHOP_SENT_EVENTS`). One visit logs many page and product views, so days, not events, measure how often
  someone comes back; an e-mail open is a sign of life too.

*First contact* is the customer's first event of any kind (a signup, a visit, or the first e-mail the shop
sent them). The rules, first match wins (`t` is the cutoff, every number a `LabelConfig` setting):

1. post_purchase: an order in the `post_purchase_days` (7) before t; or, for a customer with at most
   `feedback_max_orders` (2) orders in the `loyal_days` (365) before t, an order in the `feedback_days` (21)
   before t and a review or support contact in the `post_purchase_days` either side of t. The week after an
   order is the delivery and first-use window of any shop; feedback (a review, a question to support) is
   what a new buyer does while still in it, so it extends the stage to three weeks, the usual
   delivery-plus-return period. A frequent buyer's review is routine, not onboarding, and a stage of "just
   bought" that lasted a month would swallow repeat buyers between their orders.
2. decision: an order in the `decision_days` (3) after t, or at least `decision_min_cart_events` (3)
   add-to-cart or checkout events on days without an order within `decision_days` either side of t.
   Deciding is the short last step of the funnel: a purchase within days means the customer was deciding at
   t, one two weeks later means they were still comparing (purchase_7d and purchase_30d are separate
   labels). Repeated carts or checkouts that did not end in an order that day are abandoned purchase
   intent, what cart-abandonment e-mails are for; one stray add-to-cart is not.
3. awareness: first contact less than `awareness_days` (14) before t, no order before t, and fewer than
   `consideration_min_events` (6) product views, searches or carts in the `consideration_days` (7) either
   side of t. New contact only: two weeks is the span of a welcome series. A new contact already comparing
   products (about one product view or search a day) is considering, not merely aware.
4. at_risk: at most `at_risk_max_active_days` (2) active days in the `at_risk_days` (7) either side of t,
   or at most `quiet_max_active_days` (1) in the `quiet_days` (14) after t. Inactivity, not purchases,
   defines it: whoever once came back week after week and now shows up on two days in a fortnight (or once
   in the two weeks that follow) is lapsing, whether or not they ever bought; win-back is for all of them.
   A window around t (rather than only after it) separates a customer whose activity has already faded from
   one who merely has a quiet week. For data with purchases only (UCI), every day without an order is
   inactive: widen `at_risk_days` and `quiet_days` to the shop's order cycle (e.g. 60 and 90 days).
5. loyal: at least `loyal_min_orders` (2) orders in the `loyal_days` (365) before t, the latest within the
   `loyal_recent_days` (45) before t. A repeat buyer who is still buying: orders on two different days in
   a year, the latest in the last six weeks, so that the buying habit is current; a customer who bought
   twice long ago and is only browsing now is considering the next purchase.
6. consideration: everybody else, an established contact who is active: browsing, comparing, returning.

Why this order: orders are the surest evidence a shop has, so the stages anchored on them come first
(whoever just bought is in the post-purchase window even if they buy again this week); a new contact who
is quiet has not lapsed from anything, so awareness comes before at_risk; and at_risk comes before loyal
because a repeat buyer gone quiet is exactly whom win-back is for.

The next-item label is the distinct items of the customer's `next_item_events` in the `next_items_days`
(30) after t, in order of first occurrence. By default purchases (what to recommend is what they will
buy); a shop that logs no purchases (a click stream, a content site) has an empty label that way, and a
model trained on it never learns the head, so such a shop names the behaviour to predict instead
(`[product_view]`, or carts, or e-mail clicks that carry an item).

The cart-abandonment label (`cart_abandon_<h>h`, h = `cart_abandon_hours`, 24 by default) is what
marketers ask for by name: for a customer with an open cart at t (`features.arrays.is_open_cart`, the
encoder's `open_cart` aggregate: something added to the cart since the last purchase, within the last 7
days), 1 if nothing is bought in the h hours after t, 0 if it is; null (no label) for a customer without an
open cart, so its head learns from, and is judged on, customers with an open cart only. Any purchase counts
as buying the cart, as any purchase closes it in the open-cart definition: a shopper who swaps a size or
a colour at checkout has not abandoned, and purchase events do not always repeat the cart's items one for
one (UCI's invoice lines). `cart_abandon_hours: null` drops the label (a shop that logs no carts).

The model only ever sees events before the cutoff; these labels are its targets.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.arrays import cents, is_open_cart, last_index, prefix_sum, to_epoch_ms
from features.encoder import MS_PER_DAY, NEVER_DAYS, PreparedEvents
from features.schema import ACTIONS, EVENT_TYPES, SHOP_SENT_EVENTS, STAGES, EventType, Stage


@dataclass(frozen=True)
class LabelConfig:
    """Horizons (days) and thresholds of the hindsight labels (the stage rules: see the module doc)."""

    decision_days: int = 3
    decision_min_cart_events: int = 3
    post_purchase_days: int = 7
    feedback_days: int = 21
    feedback_max_orders: int = 2
    awareness_days: int = 14
    consideration_days: int = 7
    consideration_min_events: int = 6
    at_risk_days: int = 7
    at_risk_max_active_days: int = 2
    quiet_days: int = 14
    quiet_max_active_days: int = 1
    loyal_min_orders: int = 2
    loyal_days: int = 365
    loyal_recent_days: int = 45
    churn_days: int = 30
    purchase_horizons: tuple[int, ...] = (7, 30)
    next_items_days: int = 30
    max_next_items: int = 20
    # The behaviour the next-item head learns: the items of these events in the `next_items_days` after t.
    next_item_events: tuple[str, ...] = (EventType.PURCHASE.value,)
    # A logged decision belongs to the cutoff when it was made within this many days after it.
    decision_window_days: int = 1
    outcome_days: int = 7
    # Cart abandonment: an open cart not bought within this many hours after t (None: no such label).
    cart_abandon_hours: int | None = 24

    def __post_init__(self) -> None:
        hours = self.cart_abandon_hours
        if hours is not None and (isinstance(hours, bool) or not isinstance(hours, int) or hours < 1):
            raise ValueError(
                f"labels.cart_abandon_hours: {hours!r} is not a whole number of hours >= 1 "
                "(null: no cart-abandonment label)"
            )
        # YAML and `--set` give a list or one name; the manifest gives a list: the config keeps a tuple.
        given = self.next_item_events
        events = (given,) if isinstance(given, str) else tuple(given)
        object.__setattr__(self, "next_item_events", events)
        if not events:
            raise ValueError("labels.next_item_events: needs at least one event type, e.g. [purchase]")
        for name in events:
            if name in SHOP_SENT_EVENTS:
                raise ValueError(
                    f"labels.next_item_events: {name!r} is a message the shop sent, not something the "
                    f"customer chose; use one of {', '.join(NEXT_ITEM_EVENT_TYPES)}"
                )
            if name not in NEXT_ITEM_EVENT_TYPES:
                raise ValueError(
                    f"labels.next_item_events: unknown event type {name!r}; use one of "
                    f"{', '.join(NEXT_ITEM_EVENT_TYPES)}"
                )

    @property
    def horizon_days(self) -> int:
        """How far after a cutoff the labels look: later cutoffs cannot be labelled."""
        return max(
            self.decision_days,
            self.post_purchase_days,
            self.consideration_days,
            self.at_risk_days,
            self.quiet_days,
            self.churn_days,
            self.next_items_days,
            *self.purchase_horizons,
            math.ceil((self.cart_abandon_hours or 0) / 24),
        )


# What a next-item label may be made of: any event the customer did (only those with an item count).
NEXT_ITEM_EVENT_TYPES: tuple[str, ...] = tuple(e for e in EVENT_TYPES if e not in SHOP_SENT_EVENTS)
DECISION_COLUMNS = ("decision_id", "customer_id", "ts", "action", "propensity")
_CART_ABANDON = re.compile(r"cart_abandon_(\d+)h")


def cart_abandon_target(hours: int) -> str:
    """The cart-abandonment label's column for a window of `hours`: the window is in its name."""
    return f"cart_abandon_{int(hours)}h"


def cart_abandon_hours(name: str) -> int | None:
    """The window of a cart-abandonment head from its name (None: not such a head)."""
    found = _CART_ABANDON.fullmatch(name)
    return int(found.group(1)) if found else None


def hindsight_labels(
    prep: PreparedEvents,
    cutoffs: pd.DataFrame,
    config: LabelConfig,
    decisions: pd.DataFrame | None = None,
) -> dict[str, pa.Array]:
    """Labels for each (customer_id, cutoff) row.

    Args:
        prep: the customers' events, prepared by `features.encoder.prepare`.
        cutoffs: columns customer_id and cutoff.
        config: horizons and stage rules.
        decisions: optional decision log (decision_id, customer_id, ts, action, propensity): the logged
            send (or no_send) made at each cutoff, with the probability the logging policy gave it.

    Returns:
        Column name -> Arrow array aligned with `cutoffs`.
    """
    cust = prep.customer_codes(cutoffs["customer_id"])
    t = to_epoch_ms(cutoffs["cutoff"])
    et = prep.event_type
    start = prep.starts(cust)
    at_t = prep.search(cust, t)

    def count(mask: np.ndarray, lo_ms: np.ndarray, hi_ms: np.ndarray) -> np.ndarray:
        csum = prefix_sum(mask.astype(np.int64))
        lo = np.maximum(prep.search(cust, lo_ms), start)
        return csum[prep.search(cust, hi_ms)] - csum[lo]

    def is_type(*types: str) -> np.ndarray:
        return np.isin(et, [EVENT_TYPES.index(x) for x in types])

    purchase = is_type(EventType.PURCHASE)
    activity = ~is_type(*SHOP_SENT_EVENTS)
    day = MS_PER_DAY
    out: dict[str, pa.Array] = {}
    for h in config.purchase_horizons:
        out[f"purchase_{h}d"] = pa.array(count(purchase, t, t + h * day) > 0)
    active_after = count(activity, t, t + config.churn_days * day) > 0
    out[f"churn_{config.churn_days}d"] = pa.array(~active_after)
    if config.cart_abandon_hours is not None:
        cart = is_type(EventType.ADD_TO_CART)
        open_cart = is_open_cart(
            _days_since(prep, cart, start, at_t, t), _days_since(prep, purchase, start, at_t, t)
        )
        bought = count(purchase, t, t + config.cart_abandon_hours * 3_600_000) > 0
        out[cart_abandon_target(config.cart_abandon_hours)] = pa.array(~bought, mask=~open_cart)
    # First contact: the customer's first event of any kind; none before the cutoff counts as new.
    seen = (cust >= 0) & (at_t > start)
    first_contact = np.where(seen, prep.ts_ms[np.minimum(start, max(prep.n_events - 1, 0))], t)
    out["stage"] = _stage(prep, t, first_contact, config, count, is_type, purchase, activity)
    chosen = is_type(*config.next_item_events)
    out["next_items"] = _next_items(prep, cust, t, t + config.next_items_days * day, chosen, config)
    out.update(_logged_decisions(prep, cust, cutoffs, t, config, decisions, purchase))
    return out


def _days_since(
    prep: PreparedEvents, mask: np.ndarray, start: np.ndarray, at_t: np.ndarray, t: np.ndarray
) -> np.ndarray:
    """Days from each row's last `mask` event before t to t, capped at `NEVER_DAYS` (also where none), as
    the encoder's aggregates measure them."""
    last = last_index(mask)
    idx = last[np.maximum(at_t - 1, 0)] if len(last) else np.full(len(t), -1)
    idx = np.where(at_t > start, idx, -1)
    ok = (idx >= start) & (idx >= 0)
    ts = prep.ts_ms[np.maximum(idx, 0)] if prep.n_events else np.zeros(len(t))
    return np.where(ok, np.minimum((t - ts) / MS_PER_DAY, NEVER_DAYS), NEVER_DAYS)


def _first_of_day(prep: PreparedEvents, mask: np.ndarray) -> np.ndarray:
    """Marks the first event of `mask` of each customer-day (UTC): counting them counts days."""
    idx = np.flatnonzero(mask)
    days = prep.ts_ms[idx] // MS_PER_DAY
    first = np.ones(len(idx), dtype=bool)
    first[1:] = (prep.cust[idx][1:] != prep.cust[idx][:-1]) | (days[1:] != days[:-1])
    out = np.zeros(len(mask), dtype=bool)
    out[idx[first]] = True
    return out


def _stage(
    prep: PreparedEvents,
    t: np.ndarray,
    first_contact: np.ndarray,
    config: LabelConfig,
    count: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    is_type: Callable[..., np.ndarray],
    purchase: np.ndarray,
    activity: np.ndarray,
) -> pa.Array:
    """The stage rules of the module doc, first match wins."""
    day = MS_PER_DAY
    order = _first_of_day(prep, purchase)
    active_day = _first_of_day(prep, activity)
    # Carts and checkouts on a day without an order: purchase intent that did not end in a purchase.
    day_index = prep.ts_ms // day - prep.base // day  # UTC days since the first event's day: 0, 1, ...
    cust_day = prep.cust.astype(np.int64) * (prep.span // day + 2) + day_index
    on_order_day = np.isin(cust_day, cust_day[purchase])
    open_cart = is_type(EventType.ADD_TO_CART, EventType.CHECKOUT_START) & ~on_order_day
    interest = is_type(EventType.PRODUCT_VIEW, EventType.SEARCH, EventType.ADD_TO_CART)
    feedback = is_type(EventType.REVIEW, EventType.SUPPORT_CONTACT)

    def around(mask: np.ndarray, days: int) -> np.ndarray:
        return count(mask, t - days * day, t + days * day)

    orders_before = count(order, np.full(len(t), np.iinfo(np.int64).min // 2), t)
    new_contact = first_contact > t - config.awareness_days * day

    post_purchase = count(order, t - config.post_purchase_days * day, t) > 0
    post_purchase |= (
        (count(order, t - config.feedback_days * day, t) > 0)
        & (around(feedback, config.post_purchase_days) > 0)
        & (count(order, t - config.loyal_days * day, t) <= config.feedback_max_orders)
    )
    decision = count(order, t, t + config.decision_days * day) > 0
    decision |= around(open_cart, config.decision_days) >= config.decision_min_cart_events
    awareness = (
        new_contact
        & (orders_before == 0)
        & (around(interest, config.consideration_days) < config.consideration_min_events)
    )
    at_risk = around(active_day, config.at_risk_days) <= config.at_risk_max_active_days
    at_risk |= count(active_day, t, t + config.quiet_days * day) <= config.quiet_max_active_days
    loyal = (count(order, t - config.loyal_days * day, t) >= config.loyal_min_orders) & (
        count(order, t - config.loyal_recent_days * day, t) > 0
    )
    conditions = [post_purchase, decision, awareness, at_risk, loyal]
    choices = [Stage.POST_PURCHASE, Stage.DECISION, Stage.AWARENESS, Stage.AT_RISK, Stage.LOYAL]
    stage = np.select(
        conditions, [STAGES.index(c) for c in choices], default=STAGES.index(Stage.CONSIDERATION)
    )
    return pa.DictionaryArray.from_arrays(pa.array(stage, pa.int8()), pa.array(STAGES)).cast(pa.string())


def _next_items(
    prep: PreparedEvents,
    cust: np.ndarray,
    lo_ms: np.ndarray,
    hi_ms: np.ndarray,
    chosen: np.ndarray,
    config: LabelConfig,
) -> pa.Array:
    """Distinct items of the `chosen` events (`next_item_events`: by default purchases) in [lo, hi), in
    order of their first such event, at most `max_next_items`; events without an item do not count."""
    idx = np.flatnonzero(chosen & (prep.item_token > 0))
    pos_lo = prep.search(cust, lo_ms)
    pos_hi = prep.search(cust, hi_ms)
    # Index of chosen events inside [pos_lo, pos_hi): positions in `idx` via searchsorted on event positions.
    lo = np.searchsorted(idx, pos_lo, side="left")
    hi = np.searchsorted(idx, pos_hi, side="left")
    n = np.where(cust >= 0, hi - lo, 0)
    rows = np.repeat(np.arange(len(cust)), n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    items = prep.item_token[idx[np.repeat(lo, n) + within]] if len(rows) else np.zeros(0, dtype=np.int32)
    frame = pd.DataFrame({"row": rows, "item": items}).drop_duplicates(keep="first")
    frame = frame[frame.groupby("row").cumcount() < config.max_next_items]
    counts = np.bincount(frame["row"].to_numpy(), minlength=len(cust))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(frame["item"].to_numpy(dtype=np.int32)))


def _logged_decisions(
    prep: PreparedEvents,
    cust: np.ndarray,
    cutoffs: pd.DataFrame,
    t: np.ndarray,
    config: LabelConfig,
    decisions: pd.DataFrame | None,
    purchase: np.ndarray,
) -> dict[str, pa.Array]:
    """The decision logged at each cutoff (if any), its propensity and its outcome."""
    n = len(cutoffs)
    if decisions is None or decisions.empty:
        return {
            "decision_id": pa.nulls(n, pa.string()),
            "logged_action": pa.nulls(n, pa.string()),
            "logged_propensity": pa.nulls(n, pa.float64()),
            "outcome_purchase": pa.nulls(n, pa.bool_()),
            "outcome_revenue": pa.nulls(n, pa.float64()),
            "outcome_unsubscribe": pa.nulls(n, pa.bool_()),
        }
    left = pd.DataFrame({"row": np.arange(n), "customer_id": cutoffs["customer_id"].astype(str).to_numpy(),
                         "t": t})  # fmt: skip
    right = pd.DataFrame(
        {
            "customer_id": decisions["customer_id"].astype(str).to_numpy(),
            "t": to_epoch_ms(decisions["ts"]),
            "decision_id": decisions["decision_id"].astype(str).to_numpy(),
            "action": decisions["action"].astype(str).to_numpy(),
            "propensity": decisions["propensity"].astype(float).to_numpy(),
        }
    )
    right["decision_ms"] = right["t"]
    unknown = sorted(set(right["action"]) - set(ACTIONS))
    if unknown:
        raise ValueError(f"decision log: unknown action(s) {unknown}; expected one of {list(ACTIONS)}")
    merged = pd.merge_asof(
        left.sort_values("t"),
        right.sort_values("t"),
        on="t",
        by="customer_id",
        direction="forward",
        tolerance=config.decision_window_days * MS_PER_DAY - 1,
    ).sort_values("row")
    has = merged["decision_id"].notna().to_numpy()
    mask = ~has
    d_ms = np.where(has, merged["decision_ms"].fillna(0).to_numpy(dtype=np.int64), t)
    hi = d_ms + config.outcome_days * MS_PER_DAY
    pos_lo, pos_hi = prep.search(cust, d_ms), prep.search(cust, hi)
    csum = prefix_sum(purchase.astype(np.int64))
    bought = (csum[pos_hi] - csum[pos_lo]) > 0
    rsum = prefix_sum(np.where(purchase, cents(prep.value), 0))
    revenue = (rsum[pos_hi] - rsum[pos_lo]) / 100.0
    unsub = prep.event_type == EVENT_TYPES.index(EventType.EMAIL_UNSUBSCRIBE)
    usum = prefix_sum(unsub.astype(np.int64))
    unsubscribed = (usum[pos_hi] - usum[pos_lo]) > 0
    return {
        "decision_id": pa.array(merged["decision_id"].to_numpy(dtype=object), pa.string(), mask=mask),
        "logged_action": pa.array(merged["action"].to_numpy(dtype=object), pa.string(), mask=mask),
        "logged_propensity": pa.array(merged["propensity"].to_numpy(dtype=np.float64), mask=mask),
        "outcome_purchase": pa.array(bought, mask=mask),
        "outcome_revenue": pa.array(revenue, mask=mask),
        "outcome_unsubscribe": pa.array(unsubscribed, mask=mask),
    }
