"""What the store keeps and returns, and the plain records both backends store them as.

Decisions, outcomes, the send state the rules read and the results of appends and commits, each checked
when made (a decision's action and propensity, tz-aware times, known outcome kinds); then the conversions
every backend shares: events and decisions to JSON-ready dicts (times as integer epoch microseconds,
exact, ordered, and the same in both backends) and back, and the export frame of the decision log.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast, get_args

import numpy as np
import pandas as pd

from features.columns import EventColumns
from features.columns import to_us as epoch_us
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

# What a provider or the shop reports after a decision; the feedback request's `outcome` field is typed
# with the same Literal, so the API and the store cannot disagree.
OutcomeKind = Literal["delivered", "opened", "clicked", "purchased", "unsubscribed"]
OUTCOME_KINDS: tuple[str, ...] = get_args(OutcomeKind)

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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
