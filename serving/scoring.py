"""Scoring and deciding for the service: events -> the one encoder -> the model -> business rules -> the
policy's draw -> a recorded decision.

The encoder (`features.encoder.encode`) and the rules (`features.policy.eligibility`) are the functions
the feature job and the offline policy evaluation call, so a customer is judged online exactly as the
evaluation judged them. Everything here is vectorised over customers: `/v1/score` is a batch of one.

The policy logs a propensity for every decision. A customer in the control group (stable per id) always
gets no_send; everyone else gets the greedy eligible action, explored a little. Control membership is a
hash of the id, which across customers behaves like a coin with P(control) = control_share, so the
logged propensity of the action taken is the marginal

    p(a) = control_share * [a = no_send] + (1 - control_share) * pi(a | eligible actions, uplift),

above zero for every eligible action, and no_send is always eligible: off-policy estimators (IPS, DR) and
the campaign's lift against the control group both have what they need.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import numpy as np
import pandas as pd

from features.encoder import AGGREGATE_NAMES, EncodedBatch, encode
from features.policy import NO_SEND, eligibility, greedy_policy
from features.schema import (
    ACTIONS,
    CONSENT_VALUE,
    EVENT_COLUMNS,
    MESSAGE_ACTIONS,
    SENT_MESSAGE_EVENTS,
    STAGES,
    Action,
)
from predictor.interface import Predictions
from serving.model import LoadedModel
from serving.settings import ServeSettings
from serving.store import Decision, SendState

MESSAGE_CHANNEL = "email"  # every action of the default catalogue is an e-mail


@dataclass
class Scored:
    """Model answers for a batch of customers, row-aligned with `customer_ids`."""

    customer_ids: np.ndarray
    now: list[datetime]
    batch: EncodedBatch
    pred: Predictions
    digests: list[str] | None = None  # inputs_digests(batch), where decisions are recorded

    def aggregates(self, i: int) -> dict[str, float]:
        return {name: float(self.batch.aggregates[name][i]) for name in AGGREGATE_NAMES}


def _empty_events_frame() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    frame["value"] = pd.Series(dtype="float64")
    frame["quantity"] = pd.Series(dtype="float64")
    return frame


_EMPTY_EVENTS = _empty_events_frame()


def empty_events() -> pd.DataFrame:
    """A frame of no events with the contract's columns and dtypes (a copy: callers may add to it)."""
    return _EMPTY_EVENTS.copy()


def merge_events(stored: pd.DataFrame, inline: pd.DataFrame) -> pd.DataFrame:
    """Stored and inline events together; an inline event already stored (same event id) counts once."""
    if inline.empty:
        return stored
    if stored.empty:
        return inline
    both = pd.concat([stored, inline], ignore_index=True)
    has_id = both["event_id"].notna()
    dup = has_id & both.duplicated(subset=["customer_id", "event_id"], keep="first")
    return both[~dup].reset_index(drop=True)


def default_now(events: pd.DataFrame, customer_ids: Sequence[str], clock: datetime) -> list[datetime]:
    """Scoring time per customer: the clock, or just after their latest event if that is later (a
    platform's clock a little ahead of ours must not hide the event it just sent)."""
    if events.empty:
        return [clock] * len(customer_ids)
    ts = pd.DatetimeIndex(events["ts"])
    codes, uniques = pd.factorize(events["customer_id"].to_numpy(dtype=object))
    latest = np.full(len(uniques), np.iinfo(np.int64).min, dtype=np.int64)
    known = (codes >= 0) & ~np.asarray(ts.isna())
    np.maximum.at(latest, codes[known], ts.asi8[known])
    position = {c: j for j, c in enumerate(uniques)}
    out = []
    for c in customer_ids:
        j = position.get(c)
        if j is None:
            out.append(clock)
            continue
        t = pd.Timestamp(latest[j], unit=ts.unit, tz=ts.tz)
        out.append(max(clock, (t + pd.Timedelta(milliseconds=1)).to_pydatetime()))
    return out


def predict_customers(
    model: LoadedModel, events: pd.DataFrame, customer_ids: np.ndarray, now: Sequence[datetime], k: int
) -> Predictions:
    """The model's answer for each customer at their time `now` (events at or after it are not seen)."""
    return score_customers(model, events, customer_ids, now, k).pred


def score_customers(
    model: LoadedModel, events: pd.DataFrame, customer_ids: np.ndarray, now: Sequence[datetime], k: int
) -> Scored:
    """Encodes the customers' events with the feature job's encoder and runs the model once."""
    cutoffs = pd.DataFrame({"customer_id": customer_ids, "cutoff": pd.to_datetime(list(now), utc=True)})
    batch = encode(events, cutoffs, model.vocab, model.encoder_config)
    k = max(1, min(k, model.catalogue_size))
    return Scored(np.asarray(customer_ids, dtype=object), list(now), batch, model.predictor.score(batch, k))


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


