"""A chunk of simulated customers: their traits and state, item histories, and their records in the making."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from features.sim.catalog import _Catalog
from features.sim.config import SimConfig
from features.sim.logging_policy import control_group
from features.sim.world import (
    _ACTIVITY_GRID,
    _AW,
    _BUY_HISTORY,
    _DAY_S,
    _INITIAL_MIX,
    _INITIAL_PURCHASES,
    _INITIAL_PURCHASES_MIN,
    _N_STAGES,
    _NEVER,
    _NO_SEND,
    _SESSION_FROM_S,
    _VIEW_HISTORY,
    _Tables,
)


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


class _Chunk:
    """Customers [first, first + n) of the shop, and the events and decisions they have made so far.

    Their traits, latent state, item histories and what the logging policy can observe: the state that
    `features.sim.day._ChunkSim` moves on day by day and `features.sim.writer` turns into tables.
    """

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

    # -- time ------------------------------------------------------------------------------------------

    def _day_us(self, day: int) -> int:
        return self.start_us + day * _DAY_S * 1_000_000
