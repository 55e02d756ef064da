"""The online store: per customer the last events, consent, the send log, and the decision log.

The scoring service reads a customer's recent events to encode them, the send log to apply frequency
caps and cooldowns, and writes each decision with the outcomes reported later. Two backends sit behind
one small interface (`Store`): SQLite, embedded and enough for one replica, and Redis, shared by
replicas. Both keep the same rules, and `tests/test_store.py` runs one suite against both.

Three things shape the design:

- Events are posted at least once, so appending is idempotent by `event_id` (an event without one gets
  an id hashed from its content). Only the last `max_events` events are kept, because the model reads a
  bounded history; consent and the send log are kept apart from them, so trimming never forgets that a
  customer unsubscribed or was e-mailed yesterday.
- A rule checked in one request and recorded in another lets two replicas both send. `commit_decision`
  checks every rule that depends on what was sent or said before (consent, quiet hours, the 7- and 28-day
  caps, the minimum gap between messages, the action's cooldown) and records the send in one atomic step:
  an `IMMEDIATE` transaction in SQLite, one Lua script in Redis.
- A client's time is input, not truth: the send log is pruned only relative to the older of its newest
  send and the wall clock, so that a decision stamped in the future cannot erase the history the rules
  read.
- Erasure requests must leave nothing behind, so every record carries its customer or sits under a key
  that `erase` can find from the customer.

Times are stored as integer epoch microseconds: exact, ordered, and the same in both backends.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import pandas as pd
import redis

from features.columns import EventColumns
from features.columns import to_us as epoch_us
from features.policy import RuleConfig
from features.schema import (
    ACTIONS,
    CONSENT_VALUE,
    EVENT_COLUMNS,
    MESSAGE_ACTIONS,
    NUMBER_COLUMNS,
    REQUIRED_COLUMNS,
    SENT_MESSAGE_EVENTS,
    Action,
    Channel,
    EventType,
)

OUTCOME_KINDS: tuple[str, ...] = ("delivered", "opened", "clicked", "purchased", "unsubscribed")

# The send log only has to answer the 28-day cap, the minimum gap and the longest cooldown (30 days by
# default); 90 days leaves room for longer rules without letting the log grow with the customer's lifetime.
# Rules that reach further are refused (`send_log_problems`).
SEND_LOG_DAYS = 90
CAP_WINDOW_DAYS = (7, 28)
US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
# SQLite limits the variables of one statement (999 in old builds): batches are read in chunks.
_SQLITE_CHUNK = 900

EXPORT_COLUMNS: tuple[str, ...] = (
    "decision_id",
    "customer_id",
    "ts",
    "action",
    "propensity",
    "policy",
    "channel",
    "model_version",
    "inputs_digest",
    "control",
    "stage",
    "expected_uplift",
    "intended_action",
    *OUTCOME_KINDS,
    "revenue",
)


@dataclass(frozen=True)
class AppendResult:
    """What `Store.append_events` did with a batch.

    Attributes:
        accepted: events stored (they may be trimmed again at once when older than the kept window).
        duplicates: events whose event_id was already stored for the customer, ignored.
    """

    accepted: int
    duplicates: int


@dataclass(frozen=True)
class SendState:
    """What the business rules need to know about a customer's messages at a time.

    Attributes:
        consent: 1.0 subscribed, 0.0 unsubscribed, -1.0 unknown (the coding of the encoder's
            `email_consent` aggregate).
        sends_7d: marketing messages sent in (now - 7 days, now].
        sends_28d: marketing messages sent in (now - 28 days, now].
        last_send: action -> time of its last send at or before now, for actions in the send log (which
            keeps `SEND_LOG_DAYS` days, longer than any cooldown).
        consent_ts: when the consent event that set `consent` happened (None when unknown): the newest
            consent event by time wins, whether stored or inline in a request.
    """

    consent: float
    sends_7d: int
    sends_28d: int
    last_send: dict[str, datetime]
    consent_ts: datetime | None = None

    @property
    def last_any_send(self) -> datetime | None:
        """The last marketing send at or before now, of any action (for the minimum gap)."""
        return max(self.last_send.values()) if self.last_send else None


@dataclass(frozen=True)
class CommitResult:
    """What `Store.commit_decision` did with a decision.

    True in a boolean context when the decision stands, so `if store.commit_decision(...)` reads well.

    Attributes:
        ok: the decision is stored (now or by an earlier commit of the same id): the caller may send.
        rule: when refused, the rule that refused it, named as `features.policy.eligibility` names it:
            "consent", "quiet_hours", "frequency_cap_7d", "frequency_cap_28d", "min_gap" or
            "cooldown_<action>"; None when it stands.
    """

    ok: bool
    rule: str | None = None

    def __bool__(self) -> bool:
        return self.ok


COMMITTED = CommitResult(True)


@dataclass(frozen=True)
class Decision:
    """One decision of the policy, logged whatever it chose, so that it can be evaluated offline.

    Attributes:
        decision_id: unique id, chosen by the caller (so that a retried request commits once).
        customer_id: whom it is about.
        ts: when it was taken (UTC, tz-aware); the frequency caps are counted back from it.
        action: one of `features.schema.ACTIONS`, `no_send` included.
        channel: "email" for messages, None for no_send.
        propensity: probability with which the policy chose this action, in (0, 1]; off-policy evaluation
            divides by it.
        model_version: the registered model version that scored.
        inputs_digest: digest of the model inputs, to reproduce the score.
        control: the customer is in the random control group (always no_send).
        stage: the inferred journey stage.
        expected_uplift: the model's expected gain of the action over no_send.
        detail: JSON-serialisable extras (ranked alternatives, reasons), stored and returned as is.
        consent_ts: the time of the consent evidence the decision relied on (the newest consent event it
            saw, stored or inline; None: none). Read at commit, not stored: a stored unsubscribe at or
            after it refuses a message.
    """

    decision_id: str
    customer_id: str
    ts: datetime
    action: str
    channel: str | None
    propensity: float
    model_version: str
    inputs_digest: str
    control: bool
    stage: str
    expected_uplift: float
    detail: dict[str, Any] = field(default_factory=dict)
    consent_ts: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"decision {self.decision_id}: unknown action {self.action!r}")
        if not 0.0 < self.propensity <= 1.0:
            raise ValueError(
                f"decision {self.decision_id}: propensity must be in (0, 1], got {self.propensity}"
            )
        _require_aware(self.ts, f"decision {self.decision_id}: ts")
        if self.consent_ts is not None:
            _require_aware(self.consent_ts, f"decision {self.decision_id}: consent_ts")

    @property
    def is_message(self) -> bool:
        """Whether the decision sends something (and so counts against the frequency caps)."""
        return self.action != Action.NO_SEND


@dataclass(frozen=True)
class Outcome:
    """Something that happened after a decision, reported by the e-mail provider or the shop.

    Attributes:
        kind: one of `OUTCOME_KINDS`.
        ts: when it happened (UTC, tz-aware).
        revenue: the order value, for `purchased`.
    """

    kind: str
    ts: datetime
    revenue: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in OUTCOME_KINDS:
            raise ValueError(
                f"unknown outcome kind {self.kind!r}; expected one of {', '.join(OUTCOME_KINDS)}"
            )
        _require_aware(self.ts, "outcome ts")


class Store(ABC):
    """The online store of the scoring service (see the module docstring for the rules it keeps).

    Implementations are safe to share between threads, and several objects (in several processes) may
    open the same database: every write that reads before it writes is atomic.

    Attributes:
        max_events: events kept per customer, the oldest (by ts, then arrival) dropped first.
    """

    max_events: int

    @abstractmethod
    def append_events(self, events: pd.DataFrame | EventColumns) -> AppendResult:
        """Stores validated events, ignoring those already stored, and trims each customer's history.

        Args:
            events: columns, or a frame with the columns of `features.schema.EVENT_COLUMNS` (missing
                optional ones are taken as empty; `ts` tz-aware). An event without `event_id` gets one
                hashed from its content, so that posting it again is still a duplicate.
        """

    @abstractmethod
    def event_columns(self, customer_ids: Sequence[str]) -> EventColumns:
        """The stored events of these customers, in one round trip per batch, sorted by customer_id,
        then ts, then arrival (the real-time path's form: no frame)."""

    def events(self, customer_ids: Sequence[str]) -> pd.DataFrame:
        """`event_columns` as a frame with exactly `EVENT_COLUMNS` (`ts` tz-aware UTC)."""
        return self.event_columns(customer_ids).to_frame()

    @abstractmethod
    def send_state(self, customer_ids: Sequence[str], now: datetime) -> dict[str, SendState]:
        """Consent, sends in the last 7 and 28 days, and the last send of each action, at `now`.

        Every id asked for gets an entry; an unknown customer gets consent -1.0, zero sends and no last
        sends.
        """

    @abstractmethod
    def commit_decision(self, decision: Decision, rules: RuleConfig) -> CommitResult:
        """Checks the rules that depend on the customer's past and records the decision, atomically.

        A message is refused (nothing stored; the result names the rule) when, in this order:

        - consent (`rules.require_consent`): the stored consent is an unsubscribe at or after
          `decision.consent_ts` (or any stored unsubscribe, when the decision relied on none);
        - quiet_hours: `decision.ts` falls in `rules.quiet_hours`;
        - frequency_cap_7d / frequency_cap_28d: the send log holds `rules.max_emails_7d` sends in
          (ts - 7 days, ts + 7 days), or `max_emails_28d` in (ts - 28 days, ts + 28 days);
        - min_gap: any send in (ts - min_gap_hours, ts + min_gap_hours);
        - cooldown_<action>: a send of the same action in (ts - cooldown, ts + cooldown).

        Windows reach after ts too: another replica's clock may run ahead, so a decision may be committed
        after a send stamped later than it, and no window (nor gap) may then break the rule whatever order
        decisions commit in. When no send is later than ts this is exactly the window ending at ts.
        Otherwise the decision is stored and, for a message, its send enters the send log and an
        `email_sent` event (event_id `decision:{decision_id}`) the customer's events. `no_send` is always
        stored. Committing a decision_id that is already stored changes nothing and stands, so a retry is
        safe.

        Raises:
            ValueError: rules that reach further back than the send log keeps (`send_log_problems`).
        """

    def commit_decisions(self, decisions: Sequence[Decision], rules: RuleConfig) -> list[CommitResult]:
        """`commit_decision` for each decision, in order; a backend may do it in one round trip."""
        return [self.commit_decision(d, rules) for d in decisions]

    @abstractmethod
    def decision(self, decision_id: str) -> Decision | None:
        """The stored decision, or None."""

    @abstractmethod
    def decisions_of(self, customer_id: str, limit: int = 20) -> list[Decision]:
        """The customer's last `limit` decisions, newest first (ties: decision_id descending)."""

    @abstractmethod
    def record_outcome(self, decision_id: str, outcome: Outcome) -> bool:
        """Records an outcome of a decision; the first of each kind wins (providers report twice).

        Returns:
            False when the decision is unknown; True otherwise, also when this kind was already recorded.
        """

    @abstractmethod
    def export_decisions(self) -> pd.DataFrame:
        """Every decision with its outcomes, sorted by ts then decision_id.

        Returns:
            A frame with `EXPORT_COLUMNS`: the first five are the decision log the offline feature job
            reads (`features.labels.DECISION_COLUMNS`); `policy` is `journey-scorer/{model_version}`; one
            bool column per outcome kind; `revenue` of the purchase, NaN where none.
        """

    @abstractmethod
    def erase(self, customer_id: str) -> int:
        """Removes every trace of the customer: events, consent, send log, decisions and outcomes.

        Returns:
            The number of events and decisions removed.
        """

    @abstractmethod
    def ping(self) -> bool:
        """Whether the backend answers (for the readiness probe); never raises."""

    @abstractmethod
    def close(self) -> None:
        """Releases the connections."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_store(url: str, max_events: int = 50) -> Store:
    """Opens the store a URL names.

    Args:
        url: `sqlite:///path/to/file.db` (the path after the third slash, relative unless it starts with
            another slash, as in SQLAlchemy; the folder is created) or `redis://host:port/db` (also
            `rediss://`), optionally with `?namespace=prefix:` to share one Redis between deployments or
            test runs (default "journey:").
        max_events: events kept per customer.

    Raises:
        ValueError: the URL names no supported store.
    """
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        prefix = "sqlite:///"
        path = url[len(prefix) :] if url.startswith(prefix) else ""
        if not path or path == ":memory:":
            raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///path/to/file.db (a file)")
        return SQLiteStore(Path(path), max_events=max_events)
    if scheme in ("redis", "rediss"):
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        namespace = next((v for k, v in query if k == "namespace"), RedisStore.DEFAULT_NAMESPACE)
        rest = urlencode([(k, v) for k, v in query if k != "namespace"])
        return RedisStore(urlunsplit(parts._replace(query=rest)), max_events=max_events, namespace=namespace)
    raise ValueError(
        f"unsupported store URL {url!r}: expected sqlite:///path/to/file.db or redis://host:port/db"
    )


# ---------------------------------------------------------------------------------------------------------
# What both backends share: converting events and decisions to plain records and back.


def _require_aware(ts: datetime, what: str) -> None:
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"{what} must be tz-aware (UTC), got {ts!r}")


def to_us(ts: datetime) -> int:
    """A tz-aware datetime as integer epoch microseconds (exact, unlike `timestamp() * 1e6`)."""
    _require_aware(ts, "timestamp")
    return epoch_us(ts)


def from_us(us: int) -> datetime:
    """Epoch microseconds as a UTC datetime."""
    return _EPOCH + timedelta(microseconds=int(us))


def _event_records(events: pd.DataFrame | EventColumns) -> list[dict[str, Any]]:
    """Events as JSON-ready dicts (ts in epoch microseconds, NaN as None), each with an event_id."""
    if isinstance(events, EventColumns):
        records = events.records()
        for record in records:
            if record["event_id"] is None:
                record["event_id"] = content_event_id(record)
        return records
    missing = [c for c in REQUIRED_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events: missing required column(s) {', '.join(missing)}")
    n = len(events)
    ts = pd.DatetimeIndex(events["ts"])
    if n and ts.tz is None:
        raise ValueError("events: ts must be tz-aware (UTC)")
    ts_us = (ts.tz_convert("UTC").as_unit("ns").asi8 // 1000).tolist() if n else []
    columns: dict[str, list[Any]] = {"ts": ts_us}
    for name in EVENT_COLUMNS:
        if name == "ts":
            continue
        raw = events[name].tolist() if name in events.columns else [None] * n
        if name in NUMBER_COLUMNS:
            columns[name] = [None if _missing(v) else float(cast(float, v)) for v in raw]
        else:
            columns[name] = [None if _missing(v) else str(v) for v in raw]
    rows = zip(*(columns[c] for c in EVENT_COLUMNS), strict=True)
    records = [dict(zip(EVENT_COLUMNS, row, strict=True)) for row in rows]
    for record in records:
        if record["event_id"] is None:
            record["event_id"] = content_event_id(record)
    return records


def _missing(value: Any) -> bool:
    return (
        value is None
        or value is pd.NA
        or value is pd.NaT
        or (isinstance(value, float | np.floating) and math.isnan(value))
    )


def content_event_id(record: dict[str, Any]) -> str:
    """A deterministic id of an event from its content, for events posted without one.

    Args:
        record: the event as `_event_records` makes it (ts in epoch microseconds, numbers as floats and
            missing values as None, so that NaN and None, 2 and 2.0 hash alike).
    """
    content = [record[c] for c in EVENT_COLUMNS if c != "event_id"]
    digest = hashlib.sha256(json.dumps(content, separators=(",", ":")).encode()).hexdigest()
    return f"content:{digest[:32]}"


def _consent_value(record: dict[str, Any]) -> float | None:
    """1.0 / 0.0 for the two events that set e-mail consent (`CONSENT_VALUE`), else None."""
    return CONSENT_VALUE.get(record["event_type"])


def _sent_action(record: dict[str, Any]) -> str | None:
    """The action a sent marketing message carried, or None for anything else."""
    if record["event_type"] in SENT_MESSAGE_EVENTS and record["message_type"] in MESSAGE_ACTIONS:
        return str(record["message_type"])
    return None


def _sent_event(decision: Decision) -> dict[str, Any]:
    """The `email_sent` event that a committed message adds to the customer's history."""
    record: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
    record.update(
        customer_id=decision.customer_id,
        ts=to_us(decision.ts),
        event_type=EventType.EMAIL_SENT.value,
        channel=Channel.EMAIL.value,
        message_type=decision.action,
        campaign_id=decision.decision_id,
        event_id=f"decision:{decision.decision_id}",
    )
    return record


def _send_state(consent: tuple[float, int] | None, sends: list[tuple[str, int]], now_us: int) -> SendState:
    """Counts a customer's send log (action, ts_us) at `now_us`; sends after now are not seen.

    Args:
        consent: the stored consent (value, ts_us), or None.
    """
    lo7, lo28 = now_us - 7 * US_PER_DAY, now_us - 28 * US_PER_DAY
    last: dict[str, int] = {}
    n7 = n28 = 0
    for action, ts in sends:
        if ts > now_us:
            continue
        n7 += ts > lo7
        n28 += ts > lo28
        last[action] = max(ts, last.get(action, ts))
    return SendState(
        consent=-1.0 if consent is None else float(consent[0]),
        sends_7d=n7,
        sends_28d=n28,
        last_send={a: from_us(t) for a, t in sorted(last.items())},
        consent_ts=None if consent is None else from_us(int(consent[1])),
    )


def send_log_problems(rules: RuleConfig) -> list[str]:
    """Why the send log (`SEND_LOG_DAYS` days) could not answer these rules; empty when it can.

    Every window the commit reads (the caps, the gap, each cooldown) must be shorter than the log, or a
    pruned send would let a message through.
    """
    problems = []
    longest_cap = max(CAP_WINDOW_DAYS)
    if longest_cap >= SEND_LOG_DAYS:
        problems.append(f"the send log ({SEND_LOG_DAYS} days) must outlast the {longest_cap}-day cap")
    if rules.min_gap_hours >= SEND_LOG_DAYS * 24:
        problems.append(
            f"rules.min_gap_hours={rules.min_gap_hours:g} reaches beyond the send log "
            f"({SEND_LOG_DAYS} days = {SEND_LOG_DAYS * 24} hours)"
        )
    longer = {a: float(d) for a, d in rules.cooldown_days.items() if float(d) >= SEND_LOG_DAYS}
    if longer:
        problems.append(
            f"rules.cooldown_days {longer} reach beyond the send log, which keeps {SEND_LOG_DAYS} days: "
            f"keep every cooldown under {SEND_LOG_DAYS} days"
        )
    return problems


def _check_rules(rules: RuleConfig) -> None:
    problems = send_log_problems(rules)
    if problems:
        raise ValueError("rules the online store cannot hold: " + "; ".join(problems))


def _wall_us() -> int:
    """The wall clock in epoch microseconds: the send log is never pruned relative to a later time."""
    return to_us(datetime.now(UTC))


@dataclass(frozen=True)
class _Windows:
    """Half-widths (microseconds) of the windows a message at ts is checked against; 0: no check."""

    cap7: int
    cap28: int
    gap: int
    cooldown: int

    @classmethod
    def of(cls, rules: RuleConfig, action: str) -> _Windows:
        return cls(
            cap7=CAP_WINDOW_DAYS[0] * US_PER_DAY,
            cap28=CAP_WINDOW_DAYS[1] * US_PER_DAY,
            gap=round(rules.min_gap_hours * US_PER_HOUR),
            cooldown=round(rules.cooldown_hours(action) * US_PER_HOUR),
        )

    @property
    def reach(self) -> int:
        return max(self.cap7, self.cap28, self.gap, self.cooldown)


def _refusal(
    decision: Decision,
    rules: RuleConfig,
    consent: tuple[float, int] | None,
    sends: Sequence[tuple[str, int]],
) -> str | None:
    """The rule that refuses a message, or None (see `Store.commit_decision`; the Redis script mirrors it).

    Args:
        decision: the message.
        rules: the rules.
        consent: the stored consent (value, ts_us), or None.
        sends: (action, ts_us) of the customer's sends within the widest window around the decision.
    """
    ts = to_us(decision.ts)
    unsubscribed = consent is not None and consent[0] == 0.0
    if rules.require_consent and consent is not None and unsubscribed:
        relied_on = None if decision.consent_ts is None else to_us(decision.consent_ts)
        if relied_on is None or consent[1] >= relied_on:
            return "consent"
    if rules.in_quiet_hours(decision.ts):
        return "quiet_hours"
    w = _Windows.of(rules, decision.action)
    near = [(a, abs(t - ts)) for a, t in sends]
    if sum(d < w.cap7 for _, d in near) >= rules.max_emails_7d:
        return "frequency_cap_7d"
    if sum(d < w.cap28 for _, d in near) >= rules.max_emails_28d:
        return "frequency_cap_28d"
    if any(d < w.gap for _, d in near):
        return "min_gap"
    if any(a == decision.action and d < w.cooldown for a, d in near):
        return f"cooldown_{decision.action}"
    return None


def _decision_record(decision: Decision) -> dict[str, Any]:
    return {
        "decision_id": decision.decision_id,
        "customer_id": decision.customer_id,
        "ts": to_us(decision.ts),
        "action": decision.action,
        "channel": decision.channel,
        "propensity": float(decision.propensity),
        "model_version": decision.model_version,
        "inputs_digest": decision.inputs_digest,
        "control": bool(decision.control),
        "stage": decision.stage,
        "expected_uplift": float(decision.expected_uplift),
        "detail": decision.detail,
    }


def _decision_from_record(record: dict[str, Any]) -> Decision:
    return Decision(
        decision_id=record["decision_id"],
        customer_id=record["customer_id"],
        ts=from_us(record["ts"]),
        action=record["action"],
        channel=record["channel"],
        propensity=float(record["propensity"]),
        model_version=record["model_version"],
        inputs_digest=record["inputs_digest"],
        control=bool(record["control"]),
        stage=record["stage"],
        expected_uplift=float(record["expected_uplift"]),
        detail=record["detail"],
    )


def _intended(record: dict[str, Any]) -> str:
    detail = record.get("detail") or {}
    if isinstance(detail, str):
        detail = json.loads(detail)
    return str(detail.get("intended", record["action"]))


def _export_frame(rows: list[tuple[dict[str, Any], dict[str, float | None]]]) -> pd.DataFrame:
    """Decision records with their outcomes (kind -> revenue or None) as the export frame."""
    data: dict[str, Any] = {
        "decision_id": pd.Series([r["decision_id"] for r, _ in rows], dtype=object),
        "customer_id": pd.Series([r["customer_id"] for r, _ in rows], dtype=object),
        "ts": pd.to_datetime(np.asarray([r["ts"] for r, _ in rows], dtype=np.int64), unit="us", utc=True),
        "action": pd.Series([r["action"] for r, _ in rows], dtype=object),
        "propensity": np.asarray([r["propensity"] for r, _ in rows], dtype=np.float64),
        "policy": pd.Series([f"journey-scorer/{r['model_version']}" for r, _ in rows], dtype=object),
        "channel": pd.Series([r["channel"] for r, _ in rows], dtype=object),
        "model_version": pd.Series([r["model_version"] for r, _ in rows], dtype=object),
        "inputs_digest": pd.Series([r["inputs_digest"] for r, _ in rows], dtype=object),
        "control": np.asarray([bool(r["control"]) for r, _ in rows], dtype=bool),
        "stage": pd.Series([r["stage"] for r, _ in rows], dtype=object),
        "expected_uplift": np.asarray([r["expected_uplift"] for r, _ in rows], dtype=np.float64),
        # What the policy drew before the control group overrode it (the action itself outside the group):
        # the campaign report compares each action's recipients with the control customers it would have
        # gone to.
        "intended_action": pd.Series([_intended(r) for r, _ in rows], dtype=object),
    }
    for kind in OUTCOME_KINDS:
        data[kind] = np.asarray([kind in o for _, o in rows], dtype=bool)
    revenue = [o.get("purchased") for _, o in rows]
    data["revenue"] = np.asarray([np.nan if r is None else r for r in revenue], dtype=np.float64)
    frame = pd.DataFrame(data, columns=list(EXPORT_COLUMNS))
    return frame.sort_values(["ts", "decision_id"], kind="stable").reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------
# SQLite: one file, WAL so that readers never wait for the writer, IMMEDIATE transactions for writes.

_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    customer_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    channel TEXT,
    item_id TEXT,
    category TEXT,
    value REAL,
    quantity REAL,
    message_type TEXT,
    campaign_id TEXT,
    session_id TEXT,
    event_id TEXT NOT NULL,
    UNIQUE (customer_id, event_id)
);
CREATE INDEX IF NOT EXISTS events_by_time ON events (customer_id, ts_us);
CREATE TABLE IF NOT EXISTS consent (
    customer_id TEXT PRIMARY KEY,
    value REAL NOT NULL,
    ts_us INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sends (
    customer_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    action TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    PRIMARY KEY (customer_id, event_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sends_by_time ON sends (customer_id, ts_us);
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    action TEXT NOT NULL,
    channel TEXT,
    propensity REAL NOT NULL,
    model_version TEXT NOT NULL,
    inputs_digest TEXT NOT NULL,
    control INTEGER NOT NULL,
    stage TEXT NOT NULL,
    expected_uplift REAL NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_by_customer ON decisions (customer_id, ts_us);
CREATE TABLE IF NOT EXISTS outcomes (
    decision_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    ts_us INTEGER NOT NULL,
    revenue REAL,
    PRIMARY KEY (decision_id, kind)
) WITHOUT ROWID;
"""
_EVENT_SQL_COLUMNS = ", ".join("ts_us" if c == "ts" else c for c in EVENT_COLUMNS)
_DECISION_FIELDS: tuple[str, ...] = (
    "decision_id",
    "customer_id",
    "ts",
    "action",
    "channel",
    "propensity",
    "model_version",
    "inputs_digest",
    "control",
    "stage",
    "expected_uplift",
    "detail",
)
_DECISION_SQL_COLUMNS = ", ".join("ts_us" if c == "ts" else c for c in _DECISION_FIELDS)


class SQLiteStore(Store):
    """The store in one SQLite file: the embedded default for a single replica.

    Each thread gets its own connection (SQLite connections must not be used by two threads at once).
    Writes run in `BEGIN IMMEDIATE` transactions, which take the write lock before reading, so a cap
    checked inside one cannot be overtaken by another writer, in this process or another; writers queue
    behind the lock for up to `busy_timeout_s`. `secure_delete` overwrites erased rows with zeros, and
    `erase` checkpoints the WAL, so that an erased customer is not left in the file's free space.

    Args:
        path: the database file (its folder is created).
        max_events: events kept per customer.
        busy_timeout_s: how long a writer waits for the lock before failing.
    """

    def __init__(self, path: Path | str, max_events: int = 50, busy_timeout_s: float = 30.0) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, got {max_events}")
        self.path = Path(path)
        self.max_events = max_events
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._write() as conn:
            for statement in _SQLITE_SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: the module opens no transactions of its own; `_write` opens them.
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a crash of the process; a power cut may lose the last commits.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA secure_delete=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _select_in(self, sql: str, ids: Sequence[str], *params: Any) -> list[tuple[Any, ...]]:
        """Rows of `sql` (with `{ids}` for the placeholders) for the ids, in chunks of `_SQLITE_CHUNK`."""
        conn = self._conn()
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(ids), _SQLITE_CHUNK):
            chunk = ids[start : start + _SQLITE_CHUNK]
            marks = ", ".join("?" * len(chunk))
            rows.extend(conn.execute(sql.format(ids=marks), (*chunk, *params)).fetchall())
        return rows

    def _append(self, conn: sqlite3.Connection, records: list[dict[str, Any]]) -> int:
        """Inserts records in the open transaction, then trims; returns how many were new."""
        marks = ", ".join("?" * len(EVENT_COLUMNS))
        touched: set[str] = set()
        accepted = 0
        for record in records:
            cur = conn.execute(
                f"INSERT INTO events ({_EVENT_SQL_COLUMNS}) VALUES ({marks}) "
                "ON CONFLICT (customer_id, event_id) DO NOTHING",
                [record[c] for c in EVENT_COLUMNS],
            )
            if cur.rowcount != 1:
                continue
            accepted += 1
            customer = record["customer_id"]
            touched.add(customer)
            consent = _consent_value(record)
            if consent is not None:
                # The latest consent event by ts wins; at equal ts the later arrival.
                conn.execute(
                    "INSERT INTO consent VALUES (?, ?, ?) ON CONFLICT (customer_id) DO UPDATE "
                    "SET value = excluded.value, ts_us = excluded.ts_us "
                    "WHERE excluded.ts_us >= consent.ts_us",
                    (customer, consent, record["ts"]),
                )
            action = _sent_action(record)
            if action is not None:
                conn.execute(
                    "INSERT INTO sends VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (customer, record["event_id"], action, record["ts"]),
                )
        for customer in touched:
            conn.execute(
                "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events WHERE customer_id = ? "
                "ORDER BY ts_us DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (customer, self.max_events),
            )
            # Relative to the older of the newest send and the wall clock: a send stamped in the future
            # (a client's clock, a backtest) never erases the history that decisions today read.
            conn.execute(
                "DELETE FROM sends WHERE customer_id = ? "
                "AND ts_us < MIN((SELECT MAX(ts_us) FROM sends WHERE customer_id = ?), ?) - ?",
                (customer, customer, _wall_us(), SEND_LOG_DAYS * US_PER_DAY),
            )
        return accepted

    def append_events(self, events: pd.DataFrame | EventColumns) -> AppendResult:
        records = _event_records(events)
        with self._write() as conn:
            accepted = self._append(conn, records)
        return AppendResult(accepted=accepted, duplicates=len(records) - accepted)

    def event_columns(self, customer_ids: Sequence[str]) -> EventColumns:
        ids = sorted(set(customer_ids))
        rows = self._select_in(
            f"SELECT {_EVENT_SQL_COLUMNS} FROM events WHERE customer_id IN ({{ids}}) "
            "ORDER BY customer_id, ts_us, rowid",
            ids,
        )
        columns = zip(*rows, strict=True) if rows else ([] for _ in EVENT_COLUMNS)
        return EventColumns.of_lists(dict(zip(EVENT_COLUMNS, columns, strict=True)))

    def send_state(self, customer_ids: Sequence[str], now: datetime) -> dict[str, SendState]:
        now_us = to_us(now)
        ids = sorted(set(customer_ids))
        consent = {
            customer: (value, ts)
            for customer, value, ts in self._select_in(
                "SELECT customer_id, value, ts_us FROM consent WHERE customer_id IN ({ids})", ids
            )
        }
        sends: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for customer, action, ts in self._select_in(
            "SELECT customer_id, action, ts_us FROM sends WHERE customer_id IN ({ids}) AND ts_us <= ?",
            ids,
            now_us,
        ):
            sends[customer].append((action, ts))
        return {c: _send_state(consent.get(c), sends.get(c, []), now_us) for c in customer_ids}

    def commit_decision(self, decision: Decision, rules: RuleConfig) -> CommitResult:
        _check_rules(rules)
        with self._write() as conn:
            return self._commit(conn, decision, rules)

    def commit_decisions(self, decisions: Sequence[Decision], rules: RuleConfig) -> list[CommitResult]:
        """`commit_decision` for many decisions in one transaction (the audience export's chunks)."""
        _check_rules(rules)
        with self._write() as conn:
            return [self._commit(conn, d, rules) for d in decisions]

    def _commit(self, conn: sqlite3.Connection, decision: Decision, rules: RuleConfig) -> CommitResult:
        """One commit inside the open IMMEDIATE transaction: the write lock is held from the first read,
        so no other writer (thread, process or replica on the file) can send in between."""
        record = _decision_record(decision)
        ts = record["ts"]
        customer = decision.customer_id
        if conn.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (decision.decision_id,)).fetchone():
            return COMMITTED
        if decision.is_message:
            reach = _Windows.of(rules, decision.action).reach
            sends = conn.execute(
                "SELECT action, ts_us FROM sends WHERE customer_id = ? AND ts_us > ? AND ts_us < ?",
                (customer, ts - reach, ts + reach),
            ).fetchall()
            row = conn.execute(
                "SELECT value, ts_us FROM consent WHERE customer_id = ?", (customer,)
            ).fetchone()
            rule = _refusal(decision, rules, None if row is None else (row[0], row[1]), sends)
            if rule is not None:
                return CommitResult(False, rule)
        record["detail"] = json.dumps(record["detail"])
        marks = ", ".join("?" * len(_DECISION_FIELDS))
        conn.execute(
            f"INSERT INTO decisions ({_DECISION_SQL_COLUMNS}) VALUES ({marks})",
            [record[c] for c in _DECISION_FIELDS],
        )
        if decision.is_message:
            self._append(conn, [_sent_event(decision)])
        return COMMITTED

    def _decisions(self, where: str, params: tuple[Any, ...]) -> list[Decision]:
        rows = (
            self._conn().execute(f"SELECT {_DECISION_SQL_COLUMNS} FROM decisions {where}", params).fetchall()
        )
        out = []
        for row in rows:
            record = dict(zip(_DECISION_FIELDS, row, strict=True))
            record["detail"] = json.loads(record["detail"])
            out.append(_decision_from_record(record))
        return out

    def decision(self, decision_id: str) -> Decision | None:
        found = self._decisions("WHERE decision_id = ?", (decision_id,))
        return found[0] if found else None

    def decisions_of(self, customer_id: str, limit: int = 20) -> list[Decision]:
        if limit < 1:
            return []
        return self._decisions(
            "WHERE customer_id = ? ORDER BY ts_us DESC, decision_id DESC LIMIT ?", (customer_id, limit)
        )

    def record_outcome(self, decision_id: str, outcome: Outcome) -> bool:
        with self._write() as conn:
            if not conn.execute("SELECT 1 FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone():
                return False
            conn.execute(
                "INSERT INTO outcomes VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (decision_id, outcome.kind, to_us(outcome.ts), outcome.revenue),
            )
        return True

    def export_decisions(self) -> pd.DataFrame:
        conn = self._conn()
        # One read transaction, so that outcomes match the decisions read.
        conn.execute("BEGIN")
        try:
            rows = conn.execute(f"SELECT {_DECISION_SQL_COLUMNS} FROM decisions").fetchall()
            outcomes: dict[str, dict[str, float | None]] = defaultdict(dict)
            for decision_id, kind, revenue in conn.execute("SELECT decision_id, kind, revenue FROM outcomes"):
                outcomes[decision_id][kind] = revenue
        finally:
            conn.execute("COMMIT")
        records = [dict(zip(_DECISION_FIELDS, row, strict=True)) for row in rows]
        return _export_frame([(r, outcomes.get(r["decision_id"], {})) for r in records])

    def erase(self, customer_id: str) -> int:
        with self._write() as conn:
            (n_events,) = conn.execute(
                "SELECT COUNT(*) FROM events WHERE customer_id = ?", (customer_id,)
            ).fetchone()
            conn.execute(
                "DELETE FROM outcomes WHERE decision_id IN "
                "(SELECT decision_id FROM decisions WHERE customer_id = ?)",
                (customer_id,),
            )
            n_decisions = conn.execute("DELETE FROM decisions WHERE customer_id = ?", (customer_id,)).rowcount
            for table in ("events", "sends", "consent"):
                conn.execute(f"DELETE FROM {table} WHERE customer_id = ?", (customer_id,))
        # Copies of the erased pages stay in the WAL until a checkpoint; TRUNCATE also empties the file.
        # It gives up (harmlessly) while another connection reads; the next checkpoint then copies them.
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(n_events) + int(n_decisions)

    def ping(self) -> bool:
        try:
            return self._conn().execute("SELECT 1").fetchone() == (1,)
        except sqlite3.Error:
            return False

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()


# ---------------------------------------------------------------------------------------------------------
# Redis: shared by replicas. Every read-then-write runs as one Lua script, which Redis runs atomically.
#
# Keys, under the namespace (default "journey:"):
#   c:{customer}:events     sorted set, score ts_us, member "{seq:012d}:{event json}" (seq keeps arrival
#                           order among events of one instant, as the member breaks ties of equal scores)
#   c:{customer}:ids        sorted set of the stored events' ids, score seq (trimmed with them: the seq
#                           prefix of a trimmed member finds its id without parsing its JSON)
#   c:{customer}:seq        the arrival counter
#   c:{customer}:consent    hash v (1 or 0), ts (ts_us of the consent event)
#   c:{customer}:sends      sorted set, score ts_us, member "{action}|{event_id}"
#   c:{customer}:decisions  sorted set, score ts_us, member decision_id
#   d:{decision_id}         hash json (the decision), o:{kind} (outcome json)
#   decisions               sorted set of every decision_id, score ts_us (for the export)
#
# Lua numbers are doubles: epoch microseconds (~1.7e15 < 2^53) are exact, but `tostring` prints only 14
# digits, so bounds are computed in Python and passed as strings, and Lua formats with "%.0f".

_SEQ_WIDTH = 13  # len("{seq:012d}:")

_LUA_EVENTS = """
local function append_event(ts, eid, body, kind, action)
  if redis.call('ZSCORE', KEYS[2], eid) then return 0 end
  local seq = string.format('%012d', redis.call('INCR', KEYS[5]))
  redis.call('ZADD', KEYS[2], seq, eid)
  redis.call('ZADD', KEYS[1], ts, seq .. ':' .. body)
  if kind == 's' or kind == 'u' then
    local current = redis.call('HGET', KEYS[4], 'ts')
    if (not current) or tonumber(ts) >= tonumber(current) then
      redis.call('HSET', KEYS[4], 'v', kind == 's' and '1' or '0', 'ts', ts)
    end
  elseif kind == 'm' then
    redis.call('ZADD', KEYS[3], ts, action .. '|' .. eid)
  end
  return 1
end

local function trim_and_prune(max_events, keep_us, wall_us)
  local n = redis.call('ZCARD', KEYS[1])
  if n > max_events then
    local old = redis.call('ZRANGE', KEYS[1], 0, n - max_events - 1)
    for _, member in ipairs(old) do
      local seq = string.sub(member, 1, 12)
      redis.call('ZREMRANGEBYSCORE', KEYS[2], seq, seq)
    end
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, n - max_events - 1)
  end
  -- Relative to the older of the newest send and the wall clock: a send stamped in the future never
  -- erases the history that decisions today read.
  local newest = redis.call('ZRANGE', KEYS[3], -1, -1, 'WITHSCORES')
  if newest[2] then
    local cutoff = string.format('%.0f', math.min(tonumber(newest[2]), wall_us) - keep_us)
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. cutoff)
  end
end
"""

# KEYS: events, ids, sends, consent, seq. ARGV: max_events, keep_us, wall_us, then ts, event_id, body,
# kind, action per event. Returns the number of events accepted.
_LUA_APPEND = (
    _LUA_EVENTS
    + """
local accepted = 0
for i = 4, #ARGV, 5 do
  accepted = accepted + append_event(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
end
if accepted > 0 then trim_and_prune(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) end
return accepted
"""
)

# KEYS: events, ids, sends, consent, seq, customer's decisions, decision hash, all decisions.
# ARGV: 1 max_events, 2 keep_us, 3 wall_us, 4 ts, 5 decision_id, 6 decision json, 7 is_message,
# 8 event_id, 9 event body, 10 action, 11 require_consent, 12 consent_ts ('' for none), 13 quiet,
# 14-16 lo7, hi7, max7, 17-19 lo28, hi28, max28, 20-21 gap bounds, 22-23 cooldown bounds (bounds are
# exclusive ZCOUNT bounds; '' for no gap or cooldown). The checks are those of `_refusal`, in its order.
# Returns 'ok' when the decision stands, else the refusing rule ('cooldown' for the action's cooldown).
_LUA_COMMIT = (
    _LUA_EVENTS
    + """
if redis.call('EXISTS', KEYS[7]) == 1 then return 'ok' end
if ARGV[7] == '1' then
  if ARGV[11] == '1' then
    local consent = redis.call('HMGET', KEYS[4], 'v', 'ts')
    if consent[1] == '0' and (ARGV[12] == '' or tonumber(consent[2]) >= tonumber(ARGV[12])) then
      return 'consent'
    end
  end
  if ARGV[13] == '1' then return 'quiet_hours' end
  if redis.call('ZCOUNT', KEYS[3], ARGV[14], ARGV[15]) >= tonumber(ARGV[16]) then
    return 'frequency_cap_7d'
  end
  if redis.call('ZCOUNT', KEYS[3], ARGV[17], ARGV[18]) >= tonumber(ARGV[19]) then
    return 'frequency_cap_28d'
  end
  if ARGV[20] ~= '' and redis.call('ZCOUNT', KEYS[3], ARGV[20], ARGV[21]) > 0 then return 'min_gap' end
  if ARGV[22] ~= '' then
    local prefix = ARGV[10] .. '|'
    for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[22], ARGV[23])) do
      if string.sub(member, 1, #prefix) == prefix then return 'cooldown' end
    end
  end
end
redis.call('HSET', KEYS[7], 'json', ARGV[6])
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[8], ARGV[4], ARGV[5])
if ARGV[7] == '1' then
  if append_event(ARGV[4], ARGV[8], ARGV[9], 'm', ARGV[10]) == 1 then
    trim_and_prune(tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
  end
end
return 'ok'
"""
)

# KEYS: decision hash. ARGV: field, value. The existence check keeps an outcome of an unknown (or
# erased) decision from creating a stray key.
_LUA_OUTCOME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

# KEYS: events, ids, sends, consent, seq, customer's decisions, all decisions. ARGV: decision key prefix.
# The decision hashes are found from the customer's list, so they are not declared in KEYS: fine on one
# server, not on Redis Cluster (which this store does not support).
_LUA_ERASE = """
local n_events = redis.call('ZCARD', KEYS[1])
local ids = redis.call('ZRANGE', KEYS[6], 0, -1)
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. id)
  redis.call('ZREM', KEYS[7], id)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return n_events + #ids
"""

_KIND = {1.0: "s", 0.0: "u"}


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
        self._append_script = self.client.register_script(_LUA_APPEND)
        self._commit_script = self.client.register_script(_LUA_COMMIT)
        self._outcome_script = self.client.register_script(_LUA_OUTCOME)
        self._erase_script = self.client.register_script(_LUA_ERASE)

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
