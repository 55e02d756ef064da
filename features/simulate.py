"""A seeded simulator of an online shop that knows the truth.

Customers move through latent journey stages by a daily Markov chain, emit the events of their stage, receive
e-mails chosen by a randomised logging policy, and react to them with true, stage-dependent effects. Because
the world is known, the latent stage of every customer-day and the exact 7-day conversion probability of every
logged decision under every action are written beside the events, so that stage models and policies can be
scored exactly: value(policy) = mean over decisions of sum_a pi(a | x) * p_convert[a].

Dynamics (one step per day, per customer; see `_EDGES`, `_HAZARD_BASE` and `_EFFECTS` for the numbers):

* Latent stages: awareness, consideration, decision, post_purchase, loyal, at_risk, lapsed. `lapsed` exists
  only here; compare with the model's `schema.Stage` through `LATENT_TO_STAGE` (lapsed -> at_risk).
* Each day a customer in stage s first buys with probability h(s) (the purchase hazard); a purchase moves
  them to post_purchase. Otherwise they move along one of the stage's outgoing edges with that edge's daily
  rate, or stay. Hazard and rates depend on the stage, on two fixed traits of the customer (an activity
  multiplier and the number of past purchases, which only changes through a purchase) and on the action of
  the e-mail sent in the last 7 days. Nothing else enters, so the chain is Markov in the stage given the
  traits, and the exact conversion probability is a 7-step forward pass (`true_conversion_probabilities`).
* Events: each day a stage-specific Poisson number of events with a stage-specific mix of types, grouped
  into sessions (views before carts before checkouts) on web or app; purchase days add a purchase session
  (view, cart, checkout, purchase per item) or a store purchase. Items come from the customer's own recent
  views and purchases (repeat) or from their Dirichlet category taste and Zipf popularity within category.
* Decisions: every `decision_every_days` (7) days from the customer's first campaign weekday after arrival,
  at `decision_hour` UTC, before any of that day's activity. The logging policy
  (`logging_policy_probabilities`) sends with probability `send_rate` and picks among the nine messages
  with weights that depend only on observable history; every action keeps a propensity > 0 for consented
  customers. Non-consented or unsubscribed customers get no_send with propensity 1.
* Control group (`control_share`, 0 by default): a stable random share of customers (sha256 of the seed and
  the customer id, as the service's control group) whose every decision is no_send. The logging policy still
  draws for them, and its draw is kept as `intended_action`, so that a campaign report can compare the
  customers sent action a with the control customers the policy meant to send a. Membership is random
  across customers, so every decision logs the marginal propensity of the action taken,
  control_share * [a = no_send] + (1 - control_share) * pi(a | x), as the service does (`serving.scoring`).
  With control_share 0 the random stream and every output are those of a run without a control group.
* The realised conversion of a decision (a purchase on days d .. d+6) is drawn from the same chain that the
  forward pass uses, so it is a Bernoulli draw of exactly `p_convert__<action taken>`.

Realism (ranges that `tests/test_simulate.py` checks on a 2,500-customer, 91-day shop; in brackets what the
default 20,000-customer, 182-day run measured):

* events per customer over 182 days 30 .. 80 [65]; events per customer-day from arrival 0.35 .. 0.8 [0.55];
* share of customer-days per latent stage: awareness 3-18 % [7.0], consideration 8-25 % [14.7],
  decision 1-6 % [3.3], post_purchase 5-20 % [12.3], loyal 4-20 % [10.0], at_risk 5-20 % [8.7],
  lapsed 15-55 % [44.1] (many customers lapse; the share grows with the length of the period);
* decision-stage customers: 10-30 % of their days carry a purchase [21.7], and 40-80 % of the no_send
  decisions made while in decision convert within 7 days [62.9];
* 7-day conversion of all decisions under no_send: 4-15 % [10.1];
* e-mail: 20-30 % of sends opened [23.4], 2-5 % clicked [3.1], unsubscribes below 1 % of sends [0.63],
  growing with the e-mails of the last 28 days [0.12 % at one, 0.97 % at four];
* true lift, mean p_convert(a) - p_convert(no_send) by latent stage: cart_abandonment | decision > 0.05
  [0.18], winback_offer | at_risk > 0.01 [0.045], browse_abandonment | consideration > 0.02 [0.096],
  loyalty_reward | loyal > 0.02 [0.13], cross_sell and post_purchase_onboarding | post_purchase > 0.01,
  welcome_series | awareness > 0.005 [0.019]; wrong-stage pairs (cart_abandonment | awareness,
  winback_offer | loyal, welcome_series | decision, ...) within +-0.015.

Outputs of `simulate(config, out)` (the three single files get one row group per chunk, so memory stays
bounded at any number of customers):

* `events/part-NNNNN.parquet`: one part per chunk of `chunk_size` customers, each customer in one part,
  sorted by customer_id then ts; `schema.EVENT_SCHEMA` field names, types and nullability, with
  customer_id, event_type, channel, item_id, category and message_type dictionary-encoded. Ids: customer
  "C0000001", item "I000001", event "C0000001-E000042", session "C0000001-S0421" (customer, day, slot),
  campaign_id of e-mail events = the decision_id. Customers who exist at the start signed up during the
  year before it, so their signup (and newsletter_signup) events lie before `start`.
* `catalog.parquet`: item_id, category, price, popularity (probability; sums to 1).
* `decisions.parquet`: the observable log: decision_id ("D0000001-003"), customer_id, ts (decision time;
  the email_sent event has the same ts), action, propensity, policy, control (bool: the customer is in the
  control group) and intended_action (the logging policy's draw; equal to action outside the control group).
* `truth/stages.parquet`: customer_id, day (date32), stage (latent, incl. lapsed) for every customer-day
  from arrival (the stage at the start of the day).
* `truth/decisions.parquet`: decision_id, customer_id, ts, stage (latent at the decision), action,
  propensity, converted (0/1, a purchase within the outcome window), unsubscribed (0/1), sends_28d (e-mails
  in the 28 days up to and including this decision), and p_convert__<action> for every action in `ACTIONS`.
* `simulation.json`: `SimSummary` with the config.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features import schema
from features.policy import in_control_group
from features.schema import Action, Channel, EventType

__all__ = [
    "ACTIONS",
    "LATENT_STAGES",
    "LATENT_TO_STAGE",
    "PolicyInputs",
    "SimConfig",
    "SimSummary",
    "control_group",
    "format_summary",
    "logging_policy_probabilities",
    "simulate",
    "true_conversion_probabilities",
    "unsubscribe_probability",
]

# ----------------------------------------------------------------------------------------------------------
# The world: stages, actions and their effects. These are the simulator's ground truth, not settings: tests
# and the docstring's realism ranges are stated against them.
# ----------------------------------------------------------------------------------------------------------

LATENT_STAGES: tuple[str, ...] = (
    "awareness",
    "consideration",
    "decision",
    "post_purchase",
    "loyal",
    "at_risk",
    "lapsed",
)
LATENT_TO_STAGE: dict[str, str] = {
    **{s: s for s in LATENT_STAGES if s != "lapsed"},
    "lapsed": schema.Stage.AT_RISK.value,
}
_AW, _CO, _DE, _PP, _LO, _AR, _LA = range(len(LATENT_STAGES))
_N_STAGES = len(LATENT_STAGES)

# Action order is the schema's: column a of every probability matrix is schema.ACTIONS[a].
ACTIONS: tuple[str, ...] = schema.ACTIONS
_N_ACTIONS = len(ACTIONS)
_A = {a: i for i, a in enumerate(ACTIONS)}
_NO_SEND = _A[Action.NO_SEND]

# Past purchases beyond this count no longer change a customer's dynamics.
_K_CAP = 5
# The activity multiplier takes one of these values (log-spaced 0.2 .. 5, lognormal weights): a fine grid
# keeps it realistic and lets the chain's numbers be tabulated once per run (`_Tables`).
_ACTIVITY_GRID = np.exp(np.linspace(np.log(0.2), np.log(5.0), 33))
# No single edge may take more than this share of a stage per day, so every row stays a distribution.
_RATE_CAP = 0.3
_HAZARD_CAP = 0.9

# Outgoing edges of the daily chain, given no purchase: (from, to, base rate per day, exponent of the
# activity multiplier, coefficient of log-rate per past purchase). Engaging edges grow with activity, decaying
# ones shrink; past purchases speed up the way to loyalty and slow down churn.
_EDGES: tuple[tuple[int, int, float, float, float], ...] = (
    (_AW, _CO, 0.060, 0.5, 0.0),
    (_AW, _LA, 0.015, -0.5, 0.0),
    (_CO, _DE, 0.060, 0.5, 0.05),
    (_CO, _AR, 0.025, -0.5, -0.10),
    (_DE, _CO, 0.120, 0.0, 0.0),
    (_DE, _AR, 0.030, -0.5, -0.10),
    (_PP, _LO, 0.020, 0.0, 0.35),
    (_PP, _CO, 0.030, 0.3, 0.0),
    (_PP, _AR, 0.025, -0.5, -0.15),
    (_LO, _CO, 0.020, 0.3, 0.0),
    (_LO, _AR, 0.012, -0.5, -0.20),
    (_AR, _CO, 0.020, 0.5, 0.10),
    (_AR, _DE, 0.006, 0.5, 0.10),
    (_AR, _LA, 0.040, -0.5, -0.10),
    (_LA, _CO, 0.002, 0.5, 0.0),
)
_N_EDGES = len(_EDGES)
# Index _N_EDGES is a dummy edge of rate 0 that pads stages with fewer than the maximum number of edges.
_EDGE_FROM = np.array([e[0] for e in _EDGES], dtype=np.int64)
_EDGE_TO = np.array([e[1] for e in _EDGES], dtype=np.int64)
_EDGE_BASE = np.array([e[2] for e in _EDGES] + [0.0])
_EDGE_ALPHA = np.array([e[3] for e in _EDGES] + [0.0])
_EDGE_K = np.array([e[4] for e in _EDGES] + [0.0])
_OUT_DEGREE = np.bincount(_EDGE_FROM, minlength=_N_STAGES)
_MAX_OUT = int(_OUT_DEGREE.max())
# Each stage's outgoing edges, padded with the dummy edge: [stages, max out-edges].
_OUT_EDGES = np.full((_N_STAGES, _MAX_OUT), _N_EDGES, dtype=np.int64)
for _s in range(_N_STAGES):
    _OUT_EDGES[_s, : _OUT_DEGREE[_s]] = np.flatnonzero(np.equal(_EDGE_FROM, _s))
# Destination of slot j of a stage's padded edge list; the extra last column means "stay".
_OUT_TO = np.concatenate([np.append(_EDGE_TO, -1)[_OUT_EDGES], np.arange(_N_STAGES)[:, None]], axis=1).astype(
    np.int8
)
_FROM_ONEHOT = np.eye(_N_STAGES)[_EDGE_FROM]  # [E, S]
_TO_ONEHOT = np.eye(_N_STAGES)[_EDGE_TO]  # [E, S]

# Daily purchase hazard per stage, its activity exponent and its log-rate per past purchase.
_HAZARD_BASE = np.array([0.002, 0.012, 0.20, 0.010, 0.035, 0.003, 0.0005])
_HAZARD_ALPHA = 0.5
_HAZARD_K = np.array([0.0, 0.0, 0.0, 0.05, 0.08, 0.0, 0.0])

# True effects of a send over the 7 days after it: multipliers of the purchase hazard per stage and of edge
# rates. A send to a stage not listed for its action annoys a little (hazard x 0.97): wrong-stage sends do
# about nothing or slightly harm.
_WRONG_STAGE_HAZARD = 0.97
_EFFECTS: dict[str, tuple[dict[int, float], dict[tuple[int, int], float]]] = {
    Action.WELCOME_SERIES: ({_AW: 1.5}, {(_AW, _CO): 1.8, (_AW, _LA): 0.6}),
    Action.EDUCATIONAL_CONTENT: ({_AW: 1.0, _CO: 1.0}, {(_AW, _CO): 1.3, (_CO, _DE): 1.2}),
    Action.BROWSE_ABANDONMENT: ({_CO: 1.4}, {(_CO, _DE): 1.8, (_CO, _AR): 0.8}),
    Action.CART_ABANDONMENT: ({_DE: 1.6}, {(_DE, _CO): 0.75, (_DE, _AR): 0.7}),
    Action.POST_PURCHASE_ONBOARDING: ({_PP: 1.4}, {(_PP, _LO): 1.6, (_PP, _AR): 0.7}),
    Action.FEEDBACK_REQUEST: ({_PP: 1.1}, {(_PP, _LO): 1.3}),
    Action.CROSS_SELL: ({_PP: 1.8, _LO: 1.3}, {}),
    Action.LOYALTY_REWARD: ({_LO: 1.6}, {(_LO, _AR): 0.6, (_LO, _CO): 0.8}),
    Action.WINBACK_OFFER: (
        {_AR: 2.0, _LA: 3.0},
        {(_AR, _CO): 2.2, (_AR, _DE): 2.5, (_AR, _LA): 0.7, (_LA, _CO): 4.0},
    ),
}


def _effect_tables() -> tuple[np.ndarray, np.ndarray]:
    hazard = np.ones((_N_ACTIONS, _N_STAGES))
    edges = np.ones((_N_ACTIONS, _N_EDGES + 1))
    edge_index = {(int(f), int(t)): i for i, (f, t) in enumerate(zip(_EDGE_FROM, _EDGE_TO, strict=True))}
    for action, (stage_mult, edge_mult) in _EFFECTS.items():
        a = _A[action]
        hazard[a] = _WRONG_STAGE_HAZARD
        for s, m in stage_mult.items():
            hazard[a, s] = m
        for pair, m in edge_mult.items():
            edges[a, edge_index[pair]] = m
    hazard.setflags(write=False)
    edges.setflags(write=False)
    return hazard, edges


_ACTION_HAZARD, _ACTION_EDGE = _effect_tables()

# Events: expected events per day per stage (times the customer's activity and a weekday factor) and the
# stage's mix over event types. Purchases are not in the mix: they come from the hazard, with their funnel.
_EVENT_RATE = np.array([0.4, 0.7, 1.8, 0.4, 0.45, 0.1, 0.02])
_WEEKDAY_FACTOR = np.array([1.05, 1.0, 1.0, 0.95, 0.95, 1.15, 1.2])  # Monday .. Sunday
_MIX_TYPES: tuple[str, ...] = (
    EventType.PAGE_VIEW,
    EventType.SEARCH,
    EventType.PRODUCT_VIEW,
    EventType.ADD_TO_CART,
    EventType.REMOVE_FROM_CART,
    EventType.CHECKOUT_START,
    EventType.REVIEW,
    EventType.SUPPORT_CONTACT,
    EventType.SOCIAL_ENGAGEMENT,
    EventType.PUSH_OPEN,
)
_MIX = np.array(
    [
        # page search product cart remove checkout review support social push
        [0.52, 0.10, 0.22, 0.02, 0.00, 0.00, 0.00, 0.01, 0.10, 0.03],  # awareness
        [0.25, 0.18, 0.40, 0.07, 0.02, 0.01, 0.00, 0.01, 0.04, 0.02],  # consideration
        [0.14, 0.08, 0.30, 0.25, 0.07, 0.12, 0.00, 0.02, 0.01, 0.01],  # decision
        [0.30, 0.05, 0.24, 0.05, 0.01, 0.00, 0.12, 0.10, 0.08, 0.05],  # post_purchase
        [0.25, 0.10, 0.35, 0.11, 0.02, 0.03, 0.04, 0.02, 0.04, 0.04],  # loyal
        [0.50, 0.05, 0.20, 0.01, 0.00, 0.00, 0.00, 0.09, 0.10, 0.05],  # at_risk
        [0.70, 0.00, 0.05, 0.00, 0.00, 0.00, 0.00, 0.00, 0.25, 0.00],  # lapsed
    ]
)
_MIX_CUM = np.cumsum(_MIX / _MIX.sum(axis=1, keepdims=True), axis=1)
_MIX_CUM[:, -1] = 1.0

# E-mail reactions per latent stage at the send.
_OPEN_RATE = np.array([0.34, 0.32, 0.38, 0.36, 0.42, 0.20, 0.10])
_CLICK_GIVEN_OPEN = np.array([0.12, 0.15, 0.20, 0.14, 0.17, 0.10, 0.06])
_UNSUB_BASE = 0.0008
_UNSUB_FATIGUE_POWER = 1.5
_UNSUB_STAGE = np.array([1.0, 1.0, 1.0, 1.0, 0.8, 1.5, 2.0])

# Customers who exist at the start: their latent stage then, and their past purchases by stage.
_INITIAL_MIX = np.array([0.04, 0.14, 0.03, 0.08, 0.16, 0.20, 0.35])
_INITIAL_PURCHASES = np.array([0.3, 0.3, 0.3, 1.5, 2.0, 1.2, 0.8])  # Poisson mean ...
_INITIAL_PURCHASES_MIN = np.array([0, 0, 0, 1, 2, 0, 0])  # ... plus this

# Event codes and the order of events within a session (the funnel).
_ET = {e: i for i, e in enumerate(schema.EVENT_TYPES)}
_CH = {c: i for i, c in enumerate(schema.CHANNELS)}
_MIX_CODES = np.array([_ET[t] for t in _MIX_TYPES], dtype=np.int8)
_FUNNEL_RANK_OF: dict[str, int] = {
    EventType.PAGE_VIEW: 0,
    EventType.SEARCH: 1,
    EventType.PRODUCT_VIEW: 2,
    EventType.REVIEW: 2,
    EventType.ADD_TO_CART: 3,
    EventType.REMOVE_FROM_CART: 4,
    EventType.CHECKOUT_START: 5,
    EventType.PURCHASE: 6,
}
_FUNNEL_RANK = np.zeros(len(schema.EVENT_TYPES), dtype=np.int8)
for _t, _r in _FUNNEL_RANK_OF.items():
    _FUNNEL_RANK[_ET[_t]] = _r
# Events that happen within a web or app session; the rest (social, support, push) stand alone.
_SESSION_TYPES = np.zeros(len(schema.EVENT_TYPES), dtype=bool)
_SESSION_TYPES[[_ET[t] for t in _FUNNEL_RANK_OF]] = True

# Browsing events that are about an item.
_ITEM_BROWSE_CODES = np.array(
    [
        _ET[t]
        for t in (EventType.PRODUCT_VIEW, EventType.ADD_TO_CART, EventType.REMOVE_FROM_CART, EventType.REVIEW)
    ],
    dtype=np.int8,
)
# Item history kept per customer: the last viewed or carted items and the last purchased ones.
_VIEW_HISTORY = 16
_BUY_HISTORY = 8

# Times of day, in seconds: sessions start between 07:00 and 23:00; nothing of a day ends after 23:59.
_DAY_S = 86_400
_SESSION_FROM_S = 7 * 3600
_SESSION_TO_S = 23 * 3600
_LAST_S = _DAY_S - 1
_MAX_SESSIONS = 8  # browsing sessions per day; slot _PURCHASE_SLOT is the purchase session
_PURCHASE_SLOT = 9
_NEVER = -(10**6)

_CATEGORY_NAMES: tuple[str, ...] = (
    "apparel",
    "shoes",
    "accessories",
    "beauty",
    "fragrance",
    "home_decor",
    "kitchen",
    "furniture",
    "garden",
    "electronics",
    "phones",
    "computers",
    "gaming",
    "books",
    "music",
    "toys",
    "baby",
    "sports",
    "outdoor",
    "fitness",
    "pets",
    "grocery",
    "health",
    "jewelry",
    "watches",
    "bags",
    "stationery",
    "crafts",
    "automotive",
    "tools",
    "lighting",
    "bedding",
    "bath",
    "travel",
    "party",
    "wine",
    "coffee_tea",
    "snacks",
    "cameras",
    "audio",
)


# ----------------------------------------------------------------------------------------------------------
# Configuration and summary
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimConfig:
    """Settings of one simulation. Same config, same bytes.

    Attributes:
        n_customers: customers in the whole period (existing at the start plus arrivals).
        n_items: items in the catalogue.
        n_categories: item categories (1 .. any; the first 40 have readable names).
        start: first simulated day (ISO date); the default is a Monday.
        days: simulated days.
        seed: root seed; the catalogue and every chunk get their own stream derived from it.
        decision_every_days: days between two decisions for one customer.
        outcome_days: the outcome window of a decision (conversion = a purchase within it); at most
            `decision_every_days`, so that windows never overlap.
        decision_hour: UTC hour of decisions and sends, before any activity of the day.
        campaign_weekdays: weekdays (0 = Monday) on which campaigns go out; each customer gets one. One
            weekday by default: the feature job's weekly cutoffs then fall on every decision's day.
        consent_rate: share of customers who sign up to the newsletter.
        send_rate: probability that the logging policy sends something to a consented customer.
        initial_share: share of customers who already exist at the start (signed up in the year before).
        app_share: share of customers who use the app (app sessions and push opens).
        taste_concentration: sum of the Dirichlet parameters of category tastes (around the global category
            popularity); small values give each customer a few favourite categories.
        chunk_size: customers simulated at once; one events part per chunk. Results depend on it.
        policy: name recorded for the logging policy.
        control_share: share of customers in the control group (stable per customer id and seed): they
            get no_send at every decision, and the policy's draw is logged as `intended_action`. 0 (the
            default) leaves the random stream, and so every output, as without a control group.
    """

    n_customers: int = 20_000
    n_items: int = 5_000
    n_categories: int = 24
    start: str = "2026-01-05"
    days: int = 182
    seed: int = 0
    decision_every_days: int = 7
    outcome_days: int = 7
    decision_hour: int = 6
    campaign_weekdays: tuple[int, ...] = (0,)
    consent_rate: float = 0.8
    send_rate: float = 0.75
    initial_share: float = 0.3
    app_share: float = 0.35
    taste_concentration: float = 2.0
    chunk_size: int = 100_000
    policy: str = "sim_logging_v1"
    control_share: float = 0.0

    def __post_init__(self) -> None:
        if self.n_customers < 1 or self.n_items < 1 or self.days < 1 or self.chunk_size < 1:
            raise ValueError("n_customers, n_items, days and chunk_size must be positive")
        if not 1 <= self.n_categories <= self.n_items:
            raise ValueError("n_categories must be between 1 and n_items")
        if not 1 <= self.outcome_days <= self.decision_every_days:
            raise ValueError(
                "outcome_days must be between 1 and decision_every_days (windows must not overlap)"
            )
        if not 0 <= self.decision_hour * 3600 < _SESSION_FROM_S:
            raise ValueError("decision_hour must come before the day's sessions (07:00 UTC)")
        if not self.campaign_weekdays or any(not 0 <= w <= 6 for w in self.campaign_weekdays):
            raise ValueError("campaign_weekdays must be weekdays 0 (Monday) .. 6")
        for name in ("consent_rate", "send_rate", "initial_share", "app_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not 0.0 < self.send_rate < 1.0:
            raise ValueError(
                "send_rate must be strictly between 0 and 1 so that every action has a propensity"
            )
        if not 0.0 <= self.control_share < 1.0:
            raise ValueError("control_share must be within [0, 1): someone has to be sent something")
        dt.date.fromisoformat(self.start)

    @property
    def start_date(self) -> dt.date:
        return dt.date.fromisoformat(self.start)


@dataclass
class SimSummary:
    """What a simulation made, and the realism figures it reached.

    Rates: `open_rate`, `click_rate` and `unsubscribe_rate` are per send; `conversion_no_send` is the share
    of no_send decisions followed by a purchase within the outcome window; `stage_mix` is the share of
    customer-days per latent stage.
    """

    out: str
    customers: int
    items: int
    events: int
    events_per_customer: float
    parts: int
    decisions: int
    sends: int
    opens: int
    clicks: int
    unsubscribes: int
    purchases: int
    conversions: int
    conversion_no_send: float
    open_rate: float
    click_rate: float
    unsubscribe_rate: float
    stage_mix: dict[str, float]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_summary(summary: SimSummary) -> str:
    """Renders a summary as a few lines of text for the command line."""
    mix = ", ".join(f"{stage} {share:.1%}" for stage, share in summary.stage_mix.items())
    return "\n".join(
        [
            f"simulated {summary.customers:,} customers, {summary.items:,} items in {summary.seconds:.1f} s"
            f" -> {summary.out}",
            f"events       {summary.events:,} ({summary.events_per_customer:.1f} per customer)"
            f" in {summary.parts} part(s); purchases {summary.purchases:,}",
            f"decisions    {summary.decisions:,}; sends {summary.sends:,};"
            f" conversions {summary.conversions:,}"
            f" (no_send converts {summary.conversion_no_send:.1%} in the outcome window)",
            f"e-mail       open {summary.open_rate:.1%}, click {summary.click_rate:.1%},"
            f" unsubscribe {summary.unsubscribe_rate:.2%} per send",
            f"stage mix    {mix}",
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# The chain and the exact forward pass
# ----------------------------------------------------------------------------------------------------------


def _hazard(stage: np.ndarray, alpha: np.ndarray, purchases: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Daily purchase probability; arguments broadcast against each other."""
    k = np.minimum(purchases, _K_CAP)
    h = (
        _HAZARD_BASE[stage]
        * np.power(alpha, _HAZARD_ALPHA)
        * np.exp(_HAZARD_K[stage] * k)
        * _ACTION_HAZARD[action, stage]
    )
    return np.minimum(h, _HAZARD_CAP)


