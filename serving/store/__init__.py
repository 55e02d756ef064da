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

Where things are: `records` (what is stored and returned, and its plain-record form), `base` (the `Store`
interface and the rules on the send log), `sqlite` and `redis` (the backends; the Redis scripts in `lua/`).
`open_store` below picks a backend from a URL.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from serving.store.base import SEND_LOG_DAYS, Store, send_log_problems
from serving.store.records import (
    COMMITTED,
    EXPORT_COLUMNS,
    OUTCOME_KINDS,
    AppendResult,
    CommitResult,
    Decision,
    Outcome,
    OutcomeKind,
    SendState,
    content_event_id,
    from_us,
    to_us,
)
from serving.store.redis import RedisStore
from serving.store.sqlite import SQLiteStore

__all__ = [
    "COMMITTED",
    "EXPORT_COLUMNS",
    "OUTCOME_KINDS",
    "SEND_LOG_DAYS",
    "AppendResult",
    "CommitResult",
    "Decision",
    "Outcome",
    "OutcomeKind",
    "RedisStore",
    "SQLiteStore",
    "SendState",
    "Store",
    "content_event_id",
    "from_us",
    "open_store",
    "send_log_problems",
    "to_us",
]


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