def in_control_group(customer_ids: Sequence[str], share: float, salt: str) -> np.ndarray:
    """Stable per customer: sha256(salt, id) read as a number in [0, 1) below `share`."""
    out = np.zeros(len(customer_ids), dtype=bool)
    if share <= 0:
        return out
    for i, c in enumerate(customer_ids):
        digest = hashlib.sha256(f"{salt}\x00{c}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < share
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


def _newer(a: tuple[float, datetime], b: tuple[float, datetime] | None) -> bool:
    """Whether consent `a` wins over `b`: the later event, and at the same time the unsubscription."""
    return b is None or (a[1], -a[0]) > (b[1], -b[0])


def inline_state(
    inline: pd.DataFrame | None, extra: pd.DataFrame | None, now: dict[str, datetime]
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
    for frame, past_only in ((inline, False), (extra, True)):
        if frame is None or frame.empty:
            continue
        kinds = frame["event_type"].to_numpy(dtype=object)
        is_consent = np.isin(kinds, list(CONSENT_VALUE))
        is_send = np.isin(kinds, list(SENT_MESSAGE_EVENTS)) & np.isin(
            frame["message_type"].to_numpy(dtype=object), list(MESSAGE_ACTIONS)
        )
        if not (is_consent.any() or is_send.any()):
            continue
        customers = frame["customer_id"].to_numpy(dtype=object)
        when = pd.DatetimeIndex(frame["ts"]).tz_convert("UTC")
        for j in np.flatnonzero(is_consent):
            customer, t = customers[j], when[int(j)].to_pydatetime()
            if customer not in now or (past_only and t >= now[customer]):
                continue
            evidence = (CONSENT_VALUE[kinds[j]], t)
            if _newer(evidence, out.consent.get(customer)):
                out.consent[customer] = evidence
        rows = np.flatnonzero(is_send)
        if len(rows):
            sends = pd.DataFrame(
                {
                    "customer_id": customers[rows],
                    "action": frame["message_type"].to_numpy(dtype=object)[rows],
                    "ts": when[rows],
                }
            )
            limit = sends["customer_id"].map(lambda c: pd.Timestamp(now[c]) if c in now else pd.NaT)
            sends = sends[sends["ts"] <= limit]
            latest = sends.groupby(["customer_id", "action"])["ts"].max()
            for key, ts in latest.items():
                customer, sent_action = cast(tuple[str, str], key)
                kept = out.last_send.setdefault(str(customer), {})
                at = pd.Timestamp(ts).to_pydatetime()
                if str(sent_action) not in kept or at > kept[str(sent_action)]:
                    kept[str(sent_action)] = at
    return out


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
            state.consent < 0 or stored_at is None or _newer(own, (state.consent, stored_at))
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


@dataclass
class Choice:
    """The policy's draw per customer."""

    action: np.ndarray  # (n,) index into ACTIONS
    propensity: np.ndarray  # (n,) logged probability of that action (marginal over the control draw)
    control: np.ndarray  # (n,) bool
    explored: np.ndarray  # (n,) bool: the draw differs from the greedy action
    greedy: np.ndarray  # (n,) index of the greedy action
    drawn: np.ndarray  # (n,) the policy's draw before the control group (the intended action)


def policy_probabilities(uplift: np.ndarray, allowed: np.ndarray, settings: ServeSettings) -> np.ndarray:
    """pi(a | x): (n, len(ACTIONS)) probabilities over eligible actions, zero for blocked ones."""
    allowed = allowed.copy()
    allowed[:, NO_SEND] = True
    n = len(uplift)
    if settings.exploration == "softmax":
        score = np.where(allowed, uplift, -np.inf)
        score[:, NO_SEND] = settings.min_uplift
        z = score / settings.temperature
        z = z - z.max(axis=1, keepdims=True)
        w = np.where(allowed, np.exp(z), 0.0)
        return w / w.sum(axis=1, keepdims=True)
    greedy = greedy_policy(uplift, allowed, settings.min_uplift)
    probs = np.where(allowed, settings.epsilon / allowed.sum(axis=1, keepdims=True), 0.0)
    probs[np.arange(n), greedy] += 1.0 - settings.epsilon
    return probs


def choose(
    uplift: np.ndarray,
    allowed: np.ndarray,
    customer_ids: Sequence[str],
    settings: ServeSettings,
    rng: np.random.Generator,
) -> Choice:
    """Control group, then a draw from the exploring policy; propensities as in the module docstring."""
    n = len(uplift)
    pi = policy_probabilities(uplift, allowed, settings)
    greedy = greedy_policy(uplift, allowed, settings.min_uplift)
    u = rng.random(n)
    drawn = np.minimum((pi.cumsum(axis=1) < u[:, None]).sum(axis=1), len(ACTIONS) - 1)
    drawn = np.where(pi[np.arange(n), drawn] > 0, drawn, greedy)  # float round-off at the top end
    control = in_control_group(customer_ids, settings.control_share, settings.control_salt)
    action = np.where(control, NO_SEND, drawn)
    share = settings.control_share
    propensity = share * (action == NO_SEND) + (1 - share) * pi[np.arange(n), action]
    return Choice(action, propensity, control, (~control) & (action != greedy), greedy, drawn)


def blocked_matrix(
    scored: Scored, rules_in: RuleInputs, settings: ServeSettings, channels: Sequence[set[str] | None]
) -> tuple[np.ndarray, np.ndarray]:
    """(allowed, blocked_by) per customer and action: the business rules, then the request's channels."""
    elig = eligibility(rules_in.aggregates, settings.rules, rules_in.days_since_action, now=scored.now)
    allowed, blocked_by = elig.allowed.copy(), elig.blocked_by.copy()
    messages = np.array([a != Action.NO_SEND for a in ACTIONS])
    for i, allowed_channels in enumerate(channels):
        if allowed_channels is not None and MESSAGE_CHANNEL not in allowed_channels:
            cells = messages & allowed[i]
            blocked_by[i, cells] = "channel_not_allowed"
            allowed[i, cells] = False
    return allowed, blocked_by


def new_decision_id() -> str:
    return uuid.uuid4().hex


def reasons_for(
    scored: Scored,
    i: int,
    events: pd.DataFrame,
    action: str,
    control: bool,
    explored: bool,
    uplift: float,
    blocked: dict[str, str],
) -> list[str]:
    """What drove the answer, in words a marketer reads: the stage, the signals behind it, the rule or
    draw behind the action."""
    agg = scored.aggregates(i)
    pred = scored.pred
    out = []
    if pred.stage_proba is not None:
        j = int(pred.stage_proba[i].argmax())
        out.append(f"stage {STAGES[j]} with probability {pred.stage_proba[i, j]:.0%}")
    if agg["open_cart"] > 0:
        out.append("has items in the cart")
    if agg["n_carts_7d"] > 0:
        out.append(f"{agg['n_carts_7d']:.0f} add-to-cart events in the last 7 days")
    if agg["n_product_views_7d"] > 0:
        out.append(f"{agg['n_product_views_7d']:.0f} product views in the last 7 days")
    if agg["n_purchases"] > 0:
        out.append(
            f"{agg['n_purchases']:.0f} purchases, the last {agg['days_since_last_purchase']:.0f} days ago"
        )
    elif agg["n_events"] == 0:
        out.append("no events yet: a new customer")
    if agg["recency_days"] >= 30 and agg["n_events"] > 0:
        out.append(f"no activity for {agg['recency_days']:.0f} days")
    # The customer's last three events, by position: a boolean-masked frame and `itertuples` (which
    # builds a namedtuple class per call) cost more than the rest of the reasons together.
    recent = np.flatnonzero(events["customer_id"].to_numpy(dtype=object) == scored.customer_ids[i])[-3:]
    for event_type, item_id, ts in zip(
        events["event_type"].to_numpy(dtype=object)[recent],
        events["item_id"].to_numpy(dtype=object)[recent],
        events["ts"].iloc[recent],
        strict=True,
    ):
        what = event_type + (f" of {item_id}" if isinstance(item_id, str) else "")
        out.append(f"recent: {what} at {pd.Timestamp(ts).isoformat()}")
    if control:
        out.append("in the control group: sent nothing, so the campaign's lift can be measured")
    elif action == Action.NO_SEND:
        reasons = sorted({r for r in blocked.values() if r})
        out.append(
            "no message gains over sending nothing" + (f" (blocked: {', '.join(reasons)})" if reasons else "")
        )
    else:
        out.append(f"{action}: expected gain {uplift:+.3f} in purchase probability over sending nothing")
    if explored:
        out.append("chosen by exploration, not the highest expected gain (keeps every action measurable)")
    return out


def make_decision(
    *,
    customer_id: str,
    now: datetime,
    action: str,
    propensity: float,
    model: LoadedModel,
    digest: str,
    control: bool,
    stage: str,
    uplift: float,
    detail: dict,
    consent_ts: datetime | None = None,
) -> Decision:
    return Decision(
        decision_id=new_decision_id(),
        customer_id=customer_id,
        ts=now if now.tzinfo else now.replace(tzinfo=UTC),
        action=action,
        channel=None if action == Action.NO_SEND else MESSAGE_CHANNEL,
        propensity=float(propensity),
        model_version=model.version,
        inputs_digest=digest,
        control=bool(control),
        stage=stage,
        expected_uplift=float(uplift),
        detail=detail,
        consent_ts=consent_ts,
    )


def utcnow() -> datetime:
    return datetime.now(UTC)
