"""The policy's draw and what a decision says: the control group, exploration, logged propensities, the
rules that blocked each action, and the reasons in words.

A customer in the control group (stable per id) always gets no_send; everyone else gets the greedy
eligible action, explored a little. Control membership is a hash of the id, which across customers
behaves like a coin with P(control) = control_share, so the logged propensity of the action taken is the
marginal

    p(a) = control_share * [a = no_send] + (1 - control_share) * pi(a | eligible actions, uplift),

above zero for every eligible action, and no_send is always eligible: off-policy estimators (IPS, DR) and
the campaign's lift against the control group both have what they need.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from features.policy import FATIGUE_RULES, NO_SEND, eligibility, greedy_policy, in_control_group
from features.schema import ACTIONS, MESSAGE_ACTIONS, Action
from serving.settings import ServeSettings

MESSAGE_CHANNEL = "email"  # every action of the default catalogue is an e-mail
_MESSAGE_CELLS = [j for j, a in enumerate(ACTIONS) if a in MESSAGE_ACTIONS]
_IS_MESSAGE = np.array([a != Action.NO_SEND for a in ACTIONS])


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
    aggregates: dict[str, np.ndarray],
    days_since_action: dict[str, np.ndarray],
    now: Sequence[datetime],
    settings: ServeSettings,
    channels: Sequence[set[str] | None],
) -> tuple[np.ndarray, np.ndarray]:
    """(allowed, blocked_by) per customer and action: the business rules, then the request's channels."""
    elig = eligibility(aggregates, settings.rules, days_since_action, now=now)
    allowed, blocked_by = elig.allowed.copy(), elig.blocked_by.copy()
    for i, allowed_channels in enumerate(channels):
        if allowed_channels is not None and MESSAGE_CHANNEL not in allowed_channels:
            cells = _IS_MESSAGE & allowed[i]
            blocked_by[i, cells] = "channel_not_allowed"
            allowed[i, cells] = False
    return allowed, blocked_by


def rule_rank(rule: str) -> int:
    """Where a rule stands in the order rules are named (fatigue rules first, cooldowns next,
    eligibility and channel rules last)."""
    if rule in FATIGUE_RULES:
        return FATIGUE_RULES.index(rule)
    return len(FATIGUE_RULES) + (0 if rule.startswith("cooldown_") else 1)


def refused_cells(rule: str | None, action: str) -> list[int]:
    """The actions (indices into ACTIONS) a refusal of the store rules out: a cooldown only its own
    action, every other rule every message."""
    if rule is not None and rule.startswith("cooldown_"):
        return [ACTIONS.index(action)]
    return list(_MESSAGE_CELLS)


def new_decision_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


def reasons(
    *,
    stage: str,
    stage_p: float,
    aggregates: dict[str, float],
    recent: Sequence[tuple[str, str | None, datetime]],
    action: str,
    control: bool,
    explored: bool,
    uplift: float,
    blocked: Sequence[str],
) -> list[str]:
    """What drove the answer, in words a marketer reads: the stage, the signals behind it, the rule or
    draw behind the action.

    Args:
        recent: the customer's last events the model saw, (event type, item, time), oldest first.
        blocked: the rules that blocked actions ("" where none).
    """
    agg = aggregates
    out = [f"stage {stage} with probability {stage_p:.0%}"]
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
    for event_type, item_id, ts in recent:
        what = event_type + (f" of {item_id}" if isinstance(item_id, str) else "")
        out.append(f"recent: {what} at {ts.isoformat()}")
    if control:
        out.append("in the control group: sent nothing, so the campaign's lift can be measured")
    elif action == Action.NO_SEND:
        rules = sorted({r for r in blocked if r})
        out.append(
            "no message gains over sending nothing" + (f" (blocked: {', '.join(rules)})" if rules else "")
        )
    else:
        out.append(f"{action}: expected gain {uplift:+.3f} in purchase probability over sending nothing")
    if explored:
        out.append("chosen by exploration, not the highest expected gain (keeps every action measurable)")
    return out
