"""The decision audit's judge: every marketing send checked against the rules, from the raw events.

Written apart from `features.policy` and `features.encoder` on purpose. The engine decides with those
modules; an audit that asked them again whether they were right could not catch a bug in them, nor a
decision that bypassed them (a race between two replicas, a client's clock, a history the store trimmed).
Here each rule is re-derived from the customer's full event history as the audit knows it (everything the
shop did plus everything the engine sent), with the thresholds of the same `RuleConfig`.

A send at time t is judged on the events strictly before t, as the engine sees them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from features.policy import RuleConfig
from features.schema import MESSAGE_ACTIONS

US_PER_HOUR = 3_600 * 1_000_000
US_PER_DAY = 24 * US_PER_HOUR
NEVER_DAYS = 365.0  # what the encoder reports for "never" (a cap on every days-since)

_SENT = frozenset({"email_sent", "sms_sent"})


@dataclass
class AuditCounts:
    """What the audit found; every count should be 0.

    Attributes:
        sends: marketing sends audited.
        opted_out: sends to a customer whose newest consent event before the send is not a signup.
        ineligible: per eligibility rule, sends to customers without the behaviour the action answers.
        gap: pairs of marketing messages (at least one the engine's) closer than the minimum gap.
        cooldown: pairs of the same action (at least one the engine's) closer than its cooldown.
        cap_7d, cap_28d: sends after which a window of 7 / 28 days holds more messages than the cap.
        future: sends stamped later than the server's clock (plus its tolerance) when the audit ended.
    """

    sends: int = 0
    opted_out: int = 0
    ineligible: Counter[str] = field(default_factory=Counter)
    gap: int = 0
    cooldown: int = 0
    cap_7d: int = 0
    cap_28d: int = 0
    future: int = 0

    @property
    def unsafe(self) -> int:
        return (
            self.opted_out
            + sum(self.ineligible.values())
            + self.gap
            + self.cooldown
            + self.cap_7d
            + self.cap_28d
            + self.future
        )


@dataclass
class _History:
    """One customer's events as sorted epoch-microsecond arrays per kind."""

    any_event: np.ndarray
    activity: np.ndarray
    signup: np.ndarray
    consent_ts: np.ndarray
    consent_value: np.ndarray  # 1 signup, 0 unsubscribe, aligned with consent_ts
    purchase: np.ndarray
    view: np.ndarray
    cart: np.ndarray


def _us(ts: pd.Series) -> np.ndarray:
    return np.asarray(pd.DatetimeIndex(ts).tz_convert("UTC").as_unit("us").asi8, dtype=np.int64)


def _history(ts: np.ndarray, et: np.ndarray) -> _History:
    consent = np.isin(et, ["newsletter_signup", "email_unsubscribe"])
    return _History(
        any_event=ts,
        activity=ts[~np.isin(et, list(_SENT))],
        signup=ts[np.isin(et, ["signup", "newsletter_signup"])],
        consent_ts=ts[consent],
        consent_value=(et[consent] == "newsletter_signup").astype(np.int8),
        purchase=ts[et == "purchase"],
        view=ts[et == "product_view"],
        cart=ts[et == "add_to_cart"],
    )


_FROM_THE_START = np.iinfo(np.int64).min


def _histories(events: pd.DataFrame) -> dict[str, list[tuple[int, _History]]]:
    """Per customer, (arrival time, history of the events known from then on), by arrival time.

    Events may arrive after they happened (a platform posts a day's events late): a decision is judged
    on what had arrived when it was made, as the engine could only see that. `known_at` (optional, NaT:
    known from the start) says when each event arrived.
    """
    if "known_at" in events:
        arrived = events["known_at"]
        stamps = _us(arrived.fillna(pd.Timestamp(0, tz="UTC")))
        known = np.where(arrived.isna().to_numpy(), _FROM_THE_START, stamps)
    else:
        known = np.full(len(events), _FROM_THE_START, dtype=np.int64)
    frame = pd.DataFrame(
        {
            "customer_id": events["customer_id"].astype(str).to_numpy(),
            "ts": _us(events["ts"]),
            "event_type": events["event_type"].astype(str).to_numpy(),
            "known": known,
        }
    ).sort_values(["customer_id", "ts"], kind="stable")
    out: dict[str, list[tuple[int, _History]]] = {}
    for customer, group in frame.groupby("customer_id", sort=False):
        ts, et, since = group["ts"].to_numpy(), group["event_type"].to_numpy(), group["known"].to_numpy()
        out[str(customer)] = [(int(a), _history(ts[since <= a], et[since <= a])) for a in np.unique(since)]
    return out


def _known_at(versions: list[tuple[int, _History]] | None, t: int) -> _History | None:
    """The customer's history as it stood at t (the latest arrival at or before t)."""
    if not versions:
        return None
    seen = [h for a, h in versions if a <= t]
    return seen[-1] if seen else None


def _before(times: np.ndarray, t: int) -> np.ndarray:
    return times[: np.searchsorted(times, t, side="left")]


def _days_since(times: np.ndarray, t: int) -> float:
    """Days from the last time before t to t, NEVER_DAYS when there is none (the encoder's convention)."""
    seen = _before(times, t)
    return NEVER_DAYS if len(seen) == 0 else min((t - int(seen[-1])) / US_PER_DAY, NEVER_DAYS)


def eligibility_failure(h: _History | None, t: int, action: str, rules: RuleConfig) -> str | None:
    """The eligibility rule a send of `action` at t breaks, re-derived from the raw events, or None."""
    if h is None:  # no event at all: only a welcome to a first contact could be right, and it has none
        return f"{action}: no history"
    purchases = _before(h.purchase, t)
    purchase_days = len(np.unique(purchases // US_PER_DAY))
    since_purchase = _days_since(h.purchase, t)
    tenure = (
        NEVER_DAYS
        if len(_before(h.any_event, t)) == 0
        else min((t - int(h.any_event[0])) / US_PER_DAY, NEVER_DAYS)
    )
    recency = _days_since(h.activity, t)
    ok: bool
    if action == "welcome_series":
        ok = min(_days_since(h.signup, t), tenure) <= rules.welcome_days
    elif action == "educational_content":
        ok = purchase_days == 0 and recency <= rules.educational_active_days
    elif action == "browse_abandonment":
        views_7d = len(_before(h.view, t)) - int(np.searchsorted(h.view, t - 7 * US_PER_DAY, side="left"))
        ok = views_7d >= 1 and since_purchase >= rules.browse_no_purchase_days
    elif action == "cart_abandonment":
        since_cart = _days_since(h.cart, t)
        ok = since_cart < 7 and since_cart < since_purchase
    elif action == "post_purchase_onboarding":
        ok = purchase_days >= 1 and since_purchase <= rules.onboarding_days
    elif action == "feedback_request":
        lo, hi = rules.feedback_window
        ok = purchase_days >= 1 and lo <= since_purchase <= hi
    elif action == "cross_sell":
        ok = purchase_days >= 1 and since_purchase <= rules.cross_sell_days
    elif action == "loyalty_reward":
        ok = purchase_days >= rules.loyalty_min_orders
    elif action == "winback_offer":
        ok = recency >= rules.winback_inactive_days and len(_before(h.activity, t)) > 0
        ok = ok and (purchase_days >= 1 or not rules.winback_requires_purchase)
    else:
        raise ValueError(f"unknown action {action!r}")
    return None if ok else action


def consented(h: _History | None, t: int, rules: RuleConfig) -> bool:
    """Whether the newest consent event before t is a signup (or consent is unknown and that is allowed)."""
    if h is None:
        return rules.unknown_consent_ok or not rules.require_consent
    n = int(np.searchsorted(h.consent_ts, t, side="left"))
    if n == 0:
        return rules.unknown_consent_ok or not rules.require_consent
    return bool(h.consent_value[n - 1]) or not rules.require_consent


def audit(
    events: pd.DataFrame,
    sends: pd.DataFrame,
    rules: RuleConfig,
    *,
    clock_end: pd.Timestamp | None = None,
    tolerance_s: float = 0.0,
) -> AuditCounts:
    """Judges the engine's marketing sends.

    Args:
        events: every event the audit knows of (customer_id, ts, event_type, message_type, and optionally
            known_at: when it reached the service, NaT for from the start): the shop's history and what
            was posted to the service, but not the engine's own sends.
        sends: the engine's decisions that sent something: customer_id, ts, action.
        rules: the rules the engine was configured with.
        clock_end: the server's clock when the audit ended (sends stamped after it plus the tolerance
            count as `future`).
        tolerance_s: the service's accepted clock skew.
    """
    histories = _histories(events)
    counts = AuditCounts(sends=len(sends))
    engine = pd.DataFrame(
        {
            "customer_id": sends["customer_id"].astype(str).to_numpy(),
            "ts": _us(sends["ts"]),
            "action": sends["action"].astype(str).to_numpy(),
            "engine": True,
        }
    )
    is_send = events["event_type"].astype(str).isin(_SENT) & events["message_type"].isin(MESSAGE_ACTIONS)
    earlier = events[is_send]
    shop = pd.DataFrame(
        {
            "customer_id": earlier["customer_id"].astype(str).to_numpy(),
            "ts": _us(earlier["ts"]),
            "action": earlier["message_type"].astype(str).to_numpy(),
            "engine": False,
        }
    )
    if clock_end is not None:
        limit = _us(pd.Series([clock_end]))[0] + int(tolerance_s * 1_000_000)
        counts.future = int((engine["ts"] > limit).sum())

    columns = (engine[c].to_numpy() for c in ("customer_id", "ts", "action"))
    for customer, ts_us, action in zip(*columns, strict=True):
        h = _known_at(histories.get(str(customer)), int(ts_us))
        if not consented(h, int(ts_us), rules):
            counts.opted_out += 1
        broken = eligibility_failure(h, int(ts_us), str(action), rules)
        if broken is not None:
            counts.ineligible[broken] += 1

    log = pd.concat([shop, engine], ignore_index=True).sort_values(["customer_id", "ts"], kind="stable")
    gap_us = int(rules.min_gap_hours * US_PER_HOUR)
    for _, group in log.groupby("customer_id", sort=False):
        ts, mine = group["ts"].to_numpy(), group["engine"].to_numpy()
        if len(ts) > 1:
            close = (np.diff(ts) < gap_us) & (mine[1:] | mine[:-1])
            counts.gap += int(close.sum())
        for action, same in group.groupby("action", sort=False):
            t_a, m_a = same["ts"].to_numpy(), same["engine"].to_numpy()
            if len(t_a) > 1:
                cool = int(rules.cooldown_hours(str(action)) * US_PER_HOUR)
                counts.cooldown += int(((np.diff(t_a) < cool) & (m_a[1:] | m_a[:-1])).sum())
        if mine.any():
            for days, cap, name in (
                (7, rules.max_emails_7d, "cap_7d"),
                (28, rules.max_emails_28d, "cap_28d"),
            ):
                # Messages in the window (s - days, s] ending at each send s; a window that holds an engine
                # send and more than the cap messages is a breach, counted once at its last send.
                lo = np.searchsorted(ts, ts - days * US_PER_DAY, side="right")
                n_in = np.arange(1, len(ts) + 1) - lo
                has_engine = np.array(
                    [mine[a : b + 1].any() for a, b in zip(lo, range(len(ts)), strict=True)]
                )
                setattr(counts, name, getattr(counts, name) + int(((n_in > cap) & has_engine).sum()))
    return counts
