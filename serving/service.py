"""The service's work, without HTTP: score and decide for a batch of customers, take events and feedback,
show and erase a customer. `serving.app` maps routes onto these methods; tests and the audience export
may call them directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from features.policy import FATIGUE_RULES, NO_SEND
from features.schema import ACTIONS, EVENT_COLUMNS, MESSAGE_ACTIONS, STAGES, Action, EventType
from features.validate import validate_events
from serving.errors import Abandoned, InvalidInput, NotFound, NotReady
from serving.model import LoadedModel, ModelManager
from serving.scoring import (
    Choice,
    RuleInputs,
    Scored,
    blocked_matrix,
    choose,
    default_now,
    inline_state,
    inputs_digests,
    make_decision,
    merge_events,
    reasons_for,
    rule_inputs,
    score_customers,
    utcnow,
)
from serving.settings import ServeSettings
from serving.store import AppendResult, CommitResult, Decision, Outcome, SendState, Store

log = logging.getLogger(__name__)


@dataclass
class CustomerRequest:
    """One customer to score: inline events (validated), the time, the channels, how many items, and
    whether to record the decision (False: a preview that changes nothing in the store)."""

    customer_id: str
    events: pd.DataFrame
    now: datetime | None = None
    channels: set[str] | None = None
    n_items: int | None = None
    record: bool = True


_MESSAGE_CELLS = [j for j, a in enumerate(ACTIONS) if a in MESSAGE_ACTIONS]


def rule_rank(rule: str) -> int:
    """Where a rule stands in that order (cooldowns next, eligibility and channel rules last)."""
    if rule in FATIGUE_RULES:
        return FATIGUE_RULES.index(rule)
    return len(FATIGUE_RULES) + (0 if rule.startswith("cooldown_") else 1)


def refused_cells(rule: str | None, action: str) -> list[int]:
    """The actions (indices into ACTIONS) a refusal of the store rules out: a cooldown only its own
    action, every other rule every message."""
    if rule is not None and rule.startswith("cooldown_"):
        return [ACTIONS.index(action)]
    return list(_MESSAGE_CELLS)


def events_frame(
    rows: Sequence[dict[str, Any]], default_customer: str | None = None, where: str = "events"
) -> pd.DataFrame:
    """Validated events (EVENT_COLUMNS) from request rows, through the feature job's validator.

    Raises:
        InvalidInput: naming every bad event by its index, field and reason.
    """
    if not rows:
        from serving.scoring import empty_events

        return empty_events()
    frame = pd.DataFrame([dict(r) for r in rows])
    if default_customer is not None:
        if "customer_id" not in frame:
            frame["customer_id"] = default_customer
        other = frame["customer_id"].notna() & (frame["customer_id"] != default_customer)
        if other.any():
            bad = [int(i) for i in np.flatnonzero(other.to_numpy())]
            raise InvalidInput(
                [
                    {
                        "loc": [where, i, "customer_id"],
                        "msg": f"inline events must belong to customer {default_customer!r}",
                        "type": "customer_mismatch",
                    }
                    for i in bad
                ],
            )
        frame["customer_id"] = frame["customer_id"].fillna(default_customer)
    for column in EVENT_COLUMNS:
        if column not in frame:
            frame[column] = None
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    result = validate_events(frame[list(EVENT_COLUMNS)], lines=np.arange(len(frame)), source=where)
    if len(result.rejects):
        raise InvalidInput(
            [
                {
                    "loc": [where, int(r["line"]), r["field"]],
                    "msg": str(r["message"]),
                    "type": str(r["reason"]),
                }
                for r in result.rejects.to_dict(orient="records")
            ],
        )
    return result.accepted


@dataclass
class _Decided:
    """A batch up to the policy's draw (`Service._decide`)."""

    model: LoadedModel
    ids: list[str]
    events: pd.DataFrame
    scored: Scored
    uplift: np.ndarray
    allowed: np.ndarray
    blocked_by: np.ndarray
    choice: Choice
    rules_in: RuleInputs


