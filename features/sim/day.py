"""One day of a chunk of customers: dynamics, sign-ups, decisions, e-mails and the day's activity."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from features.schema import Channel, EventType
from features.sim.customers import _Chunk, _group_rank
from features.sim.logging_policy import PolicyInputs, logging_policy_probabilities
from features.sim.world import (
    _CH,
    _CLICK_GIVEN_OPEN,
    _DAY_S,
    _ET,
    _EVENT_RATE,
    _FUNNEL_RANK,
    _ITEM_BROWSE_CODES,
    _K_CAP,
    _LAST_S,
    _MAX_SESSIONS,
    _MIX_CODES,
    _MIX_CUM,
    _NEVER,
    _NO_SEND,
    _OPEN_RATE,
    _OUT_TO,
    _PP,
    _PURCHASE_SLOT,
    _SESSION_FROM_S,
    _SESSION_TO_S,
    _SESSION_TYPES,
    _WEEKDAY_FACTOR,
    unsubscribe_probability,
)
from features.sim.writer import _chunk_result, _ChunkResult


class _ChunkSim(_Chunk):
    """Simulates customers [first, first + n) of the shop day by day, all of them at once."""

    def run(self, on_day: Callable[[], None] | None = None) -> _ChunkResult:
        for day in range(self.cfg.days):
            self._step(day)
            if on_day is not None:
                on_day()
        return _chunk_result(self)

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