def _edge_rates(edge: np.ndarray, alpha: np.ndarray, purchases: np.ndarray, action: np.ndarray) -> np.ndarray:
    """Daily probability of moving along each edge, given no purchase; arguments broadcast."""
    k = np.minimum(purchases, _K_CAP)
    r = (
        _EDGE_BASE[edge]
        * np.power(alpha, _EDGE_ALPHA[edge])
        * np.exp(_EDGE_K[edge] * k)
        * _ACTION_EDGE[action, edge]
    )
    return np.minimum(r, _RATE_CAP)


def true_conversion_probabilities(
    stage: np.ndarray, alpha: np.ndarray, purchases: np.ndarray, days: int = 7
) -> np.ndarray:
    """The exact probability of at least one purchase within `days` days, under every action.

    A forward pass of the customer's stage distribution restricted to "not purchased yet": each day the mass
    in stage s survives with 1 - h(s) and then moves along the chain. The simulator runs the same hazard and
    rates, so realised outcomes are Bernoulli draws of these probabilities.

    Args:
        stage: latent stage index per decision (into `LATENT_STAGES`), shape [n].
        alpha: the customers' activity multipliers, shape [n].
        purchases: the customers' past purchases (latent, including those before the period), shape [n].
        days: the outcome window.

    Returns:
        Array [n, len(ACTIONS)]: column a is the probability under `ACTIONS[a]`.
    """
    n = len(stage)
    al = np.asarray(alpha, dtype=np.float64)[:, None, None]
    k = np.asarray(purchases, dtype=np.float64)[:, None, None]
    act = np.arange(_N_ACTIONS)[None, :, None]
    h = _hazard(np.arange(_N_STAGES)[None, None, :], al, k, act)  # [n, A, S]
    rates = _edge_rates(np.arange(_N_EDGES)[None, None, :], al, k, act)  # [n, A, E]
    stay = 1.0 - (rates.reshape(-1, _N_EDGES) @ _FROM_ONEHOT).reshape(n, _N_ACTIONS, _N_STAGES)
    alive = np.zeros((n, _N_ACTIONS, _N_STAGES))
    alive[np.arange(n), :, np.asarray(stage, dtype=np.int64)] = 1.0
    for _ in range(days):
        survived = alive * (1.0 - h)
        flow = survived[:, :, _EDGE_FROM] * rates  # [n, A, E]
        alive = survived * stay + (flow.reshape(-1, _N_EDGES) @ _TO_ONEHOT).reshape(alive.shape)
    return np.asarray(1.0 - alive.sum(axis=2))


