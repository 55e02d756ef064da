"""Business rules and the stage playbook: which actions a customer may get now, and why not.

Rules come first and a score never overrides them (DESIGN.md, "Actions"). The same code serves offline
policy evaluation (training) and the online service (serving), with the same settings (`RuleConfig`, the
`rules:` section of `configs/serve.yaml`), so both judge a decision alike. Rules read the aggregates of
`features.encoder` (e-mail consent, e-mails received, open cart, days since the last purchase, ...) plus,
online, the store's send log (the last send of each action, for cooldowns).

Three kinds of rule:

- Consent: an unsubscribed customer gets no marketing message (unknown consent counts as none unless
  `unknown_consent_ok`).
- Fatigue: at most `max_emails_7d` / `max_emails_28d` marketing messages in 7 / 28 days, at least
  `min_gap_hours` between any two of them, a cooldown per action, and optional quiet hours. Online these
  are checked again, with the send itself, in one atomic step of the store (`serving.store`), so that no
  two concurrent requests (on any replica) can both pass them.
- Eligibility: each action has the behaviour it answers, and a customer without it never gets it
  (`ELIGIBILITY` names each rule and its reason).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from features.config import from_settings, load_settings
from features.schema import ACTIONS, MESSAGE_ACTIONS, STAGES, Action, Stage

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

# The rules that hold for every message, in the order `eligibility` applies them (the first that blocks
# an action is the one an answer names); the store checks them again when it records a send, before the
# action's cooldown (`cooldown_<action>`).
FATIGUE_RULES: tuple[str, ...] = (
    "consent",
    "quiet_hours",
    "frequency_cap_7d",
    "frequency_cap_28d",
    "min_gap",
)

# Days before the same action may go to the same customer again. A series (welcome) or a reward (loyalty)
# once a month at most; abandonment reminders weekly at most, the cart one sooner because a cart goes
# stale within days; a feedback request once per purchase cycle.
_COOLDOWNS: dict[Action, float] = {
    Action.WELCOME_SERIES: 28.0,
    Action.EDUCATIONAL_CONTENT: 7.0,
    Action.BROWSE_ABANDONMENT: 7.0,
    Action.CART_ABANDONMENT: 3.0,
    Action.POST_PURCHASE_ONBOARDING: 14.0,
    Action.FEEDBACK_REQUEST: 30.0,
    Action.CROSS_SELL: 14.0,
    Action.LOYALTY_REWARD: 30.0,
    Action.WINBACK_OFFER: 28.0,
}
DEFAULT_COOLDOWN_DAYS: dict[str, float] = {a.value: d for a, d in _COOLDOWNS.items()}


@dataclass(frozen=True)
class RuleConfig:
    """Business rules, from config (`rules:` in configs/serve.yaml; every key optional).

    Attributes:
        max_emails_7d: frequency cap: marketing messages in the last 7 days (default 3).
        max_emails_28d: frequency cap over 28 days.
        min_gap_hours: least time between any two marketing messages to one customer (16 hours, as
            e-mail platforms use, so that a customer never gets two messages in one day's reading).
        cooldown_days: per action, days before the same action may be sent again; every message action
            has one (`DEFAULT_COOLDOWN_DAYS`; a file may override some and keeps the rest).
        quiet_hours: optional [start, end) hours of the day, in `timezone`, when nothing is sent (for
            example [21, 8]: not from 21:00 to 08:00); None: none.
        timezone: IANA name of the time zone the quiet hours are read in.
        require_consent: an unsubscribed customer gets no marketing message; unknown consent counts as no
            consent unless `unknown_consent_ok`.
        welcome_days: welcome_series only within this many days of the signup or of the first contact.
        educational_active_days: educational_content only for customers who have not bought yet and were
            active within this many days (prospects still looking, not lapsed ones).
        browse_no_purchase_days: browse_abandonment needs product views in the last 7 days and no purchase
            in this many days (viewed and did not buy).
        onboarding_days: post_purchase_onboarding only within this many days of a purchase.
        feedback_window: a feedback request needs a purchase this many days ago (min, max).
        cross_sell_days: cross_sell only to a customer who bought within this many days.
        loyalty_min_orders: loyalty_reward only for repeat buyers: purchases on at least this many days.
        winback_inactive_days: winback_offer only after this many days without activity.
        winback_requires_purchase: winback_offer only for earlier buyers (False: lapsing contacts too,
            who re-engage with an offer as well).
    """

    max_emails_7d: int = 3
    max_emails_28d: int = 10
    min_gap_hours: float = 16.0
    cooldown_days: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_COOLDOWN_DAYS))
    quiet_hours: tuple[int, int] | None = None
    timezone: str = "UTC"
    require_consent: bool = True
    unknown_consent_ok: bool = False
    welcome_days: float = 14.0
    educational_active_days: float = 30.0
    browse_no_purchase_days: float = 7.0
    onboarding_days: float = 14.0
    feedback_window: tuple[float, float] = (7.0, 30.0)
    cross_sell_days: float = 90.0
    loyalty_min_orders: int = 2
    winback_inactive_days: float = 30.0
    winback_requires_purchase: bool = False

    def __post_init__(self) -> None:
        problems = []
        unknown = sorted(set(self.cooldown_days) - set(MESSAGE_ACTIONS))
        if unknown:
            problems.append(
                f"cooldown_days: unknown action(s) {unknown}; expected some of {list(MESSAGE_ACTIONS)}"
            )
        missing = sorted(set(MESSAGE_ACTIONS) - set(self.cooldown_days))
        if missing:
            problems.append(f"cooldown_days: no cooldown for {missing}")
        if any(float(v) < 0 for v in self.cooldown_days.values()):
            problems.append("cooldown_days: a cooldown must be >= 0 days")
        for name in ("max_emails_7d", "max_emails_28d", "loyalty_min_orders"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_gap_hours < 0:
            problems.append(f"min_gap_hours must be >= 0, got {self.min_gap_hours}")
        if self.quiet_hours is not None:
            start, end = self.quiet_hours
            if not (0 <= start <= 23 and 0 <= end <= 24) or start == end:
                problems.append(
                    f"quiet_hours must be [start, end) hours with start != end, got {self.quiet_hours}"
                )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"timezone: unknown time zone {self.timezone!r}")
        lo, hi = self.feedback_window
        if lo > hi:
            problems.append(f"feedback_window must be (min, max) with min <= max, got {self.feedback_window}")
        if problems:
            raise ValueError("invalid rules: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RuleConfig:
        """Rules from plain values (the `rules:` section of a YAML file).

        `cooldown_days` is merged over the defaults, so a file that sets one action's cooldown keeps the
        others. Unknown keys and actions are named in the error.

        Raises:
            ValueError: an unknown key, action or an invalid value.
        """
        data = dict(data or {})
        if "cooldown_days" in data:
            given = dict(data["cooldown_days"] or {})
            data["cooldown_days"] = {**DEFAULT_COOLDOWN_DAYS, **{str(k): float(v) for k, v in given.items()}}
        for name in ("feedback_window", "quiet_hours"):
            if data.get(name) is not None:
                data[name] = tuple(data[name])
        rules: RuleConfig = from_settings(cls, data, "rules")  # names unknown keys
        return rules

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for logs, MLflow params and `GET /v1/model`)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["cooldown_days"] = dict(self.cooldown_days)
        for name in ("feedback_window", "quiet_hours"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    def cooldown_hours(self, action: str) -> float:
        """The cooldown of an action in hours (0 for no_send)."""
        return 24.0 * float(self.cooldown_days.get(action, 0.0))

    def in_quiet_hours(self, when: datetime) -> bool:
        """Whether a send at `when` (tz-aware) falls in the quiet hours."""
        if self.quiet_hours is None:
            return False
        local = when.astimezone(ZoneInfo(self.timezone))
        hour = local.hour + local.minute / 60 + local.second / 3600
        start, end = self.quiet_hours
        return (start <= hour < end) if start < end else (hour >= start or hour < end)


def load_rules(path: Path | str | None) -> RuleConfig:
    """The `rules:` section of a serve settings file (`configs/serve.yaml`), the defaults for None.

    The offline evaluation reads the file the service reads, so both judge decisions by the same rules.

    Raises:
        ValueError: the file has an unknown or invalid rule setting (named), or is not a mapping.
    """
    if path is None:
        return RuleConfig()
    data = load_settings(Path(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings")
    try:
        return RuleConfig.from_dict(data.get("rules"))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# Each action's eligibility rule: the name a blocked action reports, and why the rule is there.
ELIGIBILITY: dict[str, tuple[str, str]] = {
    Action.WELCOME_SERIES: ("needs_new_contact", "a welcome greets a new subscriber or first contact only"),
    Action.EDUCATIONAL_CONTENT: (
        "needs_active_prospect",
        "guides and how-tos help people still choosing: active, not yet a buyer",
    ),
    Action.BROWSE_ABANDONMENT: (
        "needs_recent_views_without_purchase",
        "reminds of products viewed in the last 7 days that were not bought",
    ),
    Action.CART_ABANDONMENT: ("needs_open_cart", "reminds of a cart left open"),
    Action.POST_PURCHASE_ONBOARDING: ("needs_recent_purchase", "helps with a product bought recently"),
    Action.FEEDBACK_REQUEST: (
        "needs_purchase_in_feedback_window",
        "asks for a review once the product had time to be used",
    ),
    Action.CROSS_SELL: ("needs_recent_purchase", "suggests what goes with an earlier purchase"),
    Action.LOYALTY_REWARD: ("needs_repeat_purchases", "rewards repeat buyers, not one-off or prospects"),
    Action.WINBACK_OFFER: ("needs_inactivity", "brings back someone whose activity has lapsed"),
}


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
    now: Sequence[datetime] | None = None,
) -> Eligibility:
    """Applies consent, fatigue (caps, gap, cooldowns, quiet hours) and eligibility to every row.

    Args:
        aggregates: name -> (n,) arrays from the encoder (email_consent, emails_received_7d,
            emails_received_28d, days_since_last_email, open_cart, days_since_last_purchase,
            n_purchase_days, days_since_signup, tenure_days, recency_days, n_product_views_7d).
        rules: the rule settings.
        days_since_action: optional action -> (n,) days since that action was last sent (NaN: never);
            online only, the aggregates carry no per-action history.
        now: optional (n,) decision times, for the quiet hours (offline cutoffs have none).
    """
    rules = rules or RuleConfig()
    n = len(next(iter(aggregates.values())))
    blocked = np.full((n, len(ACTIONS)), "", dtype=object)

    def block(action_mask: np.ndarray, rows: np.ndarray, rule: str) -> None:
        cells = rows[:, None] & action_mask[None, :] & (blocked == "")
        blocked[cells] = rule

    def agg(name: str) -> np.ndarray:
        return np.asarray(aggregates[name], dtype=np.float64)

    messages = np.array([a != Action.NO_SEND for a in ACTIONS])
    consent = agg("email_consent")
    if rules.require_consent:
        no_consent = consent == 0 if rules.unknown_consent_ok else consent <= 0
        block(messages, no_consent, "consent")
    if now is not None and rules.quiet_hours is not None:
        block(messages, np.array([rules.in_quiet_hours(t) for t in now], dtype=bool), "quiet_hours")
    block(messages, agg("emails_received_7d") >= rules.max_emails_7d, "frequency_cap_7d")
    block(messages, agg("emails_received_28d") >= rules.max_emails_28d, "frequency_cap_28d")
    block(messages, agg("days_since_last_email") * 24.0 < rules.min_gap_hours, "min_gap")
    if days_since_action is not None:
        for action, days in rules.cooldown_days.items():
            if action in days_since_action:
                recent = _nan_as_never(days_since_action[action]) < days
                block(np.array([a == action for a in ACTIONS]), recent, f"cooldown_{action}")

    since_purchase = agg("days_since_last_purchase")
    bought = agg("n_purchase_days") >= 1
    lo, hi = rules.feedback_window
    needs = {
        Action.WELCOME_SERIES: np.minimum(agg("days_since_signup"), agg("tenure_days")) <= rules.welcome_days,
        Action.EDUCATIONAL_CONTENT: ~bought & (agg("recency_days") <= rules.educational_active_days),
        Action.BROWSE_ABANDONMENT: (agg("n_product_views_7d") >= 1)
        & (since_purchase >= rules.browse_no_purchase_days),
        Action.CART_ABANDONMENT: agg("open_cart") >= 1,
        Action.POST_PURCHASE_ONBOARDING: bought & (since_purchase <= rules.onboarding_days),
        Action.FEEDBACK_REQUEST: bought & (since_purchase >= lo) & (since_purchase <= hi),
        Action.CROSS_SELL: bought & (since_purchase <= rules.cross_sell_days),
        Action.LOYALTY_REWARD: agg("n_purchase_days") >= rules.loyalty_min_orders,
        Action.WINBACK_OFFER: (agg("recency_days") >= rules.winback_inactive_days)
        & (agg("n_events") > 0)
        & (bought if rules.winback_requires_purchase else True),
    }
    for action, ok in needs.items():
        block(np.array([a == action for a in ACTIONS]), ~np.asarray(ok, dtype=bool), ELIGIBILITY[action][0])
    return Eligibility(allowed=blocked == "", blocked_by=blocked)


def playbook_actions(stage: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The playbook's action per row (index into ACTIONS), or no_send where the rules block it.

    Args:
        stage: (n,) index into `schema.STAGES`.
        allowed: (n, len(ACTIONS)) from `eligibility`.
    """
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


def _nan_as_never(days: np.ndarray) -> np.ndarray:
    """Days since a send, NaN (never sent) as infinity."""
    days = np.asarray(days, dtype=np.float64)
    return np.where(np.isnan(days), np.inf, days)


def in_control_group(customer_ids: Sequence[str], share: float, salt: str) -> np.ndarray:
    """Stable per customer: sha256(salt, id) read as a number in [0, 1) below `share`."""
    out = np.zeros(len(customer_ids), dtype=bool)
    if share <= 0:
        return out
    for i, c in enumerate(customer_ids):
        digest = hashlib.sha256(f"{salt}\x00{c}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64 < share
    return out
