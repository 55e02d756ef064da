"""The simulated world's truth: stages, actions, their true effects, and the exact forward pass.

These numbers are the simulator's ground truth, not settings: tests and the realism ranges in the docstring
of `features.sim` are stated against them. The daily step (`features.sim.day`) and the ground truth
written beside the events (`true_conversion_probabilities`, `_Tables`) read the same functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features import schema
from features.schema import Action, EventType

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
