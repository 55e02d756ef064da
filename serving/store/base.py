"""The interface every backend implements (`Store`), and the rules they all enforce the same way.

The rules read the send log: how many messages in the last 7 and 28 days, the last send of each action,
and, at commit, whether a message breaks a cap, the minimum gap or a cooldown (`_refusal`, which the Redis
script mirrors). The send log is pruned only relative to the older of its newest send and the wall clock,
so that a decision stamped in the future cannot erase the history the rules read.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Self

import pandas as pd

from features.columns import EventColumns
from features.policy import RuleConfig
from serving.store.records import (
    US_PER_DAY,
    US_PER_HOUR,
    AppendResult,
    CommitResult,
    Decision,
    Outcome,
    SendState,
    from_us,
    to_us,
)

# The send log only has to answer the 28-day cap, the minimum gap and the longest cooldown (30 days by
# default); 90 days leaves room for longer rules without letting the log grow with the customer's lifetime.
# Rules that reach further are refused (`send_log_problems`).
SEND_LOG_DAYS = 90
CAP_WINDOW_DAYS = (7, 28)


class Store(ABC):
    """The online store of the scoring service (see `serving.store` for the rules it keeps).

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


# ---------------------------------------------------------------------------------------------------------
# The rules on the send log, shared by both backends.


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
