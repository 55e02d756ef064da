"""The store in Redis, shared by replicas. Every read-then-write runs as one Lua script (`lua/`), which
Redis runs atomically.

Keys, under the namespace (default "journey:"):

    c:{customer}:events     sorted set, score ts_us, member "{seq:012d}:{event json}" (seq keeps arrival
                            order among events of one instant, as the member breaks ties of equal scores)
    c:{customer}:ids        sorted set of the stored events' ids, score seq (trimmed with them: the seq
                            prefix of a trimmed member finds its id without parsing its JSON)
    c:{customer}:seq        the arrival counter
    c:{customer}:consent    hash v (1 or 0), ts (ts_us of the consent event)
    c:{customer}:sends      sorted set, score ts_us, member "{action}|{event_id}"
    c:{customer}:decisions  sorted set, score ts_us, member decision_id
    d:{decision_id}         hash json (the decision), o:{kind} (outcome json)
    decisions               sorted set of every decision_id, score ts_us (for the export)

Lua numbers are doubles: epoch microseconds (~1.7e15 < 2^53) are exact, but `tostring` prints only 14
digits, so bounds are computed in Python and passed as strings, and Lua formats with "%.0f".
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from importlib import resources
from typing import Any, cast

import pandas as pd
import redis

from features.columns import EventColumns
from features.policy import RuleConfig
from features.schema import EVENT_COLUMNS
from serving.store.base import SEND_LOG_DAYS, Store, _check_rules, _send_state, _wall_us, _Windows
from serving.store.records import (
    COMMITTED,
    US_PER_DAY,
    AppendResult,
    CommitResult,
    Decision,
    Outcome,
    SendState,
    _consent_value,
    _decision_from_record,
    _decision_record,
    _event_records,
    _export_frame,
    _sent_action,
    _sent_event,
    to_us,
)

_SEQ_WIDTH = 13  # len("{seq:012d}:")

_KIND = {1.0: "s", 0.0: "u"}


def _lua(*names: str) -> str:
    """The scripts `lua/{name}.lua`, joined in order (append and commit run after the helpers of events)."""
    folder = resources.files("serving.store") / "lua"
    return "".join((folder / f"{name}.lua").read_text(encoding="utf-8") for name in names)


class RedisStore(Store):
    """The store in Redis, shared by the replicas of the service.

    A batch of events is one pipeline of one script call per customer (one round trip); reads of a batch
    are one pipeline too. Erasure deletes the keys, but a Redis that persists (RDB, AOF) keeps old
    copies until its next rewrite: run it without persistence or rewrite after erasures.

    Args:
        url: `redis://host:port/db`, passed to `redis.Redis.from_url`.
        max_events: events kept per customer.
        namespace: prefix of every key, so that deployments or test runs can share one server.
    """

    DEFAULT_NAMESPACE = "journey:"

    def __init__(self, url: str, max_events: int = 50, namespace: str = DEFAULT_NAMESPACE) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.max_events = max_events
        self.namespace = namespace
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self._append_script = self.client.register_script(_lua("events", "append"))
        self._commit_script = self.client.register_script(_lua("events", "commit"))
        self._outcome_script = self.client.register_script(_lua("outcome"))
        self._erase_script = self.client.register_script(_lua("erase"))

    def _customer_keys(self, customer_id: str) -> list[str]:
        """events, ids, sends, consent, seq, decisions (the order the scripts expect)."""
        base = f"{self.namespace}c:{customer_id}:"
        return [base + s for s in ("events", "ids", "sends", "consent", "seq", "decisions")]

    def _decision_key(self, decision_id: str) -> str:
        return f"{self.namespace}d:{decision_id}"

    @property
    def _all_decisions_key(self) -> str:
        return f"{self.namespace}decisions"

    @staticmethod
    def _event_args(record: dict[str, Any]) -> list[Any]:
        consent = _consent_value(record)
        action = _sent_action(record)
        kind = _KIND[consent] if consent is not None else ("m" if action is not None else "")
        body = json.dumps(record, separators=(",", ":"))
        return [record["ts"], record["event_id"], body, kind, action or ""]

    def append_events(self, events: pd.DataFrame | EventColumns) -> AppendResult:
        records = _event_records(events)
        by_customer: dict[str, list[Any]] = defaultdict(list)
        for record in records:
            by_customer[record["customer_id"]].extend(self._event_args(record))
        pipe = self.client.pipeline(transaction=False)
        for customer, args in by_customer.items():
            keys = self._customer_keys(customer)[:5]
            self._append_script(
                keys=keys,
                args=[self.max_events, SEND_LOG_DAYS * US_PER_DAY, _wall_us(), *args],
                client=pipe,
            )
        accepted = sum(int(n) for n in pipe.execute()) if by_customer else 0
        return AppendResult(accepted=accepted, duplicates=len(records) - accepted)

    def event_columns(self, customer_ids: Sequence[str]) -> EventColumns:
        ids = sorted(set(customer_ids))
        pipe = self.client.pipeline(transaction=False)
        for customer in ids:
            pipe.zrange(self._customer_keys(customer)[0], 0, -1)
        members = pipe.execute() if ids else []
        records = [json.loads(m[_SEQ_WIDTH:]) for ms in members for m in ms]
        return EventColumns.of_lists({name: [r[name] for r in records] for name in EVENT_COLUMNS})

    def send_state(self, customer_ids: Sequence[str], now: datetime) -> dict[str, SendState]:
        now_us = to_us(now)
        ids = sorted(set(customer_ids))
        pipe = self.client.pipeline(transaction=False)
        for customer in ids:
            keys = self._customer_keys(customer)
            pipe.hmget(keys[3], ["v", "ts"])
            pipe.zrangebyscore(keys[2], "-inf", now_us, withscores=True)
        replies = pipe.execute() if ids else []
        states = {}
        for i, customer in enumerate(ids):
            (value, consent_ts), sends = replies[2 * i], replies[2 * i + 1]
            consent = None if value is None else (float(value), int(consent_ts))
            log = [(member.split("|", 1)[0], int(score)) for member, score in sends]
            states[customer] = _send_state(consent, log, now_us)
        return {c: states[c] for c in customer_ids}

    def commit_decision(self, decision: Decision, rules: RuleConfig) -> CommitResult:
        _check_rules(rules)
        record = _decision_record(decision)
        ts = record["ts"]
        keys = self._customer_keys(decision.customer_id)
        event = _sent_event(decision)
        w = _Windows.of(rules, decision.action)

        def bounds(half: int) -> list[str]:
            return [f"({ts - half}", f"({ts + half}"] if half > 0 else ["", ""]

        args = [
            self.max_events,
            SEND_LOG_DAYS * US_PER_DAY,
            _wall_us(),
            ts,
            decision.decision_id,
            json.dumps(record, separators=(",", ":")),
            "1" if decision.is_message else "0",
            event["event_id"],
            json.dumps(event, separators=(",", ":")),
            decision.action,
            "1" if rules.require_consent else "0",
            "" if decision.consent_ts is None else to_us(decision.consent_ts),
            # Quiet hours depend on the decision's time alone: read here, refused inside the script (after
            # the retry check, so a stored decision still stands).
            "1" if decision.is_message and rules.in_quiet_hours(decision.ts) else "0",
            *bounds(w.cap7),
            rules.max_emails_7d,
            *bounds(w.cap28),
            rules.max_emails_28d,
            *bounds(w.gap),
            *bounds(w.cooldown),
        ]
        keys = [*keys, self._decision_key(decision.decision_id), self._all_decisions_key]
        answer = str(self._commit_script(keys=keys, args=args))
        if answer == "ok":
            return COMMITTED
        return CommitResult(False, f"cooldown_{decision.action}" if answer == "cooldown" else answer)

    def decision(self, decision_id: str) -> Decision | None:
        raw = self.client.hget(self._decision_key(decision_id), "json")
        return None if raw is None else _decision_from_record(json.loads(str(raw)))

    def decisions_of(self, customer_id: str, limit: int = 20) -> list[Decision]:
        if limit < 1:
            return []
        ids = cast(list[str], self.client.zrevrange(self._customer_keys(customer_id)[5], 0, limit - 1))
        pipe = self.client.pipeline(transaction=False)
        for decision_id in ids:
            pipe.hget(self._decision_key(decision_id), "json")
        return [_decision_from_record(json.loads(raw)) for raw in pipe.execute() if raw is not None]

    def record_outcome(self, decision_id: str, outcome: Outcome) -> bool:
        value = json.dumps({"ts": to_us(outcome.ts), "revenue": outcome.revenue})
        return bool(
            int(
                self._outcome_script(
                    keys=[self._decision_key(decision_id)], args=[f"o:{outcome.kind}", value]
                )
            )
        )

    def export_decisions(self) -> pd.DataFrame:
        ids = cast(list[str], self.client.zrange(self._all_decisions_key, 0, -1))
        rows: list[tuple[dict[str, Any], dict[str, float | None]]] = []
        for start in range(0, len(ids), 1000):
            pipe = self.client.pipeline(transaction=False)
            for decision_id in ids[start : start + 1000]:
                pipe.hgetall(self._decision_key(decision_id))
            for fields in pipe.execute():
                if not fields:  # erased between the two reads
                    continue
                outcomes = {k[2:]: json.loads(v)["revenue"] for k, v in fields.items() if k.startswith("o:")}
                rows.append((json.loads(fields["json"]), outcomes))
        return _export_frame(rows)

    def erase(self, customer_id: str) -> int:
        keys = [*self._customer_keys(customer_id), self._all_decisions_key]
        return int(self._erase_script(keys=keys, args=[self._decision_key("")]))

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except (redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self.client.close()
