"""The store in one SQLite file: embedded, and enough for one replica.

WAL, so that readers never wait for the writer; every write that reads first runs in a `BEGIN IMMEDIATE`
transaction, which takes the write lock before reading.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from features.columns import EventColumns
from features.policy import RuleConfig
from features.schema import EVENT_COLUMNS
from serving.store.base import (
    SEND_LOG_DAYS,
    Store,
    _check_rules,
    _refusal,
    _send_state,
    _wall_us,
    _Windows,
)
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

# SQLite limits the variables of one statement (999 in old builds): batches are read in chunks.
_SQLITE_CHUNK = 900


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