@dataclass
class Service:
    """Scoring, decisions and the online store behind one object (thread-safe)."""

    settings: ServeSettings
    store: Store
    manager: ModelManager
    decisions_counter: Any = None  # prometheus Counter with label action, or None
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.settings.seed)

    # -- scoring ---------------------------------------------------------------------------------------
    def model(self) -> LoadedModel:
        model = self.manager.current
        if model is None:
            raise NotReady(self.manager.status.error or "no model loaded yet")
        return model

    def score(
        self,
        requests: Sequence[CustomerRequest],
        record: bool = True,
        extra_events: pd.DataFrame | None = None,
        explain: bool = True,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Scores and decides for each customer in one vectorised pass; records the decisions.

        A customer may appear once per call (a decision is about one customer at one time).

        Args:
            requests: the customers, with their inline events, times, channels and item counts.
            record: store each decision (False: a preview: no decision id, nothing in the store changes;
                a request's own `record` False previews that customer alone).
            extra_events: validated events of many customers at once, merged like inline events (the
                audience export reads a whole chunk of an events file this way).
            explain: add the reasons in words (the audience export leaves them out).
            cancelled: asked once the answers are computed, before anything is recorded: True (the
                client went away) records nothing and raises `Abandoned`.
        """
        batch = self._decide(requests, extra_events)
        model, scored, events, ids = batch.model, batch.scored, batch.events, batch.ids
        uplift, allowed, blocked_by, choice = batch.uplift, batch.allowed, batch.blocked_by, batch.choice
        recorded = [record and r.record for r in requests]
        if any(recorded) and cancelled is not None and cancelled():
            raise Abandoned("the client closed the connection before the decision was recorded")
        if any(recorded):
            scored.digests = inputs_digests(scored.batch)

        # Each customer's rows of the (customer, ts)-sorted events, found once for the whole batch.
        customers = events["customer_id"].to_numpy(dtype=object)
        firsts, lasts = (
            np.searchsorted(customers, ids, side="left"),
            np.searchsorted(customers, ids, side="right"),
        )
        results = []
        for i, req in enumerate(requests):
            own = events.iloc[firsts[i] : lasts[i]] if explain else events.iloc[:0]
            results.append(
                self._answer(
                    model,
                    scored,
                    i,
                    req,
                    own,
                    uplift[i],
                    allowed[i],
                    blocked_by[i],
                    choice,
                    recorded[i],
                    batch.rules_in.consent_ts[i],
                    explain,
                )
            )
        return results

    def _decide(self, requests: Sequence[CustomerRequest], extra_events: pd.DataFrame | None) -> _Decided:
        """Everything up to the policy's draw, for a batch: events, model answers, rules, choice."""
        model = self.model()
        ids = [r.customer_id for r in requests]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = [i for i, c in enumerate(ids) if c in seen or seen.add(c)]  # type: ignore[func-returns-value]
            raise InvalidInput(
                [
                    {
                        "loc": ["customers", i, "customer_id"],
                        "msg": "customer listed twice in one batch",
                        "type": "duplicate_customer",
                    }
                    for i in dup
                ],
            )
        inline = [r.events for r in requests if not r.events.empty]
        if extra_events is not None and not extra_events.empty:
            inline.append(extra_events)
        stored = self.store.events(ids)
        events = merge_events(stored, pd.concat(inline, ignore_index=True) if inline else stored.iloc[:0])
        events = events.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)
        clock = utcnow()
        defaults = default_now(events, ids, clock)
        now = [_utc(r.now) if r.now is not None else d for r, d in zip(requests, defaults, strict=True)]
        k_max = max((r.n_items or self.settings.default_items) for r in requests)
        scored = score_customers(model, events, np.array(ids, dtype=object), now, k_max)

        states = self._send_states(ids, now)
        own = [r.events for r in requests if not r.events.empty]
        from_requests = pd.concat(own, ignore_index=True) if own else None
        rules_in = rule_inputs(
            scored, states, inline_state(from_requests, extra_events, dict(zip(ids, now, strict=True)))
        )
        allowed, blocked_by = blocked_matrix(scored, rules_in, self.settings, [r.channels for r in requests])
        outcome = scored.pred.action_outcome
        assert outcome is not None
        uplift = outcome - outcome[:, [NO_SEND]]
        with self._rng_lock:
            choice = choose(uplift, allowed, ids, self.settings, self._rng)
        return _Decided(model, ids, events, scored, uplift, allowed, blocked_by, choice, rules_in)

    def _redraw(self, customer_id: str, uplift: np.ndarray, allowed: np.ndarray) -> Choice:
        """The policy's draw again for one customer (after the store refused its first choice)."""
        with self._rng_lock:
            return choose(uplift[None, :], allowed[None, :], [customer_id], self.settings, self._rng)

    def score_table(
        self,
        requests: Sequence[CustomerRequest],
        extra_events: pd.DataFrame | None = None,
        n_items: int = 5,
        record: bool = True,
    ) -> pd.DataFrame:
        """`score` for many customers as one table (the audience export): the same decisions, built
        column-wise and written in one store transaction, without the per-customer answer objects.

        Columns: customer_id, scored_at, model_version, stage, p_stage_<s>, action, channel,
        expected_uplift, propensity, decision_id, control_group, top_items, p_<propensity>.
        """
        d = self._decide(requests, extra_events)
        pred, n = d.scored.pred, len(d.ids)
        assert pred.stage_proba is not None
        assert pred.top_items is not None
        action = d.choice.action.copy()
        propensity = d.choice.propensity.astype(np.float64).copy()
        decision_ids: list[str | None] = [None] * n
        stage_names = np.array(STAGES)[pred.stage_proba.argmax(axis=1)]
        top = [" ".join(d.model.items[row[:n_items]]) for row in pred.top_items]
        if record:
            digests = inputs_digests(d.scored.batch)
            consent_ts = d.rules_in.consent_ts
            drawn = d.choice.drawn.copy()

            def decision(i: int, a: int, p: float) -> Decision:
                return make_decision(
                    customer_id=d.ids[i],
                    now=d.scored.now[i],
                    action=ACTIONS[a],
                    propensity=p,
                    model=d.model,
                    digest=digests[i],
                    control=bool(d.choice.control[i]),
                    stage=str(stage_names[i]),
                    uplift=0.0 if a == NO_SEND else float(d.uplift[i, a]),
                    detail={"items": top[i].split(), "intended": ACTIONS[int(drawn[i])]},
                    consent_ts=consent_ts[i],
                )

            decisions = [decision(i, int(action[i]), float(propensity[i])) for i in range(n)]
            rules = self.settings.rules
            done = self.store.commit_decisions(decisions, rules)
            for i, result in enumerate(done):
                # Refused: the store's rules (another request sent in between) rule out what they name,
                # and the policy draws again among what is left (no_send always stands).
                while not result.ok:
                    for j in refused_cells(result.rule, ACTIONS[int(action[i])]):
                        d.allowed[i, j] = False
                    again = self._redraw(d.ids[i], d.uplift[i], d.allowed[i])
                    action[i], propensity[i], drawn[i] = again.action[0], again.propensity[0], again.drawn[0]
                    decisions[i] = decision(i, int(action[i]), float(propensity[i]))
                    result = self.store.commit_decision(decisions[i], rules)
            decision_ids = [x.decision_id for x in decisions]
            if self.decisions_counter is not None:
                for a, count in zip(*np.unique(action, return_counts=True), strict=True):
                    self.decisions_counter.labels(action=ACTIONS[int(a)]).inc(int(count))
        is_message = action != NO_SEND
        frame = pd.DataFrame(
            {
                "customer_id": d.ids,
                "scored_at": pd.to_datetime(d.scored.now, utc=True),
                "model_version": d.model.version,
                "stage": stage_names,
                **{f"p_stage_{s}": pred.stage_proba[:, j] for j, s in enumerate(STAGES)},
                "action": np.array(ACTIONS, dtype=object)[action],
                "channel": pd.Series(["email" if m else None for m in is_message], dtype=object),
                "expected_uplift": np.where(is_message, d.uplift[np.arange(n), action], 0.0),
                "propensity": propensity,
                "decision_id": decision_ids,
                "control_group": d.choice.control.astype(bool),
                "top_items": top,
                **{f"p_{name}": p for name, p in pred.propensity.items()},
            }
        )
        return frame

    def _send_states(self, ids: list[str], now: list[datetime]) -> dict[str, SendState]:
        """The store's rule state of each customer at their own scoring time (one call per distinct time)."""
        by_time: dict[datetime, list[str]] = {}
        for c, t in zip(ids, now, strict=True):
            by_time.setdefault(t, []).append(c)
        states: dict[str, SendState] = {}
        for t, group in by_time.items():
            states.update(self.store.send_state(group, t))
        return states

    def _answer(
        self,
        model: LoadedModel,
        scored: Scored,
        i: int,
        req: CustomerRequest,
        events: pd.DataFrame,
        uplift: np.ndarray,
        allowed: np.ndarray,
        blocked_by: np.ndarray,
        choice: Choice,
        record: bool,
        consent_ts: datetime | None,
        explain: bool = True,
    ) -> dict[str, Any]:
        pred = scored.pred
        assert pred.stage_proba is not None
        assert pred.top_items is not None
        stage_p = pred.stage_proba[i]
        stage = STAGES[int(stage_p.argmax())]
        action = ACTIONS[int(choice.action[i])]
        # What the policy drew for this customer, before a control-group override (the campaign report
        # compares each action's recipients with the control customers it would have gone to).
        intended = ACTIONS[int(choice.drawn[i])]
        propensity = float(choice.propensity[i])
        control, explored = bool(choice.control[i]), bool(choice.explored[i])
        blocked = {ACTIONS[j]: str(blocked_by[j]) for j in range(len(ACTIONS))}
        k = req.n_items or self.settings.default_items
        top = pred.top_items[i][:k]
        scores = pred.top_scores[i][:k] if pred.top_scores is not None else np.zeros(len(top))
        recommendations = [
            {"item_id": str(model.items[j]), "score": float(s), "rank": r + 1}
            for r, (j, s) in enumerate(zip(top, scores, strict=True))
        ]
        now = scored.now[i]
        decision_id: str | None = None
        if record:
            assert scored.digests is not None
            digest = scored.digests[i]

            def commit(
                action: str, propensity: float, uplift: float, intended: str
            ) -> tuple[Decision, CommitResult]:
                return self._commit(
                    model,
                    req.customer_id,
                    now,
                    action,
                    propensity,
                    digest,
                    control,
                    stage,
                    uplift,
                    recommendations,
                    intended,
                    consent_ts,
                )

            decision, result = commit(action, propensity, float(uplift[ACTIONS.index(action)]), intended)
            while not result.ok:
                # Another request (maybe on another replica) sent, or the customer unsubscribed, between
                # our read and our write: the store's rule holds, the answer names it, and the policy
                # draws again among what is left (no_send always stands).
                rule = result.rule or "refused"
                for j in refused_cells(rule, action):
                    # Named as the rules would have named it had they seen the store's state.
                    if allowed[j] or rule_rank(rule) < rule_rank(blocked[ACTIONS[j]]):
                        allowed[j] = False
                        blocked[ACTIONS[j]] = rule
                again = self._redraw(req.customer_id, uplift, allowed)
                action, intended = ACTIONS[int(again.action[0])], ACTIONS[int(again.drawn[0])]
                propensity, explored = float(again.propensity[0]), bool(again.explored[0])
                gain = 0.0 if action == Action.NO_SEND else float(uplift[ACTIONS.index(action)])
                decision, result = commit(action, propensity, gain, intended)
            decision_id = decision.decision_id
            if self.decisions_counter is not None:
                self.decisions_counter.labels(action=action).inc()
        rows: list[dict[str, Any]] = [
            {
                "action": a,
                "score": 0.0 if a == Action.NO_SEND else float(uplift[j]),
                "eligible": bool(allowed[j]) or a == Action.NO_SEND,
                "blocked_by": blocked[a] or None,
            }
            for j, a in enumerate(ACTIONS)
        ]
        ranked = sorted(rows, key=lambda r: (not r["eligible"], -r["score"]))
        a_index = ACTIONS.index(action)
        # Only what the model saw: the customer's events before the scoring time.
        seen = events[events["ts"] < pd.Timestamp(now)] if explain else events
        return {
            "customer_id": req.customer_id,
            "scored_at": now,
            "model": {"name": model.name, "version": model.version},
            "stage": {
                "label": stage,
                "probabilities": {s: float(p) for s, p in zip(STAGES, stage_p, strict=True)},
            },
            "propensities": {name: float(p[i]) for name, p in pred.propensity.items()},
            "next_best_action": {
                "action": action,
                "channel": None if action == Action.NO_SEND else "email",
                "expected_uplift": 0.0 if action == Action.NO_SEND else float(uplift[a_index]),
                "propensity": propensity,
                "decision_id": decision_id,
                "control_group": control,
                "explored": explored,
                "ranked": ranked,
            },
            "recommendations": recommendations,
            "reasons": reasons_for(
                scored, i, seen, action, control, explored, float(uplift[a_index]), blocked
            )
            if explain
            else [],
        }

    def _commit(
        self,
        model: LoadedModel,
        customer_id: str,
        now: datetime,
        action: str,
        propensity: float,
        digest: str,
        control: bool,
        stage: str,
        uplift: float,
        recommendations: list[dict[str, Any]],
        intended: str,
        consent_ts: datetime | None,
    ) -> tuple[Decision, CommitResult]:
        decision = make_decision(
            customer_id=customer_id,
            now=now,
            action=action,
            propensity=propensity,
            model=model,
            digest=digest,
            control=control,
            stage=stage,
            uplift=uplift,
            detail={"items": [r["item_id"] for r in recommendations], "intended": intended},
            consent_ts=consent_ts,
        )
        return decision, self.store.commit_decision(decision, self.settings.rules)

    # -- events and feedback ---------------------------------------------------------------------------
    def add_events(self, events: pd.DataFrame) -> AppendResult:
        return self.store.append_events(events)

    def feedback(
        self,
        decision_id: str,
        kind: str,
        ts: datetime | None,
        revenue: float | None,
        item_id: str | None,
        quantity: float | None,
    ) -> int:
        """Records an outcome; opens, clicks, purchases and unsubscribes also become the customer's events.

        Returns the number of events added.

        Raises:
            NotFound: an unknown decision. InvalidInput: a purchase without its item.
        """
        decision = self.store.decision(decision_id)
        if decision is None:
            raise NotFound(f"unknown decision_id {decision_id!r}")
        if kind == "purchased" and item_id is None:
            raise InvalidInput(
                [
                    {
                        "loc": ["body", "item_id"],
                        "msg": "a purchased outcome needs the item bought "
                        "(item_id): it becomes the customer's purchase event",
                        "type": "missing",
                    }
                ],
            )
        when = _utc(ts) if ts is not None else utcnow()
        self.store.record_outcome(decision_id, Outcome(kind=kind, ts=when, revenue=revenue))
        event_type = {
            "opened": EventType.EMAIL_OPEN,
            "clicked": EventType.EMAIL_CLICK,
            "purchased": EventType.PURCHASE,
            "unsubscribed": EventType.EMAIL_UNSUBSCRIBE,
        }.get(kind)
        if event_type is None:  # delivered: the send is already an event (appended with the decision)
            return 0
        row = {
            "customer_id": decision.customer_id,
            "ts": when,
            "event_type": event_type.value,
            "channel": "email" if event_type != EventType.PURCHASE else "web",
            "item_id": item_id if event_type == EventType.PURCHASE else None,
            "value": revenue if event_type == EventType.PURCHASE else None,
            "quantity": quantity if event_type == EventType.PURCHASE else None,
            "message_type": decision.action
            if event_type != EventType.PURCHASE and decision.action != "no_send"
            else None,
            "campaign_id": decision_id,
            "event_id": f"{decision_id}:{kind}",
        }
        frame = events_frame([row], where="feedback")
        return self.store.append_events(frame).accepted

    # -- customers -------------------------------------------------------------------------------------
    def customer(self, customer_id: str) -> dict[str, Any]:
        """Recent events, last decisions and the current stage (scored without recording a decision).

        Raises:
            NotFound: the store knows nothing of the customer.
        """
        events = self.store.events([customer_id])
        decisions = self.store.decisions_of(customer_id, limit=20)
        if events.empty and not decisions:
            raise NotFound(f"unknown customer {customer_id!r}")
        stage = None
        if self.manager.current is not None:
            answer = self.score([CustomerRequest(customer_id, events.iloc[:0])], record=False)[0]
            stage = answer["stage"]
        return {
            "customer_id": customer_id,
            "events": [_jsonable(r) for r in events.tail(50).to_dict(orient="records")],
            "decisions": [_decision_dict(d) for d in decisions],
            "stage": stage,
        }

    def erase(self, customer_id: str) -> int:
        return self.store.erase(customer_id)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _jsonable(row: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in row.items():
        k = str(key)
        if isinstance(v, pd.Timestamp):
            out[k] = v.isoformat()
        elif isinstance(v, float) and not np.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def _decision_dict(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "ts": d.ts.isoformat(),
        "action": d.action,
        "channel": d.channel,
        "propensity": d.propensity,
        "model_version": d.model_version,
        "control_group": d.control,
        "stage": d.stage,
        "expected_uplift": d.expected_uplift,
    }
