"""Business rules and the stage playbook: which actions a customer may get now, and why not.

Rules come first and a score never overrides them (DESIGN.md, "Actions"). The same code serves offline
policy evaluation (training) and the online service (serving), so both judge a decision alike. Rules read
the aggregates of `features.encoder` (e-mail consent, e-mails received, open cart, days since the last
purchase) plus, online, the last send of each action for cooldowns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from features.schema import ACTIONS, Action, Stage

# What each stage gets where no logged sends exist to learn from (DESIGN.md, "Journey stages").
PLAYBOOK: dict[str, str] = {
    Stage.AWARENESS: Action.WELCOME_SERIES,
    Stage.CONSIDERATION: Action.BROWSE_ABANDONMENT,
    Stage.DECISION: Action.CART_ABANDONMENT,
    Stage.POST_PURCHASE: Action.POST_PURCHASE_ONBOARDING,
    Stage.LOYAL: Action.LOYALTY_REWARD,
    Stage.AT_RISK: Action.WINBACK_OFFER,
}

NO_SEND = ACTIONS.index(Action.NO_SEND)


@dataclass(frozen=True)
class RuleConfig:
    """Business rules, from config.

    Attributes:
        max_emails_7d: frequency cap: marketing e-mails in the last 7 days (default 3).
        max_emails_28d: frequency cap over 28 days.
        cooldown_days: per action, days before the same action may be sent again (online only: the
            aggregates carry no per-action history).
        require_consent: an unsubscribed customer gets no marketing e-mail; unknown consent counts as no
            consent unless `unknown_consent_ok`.
        feedback_window: a feedback request needs a purchase this many days ago (min, max).
    """

    max_emails_7d: int = 3
    max_emails_28d: int = 10
    cooldown_days: Mapping[str, float] = field(
        default_factory=lambda: {
            Action.WELCOME_SERIES: 28.0,
            Action.CART_ABANDONMENT: 3.0,
            Action.BROWSE_ABANDONMENT: 7.0,
            Action.FEEDBACK_REQUEST: 30.0,
            Action.WINBACK_OFFER: 28.0,
        }
    )
    require_consent: bool = True
    unknown_consent_ok: bool = False
    feedback_window: tuple[float, float] = (7.0, 30.0)


@dataclass
class Eligibility:
    """Per row and action: allowed or not, and the first rule that blocked it.

    Attributes:
        allowed: (n, len(ACTIONS)) bool; `no_send` is always allowed.
        blocked_by: (n, len(ACTIONS)) object array of rule names ("" where allowed).
    """

    allowed: np.ndarray
    blocked_by: np.ndarray


def eligibility(
    aggregates: Mapping[str, np.ndarray],
    rules: RuleConfig | None = None,
    days_since_action: Mapping[str, np.ndarray] | None = None,
) -> Eligibility:
    """Applies consent, frequency caps, cooldowns and eligibility to every row.

    Args:
        aggregates: name -> (n,) arrays from the encoder (email_consent, emails_received_7d,
            emails_received_28d, open_cart, days_since_last_purchase, n_purchases).
        rules: the rule settings.
        days_since_action: optional action -> (n,) days since that action was last sent (NaN: never).
    """
    rules = rules or RuleConfig()
    n = len(next(iter(aggregates.values())))
    blocked = np.full((n, len(ACTIONS)), "", dtype=object)

    def block(action_mask: np.ndarray, rows: np.ndarray, rule: str) -> None:
        cells = rows[:, None] & action_mask[None, :] & (blocked == "")
        blocked[cells] = rule

    messages = np.array([a != Action.NO_SEND for a in ACTIONS])
    consent = aggregates["email_consent"]
    if rules.require_consent:
        no_consent = consent == 0 if rules.unknown_consent_ok else consent <= 0
        block(messages, no_consent, "consent")
    block(messages, aggregates["emails_received_7d"] >= rules.max_emails_7d, "frequency_cap_7d")
    block(messages, aggregates["emails_received_28d"] >= rules.max_emails_28d, "frequency_cap_28d")
    if days_since_action is not None:
        for action, days in rules.cooldown_days.items():
            if action in days_since_action:
                recent = np.nan_to_num(days_since_action[action], nan=np.inf) < days
                block(np.array([a == action for a in ACTIONS]), recent, f"cooldown_{action}")
    one = {a: np.array([x == a for x in ACTIONS]) for a in ACTIONS}
    block(one[Action.CART_ABANDONMENT], aggregates["open_cart"] < 1, "needs_open_cart")
    since = aggregates["days_since_last_purchase"]
    lo, hi = rules.feedback_window
    block(one[Action.FEEDBACK_REQUEST], ~((since >= lo) & (since <= hi)), "needs_purchase_7_to_30_days_ago")
    block(one[Action.WINBACK_OFFER], aggregates["n_purchases"] < 1, "needs_earlier_purchase")
    block(one[Action.POST_PURCHASE_ONBOARDING], since > 30, "needs_recent_purchase")
    block(one[Action.CROSS_SELL], aggregates["n_purchases"] < 1, "needs_earlier_purchase")
    return Eligibility(allowed=blocked == "", blocked_by=blocked)


def playbook_actions(stage: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The playbook's action per row (index into ACTIONS), or no_send where the rules block it.

    Args:
        stage: (n,) index into `schema.STAGES`.
        allowed: (n, len(ACTIONS)) from `eligibility`.
    """
    from features.schema import STAGES

    table = np.array([ACTIONS.index(PLAYBOOK[s]) for s in STAGES])
    action = table[stage]
    ok = allowed[np.arange(len(stage)), action]
    return np.where(ok, action, NO_SEND)


def greedy_policy(uplift: np.ndarray, allowed: np.ndarray, min_uplift: float = 0.0) -> np.ndarray:
    """The eligible action with the highest expected gain over no_send, or no_send if none gains.

    Args:
        uplift: (n, len(ACTIONS)) expected outcome of each action minus that of no_send.
        allowed: (n, len(ACTIONS)) from `eligibility`.
        min_uplift: an action must gain more than this to be sent.
    """
    masked = np.where(allowed, uplift, -np.inf)
    masked[:, NO_SEND] = min_uplift
    return masked.argmax(axis=1)