@dataclass(frozen=True)
class _Tables:
    """The chain tabulated over activity level x past purchases (capped) x action x stage.

    Built from `_hazard`, `_edge_rates` and `true_conversion_probabilities`, so the simulator's daily step
    and the ground truth read the same numbers.
    """

    hazard: np.ndarray  # [levels, K + 1, actions, stages]
    out_rates: np.ndarray  # [levels, K + 1, actions, stages, max out-edges]
    p_convert: np.ndarray  # [levels, K + 1, stages, actions]

    @classmethod
    def build(cls, outcome_days: int) -> _Tables:
        n_levels, n_k = len(_ACTIVITY_GRID), _K_CAP + 1
        level = np.arange(n_levels)[:, None, None, None]
        k = np.arange(n_k)[None, :, None, None]
        action = np.arange(_N_ACTIONS)[None, None, :, None]
        stage = np.arange(_N_STAGES)[None, None, None, :]
        hazard = _hazard(stage, _ACTIVITY_GRID[level], k, action)
        out_rates = _edge_rates(
            _OUT_EDGES[None, None, None, :, :],
            _ACTIVITY_GRID[level][..., None],
            k[..., None],
            action[..., None],
        )
        lv, kk, st = (
            g.ravel() for g in np.meshgrid(range(n_levels), range(n_k), range(_N_STAGES), indexing="ij")
        )
        p = true_conversion_probabilities(st, _ACTIVITY_GRID[lv], kk, outcome_days)
        return cls(hazard, out_rates, p.reshape(n_levels, n_k, _N_STAGES, _N_ACTIONS))


