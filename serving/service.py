"""The service's work, without HTTP: score and decide for a batch of customers, take events and feedback,
show and erase a customer. `serving.app` maps routes onto these methods; tests and the audience export
call them directly.

There is one decision path (`Service.decide`): events as columns -> the model (concurrent small calls
share one forward through the micro-batcher) -> the rules -> the policy's draw -> one batched commit to
the store, with one fallback when the store refuses (another request sent in between): the refused rule
rules out what it names and the policy draws again among what is left. `score` reads the result as
answers, `score_table` as the audience export's table.
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

from features.columns import EventColumns, from_records
from features.encoder import EncodedBatch
from features.policy import NO_SEND
from features.schema import ACTIONS, STAGES, Action, EventType
from predictor.interface import InferenceUnit, Predictions
from serving.batching import MicroBatcher, forward_together
from serving.decided import Decided, answer, decision_dict, table
from serving.decisions import (
    MESSAGE_CHANNEL,
    blocked_matrix,
    choose,
    new_decision_id,
    refused_cells,
    rule_rank,
    utcnow,
)
from serving.errors import Abandoned, InvalidInput, NotFound, NotReady
from serving.model import LoadedModel, ModelManager
from serving.scoring import (
    customer_slices,
    default_now,
    inline_state,
    inputs_digests,
    merge_events,
    rule_inputs,
    score_customers,
)
from serving.settings import ServeSettings
from serving.store import AppendResult, Decision, Outcome, SendState, Store, from_us

log = logging.getLogger(__name__)


NO_EVENTS = EventColumns.empty()  # shared by the requests without inline events (never modified)


@dataclass
class CustomerRequest:
    """One customer to score: inline events (checked), the time, the channels, how many items, and
    whether to record the decision (False: a preview that changes nothing in the store)."""

    customer_id: str
    events: EventColumns = field(default_factory=lambda: NO_EVENTS)
    now: datetime | None = None
    channels: set[str] | None = None
    n_items: int | None = None
    record: bool = True


def request_events(
    rows: Sequence[Mapping[str, Any]], default_customer: str | None = None, where: str = "events"
) -> EventColumns:
    """A request's events, checked against the contract where the request model cannot (items of product
    events, actions of sent messages, duplicate ids, the plausible time range), as columns.

    Raises:
        InvalidInput: naming every bad event by its index, field and reason.
    """
    if default_customer is not None:
        foreign = [i for i, r in enumerate(rows) if r.get("customer_id") not in (None, default_customer)]
        if foreign:
            raise InvalidInput(
                [
                    {
                        "loc": [where, i, "customer_id"],
                        "msg": f"inline events must belong to customer {default_customer!r}",
                        "type": "customer_mismatch",
                    }
                    for i in foreign
                ]
            )
        rows = [{**r, "customer_id": default_customer} for r in rows]
    columns, problems = from_records(rows, where)
    if problems:
        raise InvalidInput(problems)
    return columns


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
        # Calls between the start of `decide` and their forward: the batcher waits for company only while
        # some are on their way.
        self._coming = 0
        self._coming_lock = threading.Lock()
        self._batcher: MicroBatcher[tuple[InferenceUnit, EncodedBatch, int], Predictions] = MicroBatcher(
            forward_together,
            max_wait_s=self.settings.batch_wait_ms / 1000,
            max_items=self.settings.batch_max_customers,
            name="journey-forward",
            coming=lambda: self._coming,
        )

    def close(self) -> None:
        self._batcher.close()

    def model(self) -> LoadedModel:
        model = self.manager.current
        if model is None:
            raise NotReady(self.manager.status.error or "no model loaded yet")
        return model

    def _forward(self, predictor: InferenceUnit, batch: EncodedBatch, k: int) -> Predictions:
        """Small batches share a forward with concurrent calls; large ones are a forward of their own."""
        if len(batch) > self.settings.batch_max_customers:
            return predictor.score(batch, k)
        return self._batcher.submit((predictor, batch, k))

    def _count_coming(self, step: int) -> None:
        with self._coming_lock:
            self._coming += step

    # -- the decision path -----------------------------------------------------------------------------
    def decide(
        self,
        requests: Sequence[CustomerRequest],
        *,
        record: bool = True,
        extra_events: EventColumns | None = None,
        default_items: int | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> Decided:
        """Scores, applies the rules, draws and (where asked) records a decision for each customer.

        Args:
            requests: the customers (each at most once), with their inline events, times and channels.
            record: store the decisions (False: a preview; a request's own `record` False previews it).
            extra_events: events of many customers at once, merged like inline events (the audience
                export reads a chunk of an events file this way); only those before each customer's
                time count for consent and sends.
            default_items: recommendations for a request that does not say (default: the setting).
            cancelled: asked once the decisions are drawn, before anything is recorded: True (the client
                went away) records nothing and raises `Abandoned`.
        """
        self._count_coming(+1)
        reached = False

        def forward(predictor: InferenceUnit, batch: EncodedBatch, k: int) -> Predictions:
            nonlocal reached
            reached = True
            self._count_coming(-1)
            if self._coming == 0 and self._batcher.queued == 0:
                # Alone: no company to wait for, and handing the forward to the batcher's thread would
                # only add the hand-over (about a millisecond here) to the answer.
                return predictor.score(batch, k)
            return self._forward(predictor, batch, k)

        try:
            return self._decide(requests, record, extra_events, default_items, cancelled, forward)
        finally:
            if not reached:
                self._count_coming(-1)

    def _decide(
        self,
        requests: Sequence[CustomerRequest],
        record: bool,
        extra_events: EventColumns | None,
        default_items: int | None,
        cancelled: Callable[[], bool] | None,
        forward: Callable[[InferenceUnit, EncodedBatch, int], Predictions],
    ) -> Decided:
        model = self.model()
        ids = [r.customer_id for r in requests]
        _refuse_duplicates(ids)
        own = EventColumns.concat([r.events for r in requests if len(r.events)])  # the requests' events
        events = merge_events(self.store.event_columns(ids), [own, *([extra_events] if extra_events else [])])
        slices = customer_slices(events, ids)
        defaults = default_now(events, *slices, utcnow())
        now = [_utc(r.now) if r.now is not None else d for r, d in zip(requests, defaults, strict=True)]
        default_k = default_items or self.settings.default_items
        k = np.array([r.n_items or default_k for r in requests], dtype=np.int64)
        scored = score_customers(model.predictor, events, ids, now, int(k.max()), forward, slices)

        states = self._send_states(ids, now)
        inline = inline_state(own, extra_events, dict(zip(ids, now, strict=True)))
        rules_in = rule_inputs(scored, states, inline)
        channels = [r.channels for r in requests]
        allowed, blocked_by = blocked_matrix(
            rules_in.aggregates, rules_in.days_since_action, now, self.settings, channels
        )
        outcome = scored.pred.action_outcome
        assert outcome is not None
        uplift = outcome - outcome[:, [NO_SEND]]
        with self._rng_lock:
            choice = choose(uplift, allowed, ids, self.settings, self._rng)
        d = Decided(
            model, scored, uplift, allowed, blocked_by, choice.action.copy(), choice.drawn.copy(),
            choice.propensity.astype(np.float64), choice.control.astype(bool), choice.explored.copy(), k,
            [None] * len(ids), rules_in.consent_ts,
        )  # fmt: skip
        rows = [i for i, r in enumerate(requests) if record and r.record]
        if rows:
            if cancelled is not None and cancelled():
                raise Abandoned("the client closed the connection before the decision was recorded")
            self._commit(d, rows)
        return d

    def _commit(self, d: Decided, rows: list[int]) -> None:
        """Records the decisions of `rows` in one batched commit; a refusal of the store's rules (another
        request sent, or the customer unsubscribed, between our read and our write) rules out what it
        names and the policy draws again among what is left (no_send always stands)."""
        digests = inputs_digests(d.scored.batch)
        rules = self.settings.rules
        decisions = [self._decision(d, i, digests[i]) for i in rows]
        for i, decision, result in zip(
            rows, decisions, self.store.commit_decisions(decisions, rules), strict=True
        ):
            while not result.ok:
                rule = result.rule or "refused"
                for j in refused_cells(rule, ACTIONS[int(d.action[i])]):
                    # Named as the rules would have named it had they seen the store's state.
                    if d.allowed[i, j] or rule_rank(rule) < rule_rank(str(d.blocked_by[i, j])):
                        d.allowed[i, j] = False
                        d.blocked_by[i, j] = rule
                with self._rng_lock:
                    again = choose(
                        d.uplift[i : i + 1],
                        d.allowed[i : i + 1],
                        [d.scored.customer_ids[i]],
                        self.settings,
                        self._rng,
                    )
                d.action[i], d.intended[i] = again.action[0], again.drawn[0]
                d.propensity[i], d.explored[i] = again.propensity[0], again.explored[0]
                decision = self._decision(d, i, digests[i])
                result = self.store.commit_decision(decision, rules)
            d.decision_ids[i] = decision.decision_id
        if self.decisions_counter is not None:
            for a, count in zip(*np.unique(d.action[rows], return_counts=True), strict=True):
                self.decisions_counter.labels(action=ACTIONS[int(a)]).inc(int(count))

    def _decision(self, d: Decided, i: int, digest: str) -> Decision:
        action = ACTIONS[int(d.action[i])]
        return Decision(
            decision_id=new_decision_id(),
            customer_id=d.scored.customer_ids[i],
            ts=d.scored.now[i],
            action=action,
            channel=None if action == Action.NO_SEND else MESSAGE_CHANNEL,
            propensity=float(d.propensity[i]),
            model_version=d.model.version,
            inputs_digest=digest,
            control=bool(d.control[i]),
            stage=STAGES[int(d.stage[i])],
            expected_uplift=d.gain(i),
            detail={"items": d.items(i), "intended": ACTIONS[int(d.intended[i])]},
            consent_ts=d.consent_ts[i],
        )

    def _send_states(self, ids: list[str], now: list[datetime]) -> dict[str, SendState]:
        """The store's rule state of each customer at their own scoring time (one call per distinct time)."""
        by_time: dict[datetime, list[str]] = {}
        for c, t in zip(ids, now, strict=True):
            by_time.setdefault(t, []).append(c)
        states: dict[str, SendState] = {}
        for t, group in by_time.items():
            states.update(self.store.send_state(group, t))
        return states

    # -- reading the decisions -------------------------------------------------------------------------
    def score(
        self,
        requests: Sequence[CustomerRequest],
        record: bool = True,
        extra_events: EventColumns | None = None,
        explain: bool = True,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """`decide`, as one answer per customer (the API's score response); `explain` adds the reasons."""
        d = self.decide(requests, record=record, extra_events=extra_events, cancelled=cancelled)
        return [answer(d, i, explain) for i in range(len(requests))]

    def score_table(
        self,
        requests: Sequence[CustomerRequest],
        extra_events: EventColumns | None = None,
        n_items: int = 5,
        record: bool = True,
    ) -> pd.DataFrame:
        """`decide` for many customers as one table (the audience export).

        Columns: customer_id, scored_at, model_version, stage, p_stage_<s>, action, channel,
        expected_uplift, propensity, decision_id, control_group, top_items, p_<propensity>.
        """
        d = self.decide(requests, record=record, extra_events=extra_events, default_items=n_items)
        return table(d)

    # -- events and feedback ---------------------------------------------------------------------------
    def add_events(self, events: EventColumns | pd.DataFrame) -> AppendResult:
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
            raise InvalidInput.at(
                ["body", "item_id"],
                "a purchased outcome needs the item bought (item_id): it becomes the customer's purchase "
                "event",
                "missing",
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
        purchase = event_type == EventType.PURCHASE
        row = {
            "customer_id": decision.customer_id,
            "ts": when,
            "event_type": event_type.value,
            "channel": "web" if purchase else "email",
            "item_id": item_id if purchase else None,
            "value": revenue if purchase else None,
            "quantity": quantity if purchase else None,
            "message_type": decision.action if not purchase and decision.action != "no_send" else None,
            "campaign_id": decision_id,
            "event_id": f"{decision_id}:{kind}",
        }
        return self.store.append_events(request_events([row], where="feedback")).accepted

    # -- customers -------------------------------------------------------------------------------------
    def customer(self, customer_id: str) -> dict[str, Any]:
        """Recent events, last decisions and the current stage (scored without recording a decision).

        Raises:
            NotFound: the store knows nothing of the customer.
        """
        events = self.store.event_columns([customer_id])
        decisions = self.store.decisions_of(customer_id, limit=20)
        if not len(events) and not decisions:
            raise NotFound(f"unknown customer {customer_id!r}")
        stage = None
        if self.manager.current is not None:
            stage = self.score([CustomerRequest(customer_id)], record=False)[0]["stage"]
        recent = events.take(slice(max(0, len(events) - 50), len(events))).records()
        for row in recent:
            row["ts"] = from_us(row["ts"]).isoformat()
        return {
            "customer_id": customer_id,
            "events": recent,
            "decisions": [decision_dict(d) for d in decisions],
            "stage": stage,
        }

    def erase(self, customer_id: str) -> int:
        return self.store.erase(customer_id)


def _refuse_duplicates(ids: list[str]) -> None:
    """A decision is about one customer at one time: a customer at most once per batch."""
    seen: set[str] = set()
    dup = []
    for i, c in enumerate(ids):
        if c in seen:
            dup.append(i)
        seen.add(c)
    if dup:
        raise InvalidInput(
            [
                {"loc": ["customers", i, "customer_id"], "msg": "customer listed twice in one batch",
                 "type": "duplicate_customer"}
                for i in dup
            ]
        )  # fmt: skip


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