def unsubscribe_probability(sends_28d: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Probability that a send leads to an unsubscribe: grows with the e-mails of the last 28 days.

    Args:
        sends_28d: e-mails sent to the customer in the 28 days up to and including this one (>= 1).
        stage: latent stage index at the send.
    """
    return np.asarray(_UNSUB_BASE * np.power(sends_28d, _UNSUB_FATIGUE_POWER) * _UNSUB_STAGE[stage])


# ----------------------------------------------------------------------------------------------------------
# The logging policy
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInputs:
    """What the logging policy may look at: observable history only, never the latent stage.

    All arrays have one entry per decision; "days since" is `inf` where the thing never happened.
    """

    consented: np.ndarray
    tenure_days: np.ndarray
    days_since_view: np.ndarray
    days_since_cart: np.ndarray
    days_since_purchase: np.ndarray
    days_since_activity: np.ndarray
    purchases: np.ndarray


def logging_policy_probabilities(inputs: PolicyInputs, send_rate: float) -> np.ndarray:
    """The randomised logging policy: the probability of every action for every decision.

    Consented customers get no_send with 1 - `send_rate` and each message with `send_rate` times a
    normalised weight; weights are >= 0.5 and grow mildly where the history makes a message fit (a recent
    cart makes cart_abandonment 4x as likely), so every action keeps a propensity > 0. Non-consented
    customers get no_send with probability 1.

    Returns:
        Array [n, len(ACTIONS)] whose rows sum to 1.
    """
    n = len(inputs.consented)
    w = np.ones((n, _N_ACTIONS))
    w[:, _NO_SEND] = 0.0
    new = inputs.tenure_days < 14
    w[:, _A[Action.WELCOME_SERIES]] = np.where(new, 4.0, 0.5)
    w[:, _A[Action.EDUCATIONAL_CONTENT]] = np.where(inputs.tenure_days < 60, 1.5, 0.8)
    w[:, _A[Action.BROWSE_ABANDONMENT]] *= np.where(inputs.days_since_view <= 7, 2.5, 1.0)
    w[:, _A[Action.CART_ABANDONMENT]] *= np.where(inputs.days_since_cart <= 7, 4.0, 0.7)
    recent_buy = inputs.days_since_purchase <= 14
    w[:, _A[Action.POST_PURCHASE_ONBOARDING]] *= np.where(recent_buy, 3.0, 0.7)
    feedback = (inputs.days_since_purchase >= 7) & (inputs.days_since_purchase <= 30)
    w[:, _A[Action.FEEDBACK_REQUEST]] *= np.where(feedback, 3.0, 0.6)
    w[:, _A[Action.CROSS_SELL]] *= np.where(inputs.days_since_purchase <= 30, 2.0, 1.0)
    w[:, _A[Action.LOYALTY_REWARD]] *= np.where(inputs.purchases >= 2, 2.5, 0.7)
    dormant = (inputs.days_since_activity > 30) & (inputs.tenure_days >= 30)
    w[:, _A[Action.WINBACK_OFFER]] *= np.where(dormant, 3.0, 1.0)
    probs = send_rate * w / w.sum(axis=1, keepdims=True)
    probs[:, _NO_SEND] = 1.0 - send_rate
    probs[~np.asarray(inputs.consented, dtype=bool)] = np.eye(_N_ACTIONS)[_NO_SEND]
    return probs


def control_group(customer_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Whether each customer is in the control group: stable per id and seed, random across customers.

    sha256 of the salt and the id, read as a number in [0, 1), below `share`: the service's rule
    (`features.policy.in_control_group`) with the salt `sim-control-{seed}`. A hash rather than the run's
    random stream keeps membership the same whatever the chunking, and leaves that stream untouched.

    Returns:
        Bool array, one entry per id.
    """
    return in_control_group(customer_ids, share, f"sim-control-{seed}")


# ----------------------------------------------------------------------------------------------------------
# Catalogue
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Catalog:
    category: np.ndarray  # [items] category index
    price: np.ndarray  # [items]
    popularity: np.ndarray  # [items] marginal probability of an item under the average taste
    category_weight: np.ndarray  # [K] global category popularity (the mean of the customers' tastes)
    by_category: np.ndarray  # item indices sorted by category
    cum: np.ndarray  # within-category cumulative probability + category index, in `by_category` order
    names: tuple[str, ...]


def _zipf(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Zipf weights over n things in a random order."""
    w = 1.0 / np.power(np.arange(1, n + 1), exponent)
    return np.asarray(rng.permutation(w / w.sum()))


def _make_catalog(cfg: SimConfig, rng: np.random.Generator) -> _Catalog:
    k = cfg.n_categories
    names = tuple(_CATEGORY_NAMES[i] if i < len(_CATEGORY_NAMES) else f"category_{i:03d}" for i in range(k))
    cat_weight = _zipf(k, 1.0, rng)
    # Popular categories carry more items; every category at least one.
    category = np.concatenate(
        [np.arange(k), rng.choice(k, size=cfg.n_items - k, p=np.sqrt(cat_weight) / np.sqrt(cat_weight).sum())]
    )
    category = rng.permutation(category)
    by_category = np.argsort(category, kind="stable")
    within = np.empty(cfg.n_items)
    cum = np.empty(cfg.n_items)
    counts = np.bincount(category, minlength=k)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for c in range(k):
        sl = slice(starts[c], starts[c] + counts[c])
        p = _zipf(int(counts[c]), 1.05, rng)
        within[by_category[sl]] = p
        c_cum = np.cumsum(p)
        c_cum[-1] = 1.0  # exact end, so that a draw never spills into the next category
        cum[sl] = c + c_cum
    median_price = np.exp(rng.normal(3.4, 0.8, size=k))
    price = median_price[category] * np.exp(rng.normal(0.0, 0.5, size=cfg.n_items))
    price = np.maximum(np.round(price) - 0.01, 0.99)
    return _Catalog(
        category=category,
        price=price,
        popularity=cat_weight[category] * within,
        category_weight=cat_weight,
        by_category=by_category,
        cum=cum,
        names=names,
    )


# ----------------------------------------------------------------------------------------------------------
# Fast Arrow columns
# ----------------------------------------------------------------------------------------------------------


def _digits(numbers: np.ndarray, width: int) -> np.ndarray:
    """ASCII digits of non-negative integers, zero-padded: uint8 [n, width]."""
    x = np.asarray(numbers, dtype=np.int64)
    # 32-bit division is much faster than 64-bit, and ids fit.
    x = x.astype(np.uint32) if len(x) == 0 or x.max() < 2**32 else x.copy()
    out = np.empty((len(x), width), dtype=np.uint8)
    for j in range(width - 1, -1, -1):
        q = x // 10
        out[:, j] = x - q * 10 + 48
        x = q
    return out


def _fixed_strings(
    parts: Sequence[str | tuple[np.ndarray, int]], n: int, valid: np.ndarray | None = None
) -> pa.Array:
    """A string array of fixed-width ids such as "C0000001-E000042", built without Python objects.

    Args:
        parts: literal strings and (numbers, width) pairs, concatenated left to right.
        n: rows.
        valid: where False the row is null.
    """
    width = sum(len(p) if isinstance(p, str) else p[1] for p in parts)
    if n * width >= 2**31:
        raise ValueError("too many ids for one string array; lower chunk_size")
    mat = np.empty((n, width), dtype=np.uint8)
    col = 0
    for p in parts:
        if isinstance(p, str):
            mat[:, col : col + len(p)] = np.frombuffer(p.encode("ascii"), dtype=np.uint8)
            col += len(p)
        else:
            numbers = p[0] if valid is None else np.where(valid, p[0], 0)
            mat[:, col : col + p[1]] = _digits(numbers, p[1])
            col += p[1]
    offsets = np.arange(n + 1, dtype=np.int32) * np.int32(width)
    bitmap = None
    nulls = 0
    if valid is not None:
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        nulls = int(n - np.count_nonzero(valid))
    return pa.Array.from_buffers(
        pa.string(), n, [bitmap, pa.py_buffer(offsets), pa.py_buffer(mat)], null_count=nulls
    )


def _dictionary(codes: np.ndarray, values: pa.Array, index_type: Any) -> pa.DictionaryArray:
    """A dictionary array from integer codes; negative codes are null."""
    codes = np.asarray(codes)
    mask = codes < 0
    indices = pa.array(
        codes.astype(index_type.to_pandas_dtype()), type=index_type, mask=mask if mask.any() else None
    )
    return pa.DictionaryArray.from_arrays(indices, values)


def _timestamps(us: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(us, dtype="datetime64[us]"), type=schema.TS_TYPE)


def _floats(x: np.ndarray) -> pa.Array:
    nan = np.isnan(x)
    return pa.array(x, type=pa.float64(), mask=nan if nan.any() else None)


# ----------------------------------------------------------------------------------------------------------
# One chunk of customers
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Events:
    """Columns of events in the making; codes instead of strings (see `_ChunkSim._event_table`)."""

    cust: list[np.ndarray] = field(default_factory=list)  # local customer index
    ts: list[np.ndarray] = field(default_factory=list)  # microseconds since the epoch
    etype: list[np.ndarray] = field(default_factory=list)
    channel: list[np.ndarray] = field(default_factory=list)
    item: list[np.ndarray] = field(default_factory=list)  # -1: none
    quantity: list[np.ndarray] = field(default_factory=list)  # nan: none
    value: list[np.ndarray] = field(default_factory=list)
    message: list[np.ndarray] = field(default_factory=list)  # action index, -1: none
    campaign: list[np.ndarray] = field(default_factory=list)  # decision number of the customer, -1: none
    session: list[np.ndarray] = field(default_factory=list)  # day * 10 + slot, -1: none

    def add(
        self,
        cust: np.ndarray,
        ts: np.ndarray,
        etype: np.ndarray | int,
        channel: np.ndarray | int,
        *,
        item: np.ndarray | int = -1,
        quantity: np.ndarray | float = np.nan,
        value: np.ndarray | float = np.nan,
        message: np.ndarray | int = -1,
        campaign: np.ndarray | int = -1,
        session: np.ndarray | int = -1,
    ) -> None:
        n = len(cust)
        if n == 0:
            return
        self.cust.append(np.asarray(cust, dtype=np.int32))
        self.ts.append(np.asarray(ts, dtype=np.int64))
        self.etype.append(np.broadcast_to(np.asarray(etype, dtype=np.int8), n))
        self.channel.append(np.broadcast_to(np.asarray(channel, dtype=np.int8), n))
        self.item.append(np.broadcast_to(np.asarray(item, dtype=np.int32), n))
        self.quantity.append(np.broadcast_to(np.asarray(quantity, dtype=np.float64), n))
        self.value.append(np.broadcast_to(np.asarray(value, dtype=np.float64), n))
        self.message.append(np.broadcast_to(np.asarray(message, dtype=np.int8), n))
        self.campaign.append(np.broadcast_to(np.asarray(campaign, dtype=np.int32), n))
        self.session.append(np.broadcast_to(np.asarray(session, dtype=np.int32), n))


@dataclass
class _Decisions:
    cust: list[np.ndarray] = field(default_factory=list)
    day: list[np.ndarray] = field(default_factory=list)
    seq: list[np.ndarray] = field(default_factory=list)
    stage: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    propensity: list[np.ndarray] = field(default_factory=list)
    p_convert: list[np.ndarray] = field(default_factory=list)
    sends_28d: list[np.ndarray] = field(default_factory=list)
    unsubscribed: list[np.ndarray] = field(default_factory=list)
    control: list[np.ndarray] = field(default_factory=list)
    intended: list[np.ndarray] = field(default_factory=list)  # the policy's draw (= action outside control)


@dataclass
class _ChunkResult:
    events: pa.Table
    decisions: pa.Table
    truth_decisions: pa.Table
    stages: pa.Table
    counts: dict[str, int]
    stage_days: np.ndarray


def _group_rank(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a sorted key array: the rank of each row within its run of equal keys, and the run's length."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    boundary = np.empty(n, dtype=bool)
    boundary[0] = True
    np.not_equal(keys[1:], keys[:-1], out=boundary[1:])
    starts = np.flatnonzero(boundary)
    run = np.cumsum(boundary) - 1
    lengths = np.diff(np.append(starts, n))
    return np.arange(n) - starts[run], lengths[run]


class _ChunkSim:
    """Simulates customers [first, first + n) of the shop day by day, all of them at once."""

    def __init__(
        self, cfg: SimConfig, catalog: _Catalog, tables: _Tables, first: int, n: int, rng: np.random.Generator
    ) -> None:
        self.cfg = cfg
        self.cat = catalog
        self.tables = tables
        self.first = first
        self.n = n
        self.rng = rng
        self.start_us = int(
            dt.datetime.combine(cfg.start_date, dt.time(), tzinfo=dt.UTC).timestamp() * 1_000_000
        )
        self.start_weekday = cfg.start_date.weekday()
        self.cust_width = max(7, len(str(cfg.n_customers)))
        self.day_width = max(3, len(str(cfg.days - 1)))
        self.dec_width = max(3, len(str(cfg.days // cfg.decision_every_days + 1)))
        self.events = _Events()
        self.decisions = _Decisions()
        self.counts = dict.fromkeys(("sends", "opens", "clicks", "unsubscribes", "purchases"), 0)
        self._init_customers()
        # Drawn from the ids, not from `rng`: membership does not depend on chunking, and a run without a
        # control group consumes exactly the random numbers it did before the control group existed.
        self.control = np.zeros(n, dtype=bool)
        if cfg.control_share > 0:
            ids = [f"C{i:0{self.cust_width}d}" for i in range(first + 1, first + n + 1)]
            self.control = control_group(ids, cfg.control_share, cfg.seed)

    # -- customers -------------------------------------------------------------------------------------

    def _init_customers(self) -> None:
        cfg, rng, n = self.cfg, self.rng, self.n
        self.existing = rng.random(n) < cfg.initial_share
        self.arrival = np.where(self.existing, 0, rng.integers(0, cfg.days, size=n)).astype(np.int32)
        self.signup_day = np.where(self.existing, -rng.integers(1, 366, size=n), self.arrival).astype(
            np.int32
        )
        self.signup_s = rng.uniform(_SESSION_FROM_S, 22 * 3600, size=n)
        self.consent = rng.random(n) < cfg.consent_rate
        raw = np.log(np.clip(rng.lognormal(-0.18, 0.6, size=n), 0.2, 5.0))
        step = np.log(_ACTIVITY_GRID[1] / _ACTIVITY_GRID[0])
        self.level = np.rint((raw - np.log(_ACTIVITY_GRID[0])) / step).astype(np.int64)
        self.alpha = _ACTIVITY_GRID[self.level]
        self.app_user = rng.random(n) < cfg.app_share
        self.repeat_view = rng.beta(2.0, 4.0, size=n)
        self.rebuy = rng.beta(1.5, 6.0, size=n)
        taste = rng.dirichlet(cfg.taste_concentration * self.cat.category_weight, size=n)
        # A little of the global taste everywhere, so that no category is impossible for anyone.
        taste = 0.92 * np.nan_to_num(taste) + 0.08 * self.cat.category_weight
        self.taste_cum = np.cumsum(taste, axis=1)
        self.taste_cum /= self.taste_cum[:, -1:]

        init_stage = rng.choice(_N_STAGES, size=n, p=_INITIAL_MIX)
        self.stage = np.where(self.existing, init_stage, _AW).astype(np.int64)
        init_k = _INITIAL_PURCHASES_MIN[init_stage] + rng.poisson(_INITIAL_PURCHASES[init_stage])
        self.purchases = np.where(self.existing, init_k, 0).astype(np.int64)

        # Item history: existing customers bring an unobserved past (their purchases and some views).
        self.viewed = np.full((n, _VIEW_HISTORY), -1, dtype=np.int32)
        self.bought = np.full((n, _BUY_HISTORY), -1, dtype=np.int32)
        n_viewed = np.where(self.existing, np.minimum(rng.poisson(4.0, size=n), _VIEW_HISTORY), 0)
        n_bought = np.where(self.existing, np.minimum(self.purchases, _BUY_HISTORY), 0)
        rows = np.repeat(np.arange(n), _VIEW_HISTORY)
        self.viewed[:] = self._taste_items(rows).reshape(n, _VIEW_HISTORY)
        rows = np.repeat(np.arange(n), _BUY_HISTORY)
        self.bought[:] = self._taste_items(rows).reshape(n, _BUY_HISTORY)
        self.viewed_count = n_viewed.astype(np.int64)
        self.viewed_next = self.viewed_count % _VIEW_HISTORY
        self.bought_count = n_bought.astype(np.int64)
        self.bought_next = self.bought_count % _BUY_HISTORY

        # Decision schedule: the first campaign weekday after arrival (existing customers: one at random in
        # the first week), then every decision_every_days.
        weekdays = np.asarray(cfg.campaign_weekdays)
        chosen = weekdays[rng.integers(0, len(weekdays), size=n)]
        after = self.arrival + 1
        wd_after = (self.start_weekday + after) % 7
        gap = (weekdays[None, :] - wd_after[:, None]) % 7
        first_new = after + gap.min(axis=1)
        first_existing = 1 + (chosen - (self.start_weekday + 1)) % 7
        self.next_decision = np.where(self.existing, first_existing, first_new).astype(np.int64)
        self.decision_seq = np.zeros(n, dtype=np.int64)
        self.action = np.full(n, _NO_SEND, dtype=np.int64)
        self.action_until = np.full(n, _NEVER, dtype=np.int64)
        self.decision_row = np.full(n, -1, dtype=np.int64)
        max_rows = n * (cfg.days // cfg.decision_every_days + 2)
        self.converted = np.zeros(max_rows, dtype=np.int8)
        self.rows = 0
        self.send_days = np.full((n, max(1, 28 // cfg.decision_every_days + 1)), _NEVER, dtype=np.int64)
        self.send_next = np.zeros(n, dtype=np.int64)

        # What the logging policy can observe.
        self.last_view = np.full(n, _NEVER, dtype=np.int64)
        self.last_cart = np.full(n, _NEVER, dtype=np.int64)
        self.last_purchase = np.full(n, _NEVER, dtype=np.int64)
        self.last_activity = np.full(n, _NEVER, dtype=np.int64)
        self.seen_purchases = np.zeros(n, dtype=np.int64)

        self.stage_by_day = np.full((cfg.days, n), -1, dtype=np.int8)

    # -- items -----------------------------------------------------------------------------------------

    def _taste_items(self, cust: np.ndarray) -> np.ndarray:
        """Items drawn from the customers' category tastes, then by popularity within the category."""
        rng, cat = self.rng, self.cat
        u = rng.random(len(cust))
        c = (self.taste_cum[cust] < u[:, None]).sum(axis=1)
        c = np.minimum(c, len(cat.names) - 1)
        pos = np.searchsorted(cat.cum, c + rng.random(len(cust)))
        return np.asarray(cat.by_category[np.minimum(pos, len(cat.by_category) - 1)], dtype=np.int32)

    def _from_history(
        self, buf: np.ndarray, count: np.ndarray, nxt: np.ndarray, cust: np.ndarray
    ) -> np.ndarray:
        """A recent item of each customer's history (recency-biased); -1 where the history is empty."""
        size = buf.shape[1]
        cnt = count[cust]
        back = np.floor(cnt * np.square(self.rng.random(len(cust)))).astype(np.int64)
        slot = (nxt[cust] - 1 - back) % size
        return np.where(cnt > 0, buf[cust, slot], -1).astype(np.int32)

    def _choose_items(self, cust: np.ndarray, p_viewed: np.ndarray, p_bought: np.ndarray) -> np.ndarray:
        """Per event: an item from the viewed history, the bought history or the taste, with fallbacks."""
        u = self.rng.random(len(cust))
        from_viewed = self._from_history(self.viewed, self.viewed_count, self.viewed_next, cust)
        from_bought = self._from_history(self.bought, self.bought_count, self.bought_next, cust)
        taste = self._taste_items(cust)
        items = np.where(u < p_viewed, from_viewed, np.where(u < p_viewed + p_bought, from_bought, taste))
        return np.asarray(np.where(items < 0, taste, items), dtype=np.int32)

    def _remember(
        self, buf: np.ndarray, count: np.ndarray, nxt: np.ndarray, cust: np.ndarray, items: np.ndarray
    ) -> None:
        """Appends items (grouped by customer, in the day's order) to the customers' ring buffers."""
        if len(cust) == 0:
            return
        size = buf.shape[1]
        rank, length = _group_rank(cust)
        keep = rank >= length - size  # only the last `size` items of a day can survive anyway
        c, r, it = cust[keep], rank[keep], items[keep]
        buf[c, (nxt[c] + r) % size] = it
        added = np.bincount(cust, minlength=self.n)
        nxt += added
        nxt %= size
        np.minimum(count + added, size, out=count)

    # -- one day ---------------------------------------------------------------------------------------

    def _day_us(self, day: int) -> int:
        return self.start_us + day * _DAY_S * 1_000_000

    def run(self, on_day: Callable[[], None] | None = None) -> _ChunkResult:
        for day in range(self.cfg.days):
            self._step(day)
            if on_day is not None:
                on_day()
        return self._result()

    def _step(self, day: int) -> None:
        cfg, rng = self.cfg, self.rng
        active = np.flatnonzero(self.arrival <= day)
        self._signups(day)
        due = active[self.next_decision[active] == day]
        if len(due) and day + cfg.outcome_days <= cfg.days:
            self._decide(day, due)

        # Dynamics: purchase with the hazard, otherwise move along one edge or stay. The e-mail of the last
        # outcome_days days modifies both; true_conversion_probabilities runs the very same functions.
        s = self.stage[active]
        lv = self.level[active]
        k = np.minimum(self.purchases[active], _K_CAP)
        act = np.where(day < self.action_until[active], self.action[active], _NO_SEND)
        bought = rng.random(len(active)) < self.tables.hazard[lv, k, act, s]
        rates = self.tables.out_rates[lv, k, act, s]
        slot = (rng.random(len(active))[:, None] >= np.cumsum(rates, axis=1)).sum(axis=1)
        moved = _OUT_TO[s, slot].astype(np.int64)
        self.stage_by_day[day, active] = s
        win = bought & (day < self.action_until[active])
        self.converted[self.decision_row[active[win]]] = 1
        self._activity(day, active, s, bought)
        self.stage[active] = np.where(bought, _PP, moved)
        self.purchases[active] += bought

    def _signups(self, day: int) -> None:
        new = np.flatnonzero((self.arrival == day) & ~self.existing)
        if day == 0:
            # Existing customers signed up before the start; their sign-up events are in the data too.
            old = np.flatnonzero(self.existing)
            new = np.concatenate([old, new])
        if len(new) == 0:
            return
        ts = (
            self._day_us(0)
            + self.signup_day[new].astype(np.int64) * _DAY_S * 1_000_000
            + self.signup_s[new] * 1e6
        ).astype(np.int64)
        self.events.add(new, ts, _ET[EventType.SIGNUP], _CH[Channel.WEB])
        nl = new[self.consent[new]]
        ts_nl = ts[self.consent[new]] + (self.rng.uniform(5, 120, size=len(nl)) * 1e6).astype(np.int64)
        self.events.add(nl, ts_nl, _ET[EventType.NEWSLETTER_SIGNUP], _CH[Channel.EMAIL])

    def _decide(self, day: int, due: np.ndarray) -> None:
        cfg, rng = self.cfg, self.rng
        never = np.inf

        def since(last: np.ndarray) -> np.ndarray:
            x = (day - last[due]).astype(np.float64)
            return np.where(last[due] <= _NEVER // 2, never, x)

        inputs = PolicyInputs(
            consented=self.consent[due],
            tenure_days=(day - self.signup_day[due]).astype(np.float64),
            days_since_view=since(self.last_view),
            days_since_cart=since(self.last_cart),
            days_since_purchase=since(self.last_purchase),
            days_since_activity=since(self.last_activity),
            purchases=self.seen_purchases[due].astype(np.float64),
        )
        probs = logging_policy_probabilities(inputs, cfg.send_rate)
        cum = np.cumsum(probs, axis=1)
        cum[:, -1] = 1.0  # rounding must not leave a gap above the last action
        chosen = (rng.random(len(due))[:, None] >= cum).sum(axis=1)
        propensity = probs[np.arange(len(due)), chosen]
        intended = chosen
        control = self.control[due]
        if cfg.control_share > 0:
            # The policy drew for everyone; the control group is sent nothing. Logged propensity: the
            # marginal over the control draw (module docstring), for the control and everyone else alike.
            share = cfg.control_share
            chosen = np.where(control, _NO_SEND, intended)
            propensity = share * (chosen == _NO_SEND) + (1.0 - share) * probs[np.arange(len(due)), chosen]
        s = self.stage[due]
        p_convert = self.tables.p_convert[self.level[due], np.minimum(self.purchases[due], _K_CAP), s]

        send = chosen != _NO_SEND
        sent = due[send]
        ring = self.send_days[sent]
        ring[np.arange(len(sent)), self.send_next[sent]] = day
        self.send_days[sent] = ring
        self.send_next[sent] = (self.send_next[sent] + 1) % self.send_days.shape[1]
        sends_28d = (self.send_days[due] > day - 28).sum(axis=1)
        unsub = np.zeros(len(due), dtype=bool)
        unsub[send] = rng.random(len(sent)) < unsubscribe_probability(sends_28d[send], s[send])
        self._emails(day, sent, chosen[send], s[send], self.decision_seq[sent], unsub[send])
        self.consent[due[unsub]] = False

        rows = np.arange(self.rows, self.rows + len(due))
        self.rows += len(due)
        d = self.decisions
        d.cust.append(due.astype(np.int32))
        d.day.append(np.full(len(due), day, dtype=np.int32))
        d.seq.append(self.decision_seq[due].copy())
        d.stage.append(s.astype(np.int8))
        d.action.append(chosen.astype(np.int8))
        d.propensity.append(propensity)
        d.p_convert.append(p_convert)
        d.sends_28d.append(sends_28d.astype(np.int8))
        d.unsubscribed.append(unsub.astype(np.int8))
        d.control.append(control.copy())
        d.intended.append(intended.astype(np.int8))

        self.action[due] = chosen
        self.action_until[due] = day + cfg.outcome_days
        self.decision_row[due] = rows
        self.decision_seq[due] += 1
        self.next_decision[due] += cfg.decision_every_days

    def _emails(
        self,
        day: int,
        cust: np.ndarray,
        action: np.ndarray,
        stage: np.ndarray,
        seq: np.ndarray,
        unsub: np.ndarray,
    ) -> None:
        rng, ev = self.rng, self.events
        n = len(cust)
        if n == 0:
            return
        sent_us = self._day_us(day) + self.cfg.decision_hour * 3600 * 1_000_000
        ts = np.full(n, sent_us, dtype=np.int64)
        email = _CH[Channel.EMAIL]
        ev.add(cust, ts, _ET[EventType.EMAIL_SENT], email, message=action, campaign=seq)
        opened = rng.random(n) < _OPEN_RATE[stage]
        delay_s = np.clip(rng.lognormal(np.log(7200.0), 1.0, size=n), 60, 36 * 3600)
        open_ts = ts + (delay_s * 1e6).astype(np.int64)
        ev.add(
            cust[opened],
            open_ts[opened],
            _ET[EventType.EMAIL_OPEN],
            email,
            message=action[opened],
            campaign=seq[opened],
        )
        clicked = opened & (rng.random(n) < _CLICK_GIVEN_OPEN[stage])
        click_ts = open_ts + (rng.uniform(10, 600, size=n) * 1e6).astype(np.int64)
        ev.add(
            cust[clicked],
            click_ts[clicked],
            _ET[EventType.EMAIL_CLICK],
            email,
            message=action[clicked],
            campaign=seq[clicked],
        )
        unsub_ts = open_ts + (rng.uniform(5, 300, size=n) * 1e6).astype(np.int64)
        ev.add(
            cust[unsub],
            unsub_ts[unsub],
            _ET[EventType.EMAIL_UNSUBSCRIBE],
            email,
            message=action[unsub],
            campaign=seq[unsub],
        )
        self.counts["sends"] += n
        self.counts["opens"] += int(opened.sum())
        self.counts["clicks"] += int(clicked.sum())
        self.counts["unsubscribes"] += int(unsub.sum())

    def _activity(self, day: int, active: np.ndarray, s: np.ndarray, bought: np.ndarray) -> None:
        """The day's browsing, purchases and other contacts of the active customers."""
        rng, ev, cat = self.rng, self.events, self.cat
        weekday = (self.start_weekday + day) % 7
        counts = rng.poisson(_EVENT_RATE[s] * self.alpha[active] * _WEEKDAY_FACTOR[weekday])
        pos = np.repeat(np.arange(len(active)), counts)  # position in `active` of each event
        u = rng.random(len(pos))
        etype = _MIX_CODES[np.minimum((_MIX_CUM[s[pos]] < u[:, None]).sum(axis=1), len(_MIX_CODES) - 1)]
        no_app = ~self.app_user[active[pos]]
        etype = np.where(no_app & (etype == _ET[EventType.PUSH_OPEN]), _ET[EventType.PAGE_VIEW], etype)
        # Activity may not start before the sign-up on the arrival day.
        arriving = (self.arrival[active] == day) & ~self.existing[active]
        lo = np.where(arriving, np.maximum(self.signup_s[active] + 60, _SESSION_FROM_S), _SESSION_FROM_S)
        lo = np.minimum(lo, _SESSION_TO_S - 60)

        # Contacts outside sessions: social, support, push.
        other = ~_SESSION_TYPES[etype]
        o_pos, o_type = pos[other], etype[other]
        o_ts = self._day_us(day) + (rng.uniform(lo[o_pos], _LAST_S - 600) * 1e6).astype(np.int64)
        channel = np.full(len(o_pos), _CH[Channel.SOCIAL], dtype=np.int8)
        support = o_type == _ET[EventType.SUPPORT_CONTACT]
        channel[support] = np.where(
            rng.random(int(support.sum())) < 0.6, _CH[Channel.PHONE], _CH[Channel.CHAT]
        )
        channel[o_type == _ET[EventType.PUSH_OPEN]] = _CH[Channel.PUSH]
        ev.add(active[o_pos], o_ts, o_type, channel)

        # Browsing sessions: split each customer's session events over 1 + Binomial sessions.
        in_session = ~other
        b_pos, b_type = pos[in_session], etype[in_session]
        m = np.bincount(b_pos, minlength=len(active))
        n_sessions = np.minimum(1 + rng.binomial(np.maximum(m - 1, 0), 0.15), _MAX_SESSIONS)
        b_slot = np.floor(rng.random(len(b_pos)) * n_sessions[b_pos]).astype(np.int64)

        # Purchase sessions (or a store visit): per order 1+ items, each viewed, carted and bought.
        buyers = np.flatnonzero(bought)
        self.counts["purchases"] += len(buyers)
        n_items = np.minimum(1 + rng.poisson(0.35, size=len(buyers)), 5)
        in_store = rng.random(len(buyers)) < 0.06
        line_buyer = np.repeat(np.arange(len(buyers)), n_items)
        line_pos = buyers[line_buyer]
        line_cust = active[line_pos]
        rebuy = self.rebuy[line_cust]
        line_item = self._choose_items(line_cust, 0.55 * (1 - rebuy), rebuy)
        qty = (1 + np.minimum(rng.poisson(0.25, size=len(line_pos)), 9)).astype(np.float64)
        value = np.round(cat.price[line_item] * qty, 2)
        online = ~in_store[line_buyer]

        store_from = np.maximum(lo[line_pos], 9 * 3600)
        store_to = np.maximum(20 * 3600, store_from + 600)
        store_ts = self._day_us(day) + (rng.uniform(store_from, store_to) * 1e6).astype(np.int64)
        # One store visit per buyer: every line of the order at the same minute.
        store_ts = store_ts[np.searchsorted(line_buyer, line_buyer)]
        st = ~online
        ev.add(
            active[line_pos[st]],
            store_ts[st],
            _ET[EventType.PURCHASE],
            _CH[Channel.STORE],
            item=line_item[st],
            quantity=qty[st],
            value=value[st],
        )

        # All session rows of the day: browsing rows, then per online order line a view, a cart and a
        # purchase, and one checkout per online order.
        o_lines = np.flatnonzero(online)
        o_buyers = np.unique(line_buyer[o_lines])
        view, cart, purchase = (
            _ET[EventType.PRODUCT_VIEW],
            _ET[EventType.ADD_TO_CART],
            _ET[EventType.PURCHASE],
        )
        n_b, n_l, n_o = len(b_pos), len(o_lines), len(o_buyers)
        r_pos = np.concatenate([b_pos, np.tile(line_pos[o_lines], 3), buyers[o_buyers]])
        r_type = np.concatenate(
            [
                b_type,
                np.repeat(np.array([view, cart, purchase], dtype=np.int8), n_l),
                np.full(n_o, _ET[EventType.CHECKOUT_START], dtype=np.int8),
            ]
        )
        r_slot = np.concatenate([b_slot, np.full(3 * n_l + n_o, _PURCHASE_SLOT)])
        r_item = np.concatenate(
            [
                np.full(n_b, -1, dtype=np.int32),
                np.tile(line_item[o_lines], 3),
                np.full(n_o, -1, dtype=np.int32),
            ]
        )
        r_qty = np.concatenate([np.full(n_b + 2 * n_l, np.nan), qty[o_lines], np.full(n_o, np.nan)])
        r_value = np.concatenate([np.full(n_b + 2 * n_l, np.nan), value[o_lines], np.full(n_o, np.nan)])
        if len(r_pos) == 0:
            return
        order = np.lexsort((rng.random(len(r_pos)), _FUNNEL_RANK[r_type], r_slot, r_pos))
        r_pos, r_type, r_slot = r_pos[order], r_type[order], r_slot[order]
        r_item, r_qty, r_value = r_item[order], r_qty[order], r_value[order]

        # Items of browsing rows, chosen now so that history is used in time order.
        cust = active[r_pos]
        need = (r_item < 0) & np.isin(r_type, _ITEM_BROWSE_CODES)
        if need.any():
            t = r_type[need]
            c = cust[need]
            p_viewed = np.select(
                [t == view, t == cart, t == _ET[EventType.REMOVE_FROM_CART], t == _ET[EventType.REVIEW]],
                [self.repeat_view[c], np.full(len(c), 0.6), np.full(len(c), 0.9), np.full(len(c), 0.05)],
            )
            p_bought = np.select([t == view, t == cart, t == _ET[EventType.REVIEW]], [0.05, 0.05, 0.9], 0.0)
            r_item[need] = self._choose_items(c, p_viewed, p_bought)

        # Times: a session starts at a random time of the day; its events follow with short gaps.
        key = r_pos * 16 + r_slot
        rank, _ = _group_rank(key)
        gaps = np.where(rank == 0, 0.0, 1.0 + rng.exponential(45.0, size=len(key)))
        elapsed = np.cumsum(gaps)
        first_of_session = np.flatnonzero(rank == 0)
        elapsed -= np.repeat(elapsed[first_of_session], np.diff(np.append(first_of_session, len(key))))
        session_u = rng.random(len(first_of_session))
        s_pos = r_pos[first_of_session]
        start_s = lo[s_pos] + session_u * (_SESSION_TO_S - lo[s_pos])
        start_s = np.repeat(start_s, np.diff(np.append(first_of_session, len(key))))
        secs = np.minimum(start_s + np.minimum(elapsed, 3000.0), _LAST_S)
        ts = self._day_us(day) + (secs * 1e6).astype(np.int64)
        # A session is on the app or on the web; app users mostly use the app.
        app_u = rng.random(len(first_of_session))
        s_app = np.where(self.app_user[active[s_pos]], app_u < 0.75, app_u < 0.07)
        s_channel = np.where(s_app, _CH[Channel.APP], _CH[Channel.WEB]).astype(np.int8)
        channel = np.repeat(s_channel, np.diff(np.append(first_of_session, len(key))))
        ev.add(
            cust,
            ts,
            r_type,
            channel,
            item=r_item,
            quantity=r_qty,
            value=r_value,
            session=day * 10 + r_slot,
        )

        # What is now observable, and the item histories.
        self.last_activity[active[np.unique(pos)]] = day
        self.last_activity[active[buyers]] = day
        self.last_view[cust[r_type == view]] = day
        self.last_cart[cust[r_type == cart]] = day
        self.last_purchase[active[buyers]] = day
        self.seen_purchases[active[buyers]] += 1
        seen = (r_type == view) | (r_type == cart)
        self._remember(self.viewed, self.viewed_count, self.viewed_next, cust[seen], r_item[seen])
        lines = np.argsort(line_cust, kind="stable")
        self._remember(self.bought, self.bought_count, self.bought_next, line_cust[lines], line_item[lines])

    # -- output ----------------------------------------------------------------------------------------

    def _customer_ids(self) -> pa.Array:
        return _fixed_strings(
            ["C", (np.arange(self.first + 1, self.first + self.n + 1), self.cust_width)], self.n
        )

    def _result(self) -> _ChunkResult:
        cust_ids = self._customer_ids()
        events = self._event_table(cust_ids)
        decisions, truth = self._decision_tables()
        stages = self._stage_table(cust_ids)
        stage_days = np.bincount(self.stage_by_day[self.stage_by_day >= 0], minlength=_N_STAGES)
        return _ChunkResult(events, decisions, truth, stages, dict(self.counts), stage_days)

    def _event_table(self, cust_ids: pa.Array) -> pa.Table:
        ev = self.events
        cust = np.concatenate(ev.cust)
        ts = np.concatenate(ev.ts)
        order = np.lexsort((ts, cust))  # stable: ties keep the order in which they were made
        cust, ts = cust[order], ts[order]

        def col(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts)[order]

        etype, channel, item = col(ev.etype), col(ev.channel), col(ev.item)
        quantity, value, message = col(ev.quantity), col(ev.value), col(ev.message)
        campaign, session = col(ev.campaign), col(ev.session)
        seq, _ = _group_rank(cust)
        number = cust.astype(np.int64) + self.first + 1
        w = self.cust_width
        has_item = item >= 0
        category = np.where(has_item, self.cat.category[np.maximum(item, 0)], -1)
        arrays = {
            "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust, type=pa.int32()), cust_ids),
            "ts": _timestamps(ts),
            "event_type": _dictionary(etype, pa.array(schema.EVENT_TYPES), pa.int8()),
            "channel": _dictionary(channel, pa.array(schema.CHANNELS), pa.int8()),
            "item_id": _dictionary(item, _item_ids(len(self.cat.price)), pa.int32()),
            "category": _dictionary(category, pa.array(self.cat.names), pa.int16()),
            "value": _floats(value),
            "quantity": _floats(quantity),
            "message_type": _dictionary(message, pa.array(ACTIONS), pa.int8()),
            "campaign_id": _fixed_strings(
                ["D", (number, w), "-", (campaign, self.dec_width)], len(cust), campaign >= 0
            ),
            "session_id": _fixed_strings(
                ["C", (number, w), "-S", (session // 10, self.day_width), (session % 10, 1)],
                len(cust),
                session >= 0,
            ),
            "event_id": _fixed_strings(["C", (number, w), "-E", (seq, 6)], len(cust)),
        }
        if len(seq) and seq.max() >= 10**6:
            raise ValueError("a customer has a million events; event ids would not be unique")
        fields = [pa.field(f.name, arrays[f.name].type, nullable=f.nullable) for f in schema.EVENT_SCHEMA]
        return pa.Table.from_arrays([arrays[f.name] for f in fields], schema=pa.schema(fields))

    def _decision_tables(self) -> tuple[pa.Table, pa.Table]:
        d = self.decisions
        n = self.rows
        if n == 0:
            empty = np.zeros(0, dtype=np.int64)
            cust = day = seq = stage = action = sends = unsub = intended = empty
            control = np.zeros(0, dtype=bool)
            propensity = np.zeros(0)
            p = np.zeros((0, _N_ACTIONS))
        else:
            cust, day, seq = np.concatenate(d.cust), np.concatenate(d.day), np.concatenate(d.seq)
            stage, action = np.concatenate(d.stage), np.concatenate(d.action)
            propensity, p = np.concatenate(d.propensity), np.concatenate(d.p_convert)
            sends, unsub = np.concatenate(d.sends_28d), np.concatenate(d.unsubscribed)
            control, intended = np.concatenate(d.control), np.concatenate(d.intended)
        # Rows were made day by day; sort by customer then time like the events.
        order = np.lexsort((day, cust))
        converted = self.converted[:n][order]
        cust, day, seq, stage, action = cust[order], day[order], seq[order], stage[order], action[order]
        propensity, p, sends, unsub = propensity[order], p[order], sends[order], unsub[order]
        control, intended = control[order], intended[order]
        number = cust.astype(np.int64) + self.first + 1
        ids = _fixed_strings(["D", (number, self.cust_width), "-", (seq, self.dec_width)], n)
        customer = _fixed_strings(["C", (number, self.cust_width)], n)
        ts = _timestamps(
            self._day_us(0)
            + day.astype(np.int64) * _DAY_S * 1_000_000
            + self.cfg.decision_hour * 3600 * 1_000_000
        )
        action_str = _dictionary(action, pa.array(ACTIONS), pa.int8()).cast(pa.string())
        decisions = pa.table(
            {
                "decision_id": ids,
                "customer_id": customer,
                "ts": ts,
                "action": action_str,
                "propensity": pa.array(propensity, type=pa.float64()),
                "policy": pa.array(np.full(n, self.cfg.policy, dtype=object), type=pa.string()),
                "control": pa.array(control, type=pa.bool_()),
                "intended_action": _dictionary(intended, pa.array(ACTIONS), pa.int8()).cast(pa.string()),
            }
        )
        truth = {
            "decision_id": ids,
            "customer_id": customer,
            "ts": ts,
            "stage": _dictionary(stage, pa.array(LATENT_STAGES), pa.int8()).cast(pa.string()),
            "action": action_str,
            "propensity": pa.array(propensity, type=pa.float64()),
            "converted": pa.array(converted, type=pa.int8()),
            "unsubscribed": pa.array(unsub.astype(np.int8), type=pa.int8()),
            "sends_28d": pa.array(sends.astype(np.int8), type=pa.int8()),
        }
        for a, name in enumerate(ACTIONS):
            truth[f"p_convert__{name}"] = pa.array(p[:, a], type=pa.float64())
        return decisions, pa.table(truth)

    def _stage_table(self, cust_ids: pa.Array) -> pa.Table:
        by_customer = self.stage_by_day.T  # [n, days]: row-major order is customer, then day
        mask = by_customer >= 0
        cust = np.repeat(np.arange(self.n, dtype=np.int32), mask.sum(axis=1))
        day = np.broadcast_to(np.arange(self.cfg.days, dtype=np.int32), by_customer.shape)[mask]
        epoch_day = (self.cfg.start_date - dt.date(1970, 1, 1)).days
        return pa.table(
            {
                "customer_id": pa.DictionaryArray.from_arrays(pa.array(cust, type=pa.int32()), cust_ids),
                "day": pa.array(day + epoch_day, type=pa.int32()).cast(pa.date32()),
                "stage": _dictionary(by_customer[mask], pa.array(LATENT_STAGES), pa.int8()),
            }
        )


def _item_ids(n: int) -> pa.Array:
    return _fixed_strings(["I", (np.arange(1, n + 1), max(6, len(str(n))))], n)


# ----------------------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------------------


def simulate(config: SimConfig, out: Path, *, progress: bool = True) -> SimSummary:
    """Simulates the shop and writes events, catalogue, decisions and the truth under `out`.

    Layout: `events/part-NNNNN.parquet` (one per chunk of `chunk_size` customers; each customer in one
    part; sorted by customer_id then ts), `catalog.parquet`, `decisions.parquet`, `truth/stages.parquet`,
    `truth/decisions.parquet`, `simulation.json`. Existing files of these names are replaced.

    Args:
        config: what to simulate.
        out: output folder (created).
        progress: show a progress bar on stderr.

    Returns:
        What was made, with the realism figures (also written to `simulation.json`).
    """
    t0 = time.perf_counter()
    out = Path(out)
    events_dir = out / "events"
    truth_dir = out / "truth"
    events_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()

    root = np.random.SeedSequence(config.seed)
    catalog_seed, chunks_seed = root.spawn(2)
    catalog = _make_catalog(config, np.random.default_rng(catalog_seed))
    tables = _Tables.build(config.outcome_days)
    pq.write_table(
        pa.table(
            {
                "item_id": _item_ids(config.n_items),
                "category": pa.array([catalog.names[c] for c in catalog.category], type=pa.string()),
                "price": pa.array(catalog.price, type=pa.float64()),
                "popularity": pa.array(catalog.popularity, type=pa.float64()),
            }
        ),
        out / "catalog.parquet",
    )

    n_chunks = -(-config.n_customers // config.chunk_size)
    chunk_seeds = chunks_seed.spawn(n_chunks)
    totals: dict[str, int] = dict.fromkeys(
        (
            "events",
            "decisions",
            "conversions",
            "no_send",
            "no_send_converted",
            "sends",
            "opens",
            "clicks",
            "unsubscribes",
            "purchases",
        ),
        0,
    )
    stage_days = np.zeros(_N_STAGES, dtype=np.int64)
    writers: dict[str, pq.ParquetWriter] = {}

    bar = Progress(
        TextColumn("[bold]simulate[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    )
    try:
        with bar:
            task = bar.add_task("days", total=n_chunks * config.days)
            for i in range(n_chunks):
                first = i * config.chunk_size
                n = min(config.chunk_size, config.n_customers - first)
                bar.update(task, description=f"chunk {i + 1}/{n_chunks} ({n:,} customers)")
                sim = _ChunkSim(config, catalog, tables, first, n, np.random.default_rng(chunk_seeds[i]))
                res = sim.run(lambda: bar.advance(task))
                bar.update(
                    task, description=f"chunk {i + 1}/{n_chunks}: writing {res.events.num_rows:,} events"
                )
                pq.write_table(res.events, events_dir / f"part-{i:05d}.parquet")
                for name, table in (
                    ("decisions.parquet", res.decisions),
                    ("truth/decisions.parquet", res.truth_decisions),
                    ("truth/stages.parquet", res.stages),
                ):
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(out / name, table.schema)
                    writers[name].write_table(table)
                totals["events"] += res.events.num_rows
                totals["decisions"] += res.decisions.num_rows
                conv = res.truth_decisions.column("converted").to_numpy()
                no_send = (
                    res.truth_decisions.column("action").to_numpy(zero_copy_only=False)
                    == Action.NO_SEND.value
                )
                totals["conversions"] += int(conv.sum())
                totals["no_send"] += int(no_send.sum())
                totals["no_send_converted"] += int(conv[no_send].sum())
                for key, value in res.counts.items():
                    totals[key] += value
                stage_days += res.stage_days
                del sim, res
    finally:
        for w in writers.values():
            w.close()

    sends = max(totals["sends"], 1)
    summary = SimSummary(
        out=str(out),
        customers=config.n_customers,
        items=config.n_items,
        events=totals["events"],
        events_per_customer=totals["events"] / config.n_customers,
        parts=n_chunks,
        decisions=totals["decisions"],
        sends=totals["sends"],
        opens=totals["opens"],
        clicks=totals["clicks"],
        unsubscribes=totals["unsubscribes"],
        purchases=totals["purchases"],
        conversions=totals["conversions"],
        conversion_no_send=totals["no_send_converted"] / max(totals["no_send"], 1),
        open_rate=totals["opens"] / sends,
        click_rate=totals["clicks"] / sends,
        unsubscribe_rate=totals["unsubscribes"] / sends,
        stage_mix={
            s: float(c / max(stage_days.sum(), 1)) for s, c in zip(LATENT_STAGES, stage_days, strict=True)
        },
        seconds=round(time.perf_counter() - t0, 2),
        config=dataclasses.asdict(config),
    )
    (out / "simulation.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
