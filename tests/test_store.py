"""The online store: one suite, run against SQLite and a real Redis server.

Timestamps are hand-picked around the 7- and 28-day boundaries so that every count below can be checked by
reading the test. The Redis tests need `redis-server` (Debian package of that name; `.ci/run` installs it)
and fail, rather than skip, where it is missing, so that CI never passes without testing Redis.
"""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import redis

from features.labels import DECISION_COLUMNS
from features.policy import RuleConfig
from features.schema import EVENT_COLUMNS, MESSAGE_ACTIONS
from serving.store import (
    EXPORT_COLUMNS,
    AppendResult,
    CommitResult,
    Decision,
    Outcome,
    SendState,
    SQLiteStore,
    Store,
    open_store,
)

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
H = timedelta(hours=1)
D = timedelta(days=1)
# The default rules: 3 messages in 7 days, 10 in 28, 16 hours between any two, a cooldown per action.
RULES = RuleConfig()


def caps(max_7d: int, max_28d: int) -> RuleConfig:
    """The frequency caps alone (no gap, no cooldowns), for the tests of the caps."""
    return RuleConfig(
        max_emails_7d=max_7d,
        max_emails_28d=max_28d,
        min_gap_hours=0.0,
        cooldown_days=dict.fromkeys(MESSAGE_ACTIONS, 0.0),
    )


def ev(customer: str, ts: datetime, event_type: str = "page_view", **fields: Any) -> dict[str, Any]:
    """One event row; unspecified optional columns are empty."""
    row: dict[str, Any] = dict.fromkeys(EVENT_COLUMNS)
    row.update(customer_id=customer, ts=ts, event_type=event_type, channel="web")
    row.update(fields)
    return row


def sent(
    customer: str, ts: datetime, action: str, event_id: str | None = None, event_type: str = "email_sent"
):
    channel = "sms" if event_type == "sms_sent" else "email"
    return ev(customer, ts, event_type, channel=channel, message_type=action, event_id=event_id)


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    return out


def decision(decision_id: str, customer: str, ts: datetime, action: str = "cart_abandonment", **kw: Any):
    values: dict[str, Any] = {
        "channel": None if action == "no_send" else "email",
        "propensity": 0.9,
        "model_version": "3",
        "inputs_digest": "digest",
        "control": False,
        "stage": "decision",
        "expected_uplift": 0.05,
        "detail": {},
    }
    values.update(kw)
    return Decision(decision_id=decision_id, customer_id=customer, ts=ts, action=action, **values)


# ---------------------------------------------------------------------------------------------------------
# Fixtures: one backend per test (Redis: a namespace of the session's `redis_url`).


@dataclass
class Backend:
    """One store location (a SQLite file or a Redis namespace) that tests may open several times."""

    kind: str
    url: str
    path: Path | None = None
    namespace: str = ""
    opened: list[Store] = field(default_factory=list)

    def open(self, max_events: int = 50) -> Store:
        store = open_store(self.url, max_events=max_events)
        self.opened.append(store)
        return store

    def dump(self) -> str:
        """Everything the backend holds for this test, as text: SQLite rows, or Redis keys and values."""
        if self.kind == "sqlite":
            assert self.path is not None
            with sqlite3.connect(self.path) as conn:
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                return "\n".join(
                    f"{table}: {row}" for table in tables for row in conn.execute(f"SELECT * FROM {table}")
                )
        client = redis.Redis.from_url(self.url.split("?")[0], decode_responses=True)
        lines = []
        for key in client.scan_iter(match=f"{self.namespace}*"):
            kind = client.type(key)
            value: Any = {
                "string": client.get,
                "hash": client.hgetall,
                "set": client.smembers,
                "list": lambda k: client.lrange(k, 0, -1),
                "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            }[kind](key)
            lines.append(f"{key}: {value}")
        client.close()
        return "\n".join(lines)

    def all_key_names(self) -> list[str]:
        client = redis.Redis.from_url(self.url.split("?")[0], decode_responses=True)
        names = list(client.scan_iter(match="*"))
        client.close()
        return names


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "online" / "store.db"
        b = Backend("sqlite", f"sqlite:///{path}", path=path)
    else:
        namespace = f"test-{uuid.uuid4().hex[:12]}:"
        url = request.getfixturevalue("redis_url")
        b = Backend("redis", f"{url}?namespace={namespace}", namespace=namespace)
    yield b
    for store in b.opened:
        store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


# ---------------------------------------------------------------------------------------------------------
# Events: idempotency, trimming, batches.


def test_append_is_idempotent_by_event_id(store: Store) -> None:
    rows = [
        ev("c1", T0, event_id="e1"),
        ev("c1", T0 + H, "product_view", item_id="sku-1", event_id="e2"),
        sent("c1", T0 + 2 * H, "cart_abandonment", event_id="e3"),
    ]
    assert store.append_events(frame(rows)) == AppendResult(accepted=3, duplicates=0)
    # Again, plus one new event, one repeated within the batch, and the same id for another customer.
    again = [
        *rows,
        ev("c1", T0 + 3 * H, event_id="e4"),
        ev("c1", T0 + 3 * H, event_id="e4"),
        ev("c2", T0, event_id="e1"),
    ]
    assert store.append_events(frame(again)) == AppendResult(accepted=2, duplicates=4)
    assert store.events(["c1"])["event_id"].tolist() == ["e1", "e2", "e3", "e4"]
    assert store.events(["c2"])["event_id"].tolist() == ["e1"]
    # The repeated e-mail is one send, not two.
    assert store.send_state(["c1"], T0 + D)["c1"].sends_7d == 1


def test_append_without_event_id_dedupes_by_content(store: Store) -> None:
    rows = [ev("c1", T0, "add_to_cart", item_id="sku-1", value=9.5, quantity=2.0), ev("c1", T0 + H)]
    assert store.append_events(frame(rows)).accepted == 2
    ids = store.events(["c1"])["event_id"].tolist()
    assert all(i.startswith("content:") for i in ids)
    assert len(set(ids)) == 2
    # The same content again (quantity as an int, a missing value as NaN instead of None): duplicates.
    same = frame(
        [ev("c1", T0, "add_to_cart", item_id="sku-1", value=9.5, quantity=2), ev("c1", T0 + H, value=np.nan)]
    )
    assert store.append_events(same) == AppendResult(accepted=0, duplicates=2)
    # Different content (another quantity) is another event.
    other = frame([ev("c1", T0, "add_to_cart", item_id="sku-1", value=9.5, quantity=3.0)])
    assert store.append_events(other).accepted == 1
    now_ids = store.events(["c1"])["event_id"].tolist()
    assert len(now_ids) == 3
    assert (now_ids[0], now_ids[2]) == (ids[0], ids[1])
    assert now_ids[1] not in ids


def test_events_round_trip_values_and_types(store: Store) -> None:
    full = ev(
        "c1",
        T0 + timedelta(microseconds=123),
        "purchase",
        channel="app",
        item_id="sku-1",
        category="shoes",
        value=59.9,
        quantity=1.0,
        message_type="cart_abandonment",
        campaign_id="camp-1",
        session_id="s-1",
        event_id="e1",
    )
    bare = ev("c1", T0 + H, event_id="e2")
    store.append_events(frame([bare, full]))
    got = store.events(["c1"])
    assert list(got.columns) == list(EVENT_COLUMNS)
    assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype)
    assert str(got["ts"].dt.tz) == "UTC"
    first = got.iloc[0]
    assert first["ts"] == pd.Timestamp(T0 + timedelta(microseconds=123))
    for name in (
        "customer_id",
        "event_type",
        "channel",
        "item_id",
        "category",
        "message_type",
        "campaign_id",
    ):
        assert first[name] == full[name]
    assert (first["value"], first["quantity"]) == (59.9, 1.0)
    second = got.iloc[1]
    assert second["item_id"] is None
    assert np.isnan(second["value"])
    assert got["value"].dtype == np.float64


def test_trim_keeps_last_events_by_ts_then_arrival(backend: Backend) -> None:
    store = backend.open(max_events=3)
    store.append_events(frame([ev("c1", T0 + 2 * H, event_id="z")]))
    store.append_events(frame([ev("c1", T0 + H, event_id="b"), ev("c1", T0 + H, event_id="a")]))
    # An event older than all kept ones is accepted and trimmed away at once.
    assert store.append_events(frame([ev("c1", T0, event_id="trimmed-one")])).accepted == 1
    assert store.events(["c1"])["event_id"].tolist() == ["b", "a", "z"]
    # At equal ts the earlier arrival goes first: b (arrived before a) is dropped, not a.
    store.append_events(frame([ev("c1", T0 + H, event_id="c")]))
    assert store.events(["c1"])["event_id"].tolist() == ["a", "c", "z"]
    # The id index is trimmed with the events: nothing is left of them, and a kept one is still known.
    assert "trimmed-one" not in backend.dump()
    again = frame([ev("c1", T0 + 2 * H, event_id="z"), ev("c1", T0, event_id="trimmed-one")])
    assert store.append_events(again) == AppendResult(accepted=1, duplicates=1)
    assert store.events(["c1"])["event_id"].tolist() == ["a", "c", "z"]


def test_consent_and_send_log_survive_trimming(backend: Backend) -> None:
    store = backend.open(max_events=5)
    rows = [
        ev("c1", T0, "newsletter_signup", channel="email", event_id="sub"),
        sent("c1", T0 + H, "cart_abandonment", event_id="mail"),
        *(ev("c1", T0 + k * H, event_id=f"view{k}") for k in range(2, 8)),
    ]
    store.append_events(frame(rows))
    assert store.events(["c1"])["event_id"].tolist() == [f"view{k}" for k in range(3, 8)]
    assert store.send_state(["c1"], T0 + D)["c1"] == SendState(
        consent=1.0, sends_7d=1, sends_28d=1, last_send={"cart_abandonment": T0 + H}, consent_ts=T0
    )


def test_events_of_a_batch_of_customers(store: Store) -> None:
    customers = [f"cust-{k:04d}" for k in range(1000)]
    rows = [ev(c, T0 + (k % 7 + 1) * H, event_id="late") for k, c in enumerate(customers)]
    rows += [ev(c, T0, "search", event_id="early") for c in customers]
    rng = np.random.default_rng(0)
    shuffled = frame([rows[i] for i in rng.permutation(len(rows))])
    assert store.append_events(shuffled).accepted == 2000
    asked = [*reversed(customers), "nobody"]
    got = store.events(asked)
    assert len(got) == 2000
    assert got["customer_id"].tolist() == [c for c in customers for _ in range(2)]
    assert got["event_id"].tolist() == ["early", "late"] * 1000
    assert got.groupby("customer_id")["ts"].is_monotonic_increasing.all()
    assert store.events(["cust-0003"])["ts"].tolist() == [pd.Timestamp(T0), pd.Timestamp(T0 + 4 * H)]


def test_events_of_nobody_is_an_empty_frame_with_the_columns(store: Store) -> None:
    for asked in ([], ["nobody"]):
        got = store.events(asked)
        assert got.empty
        assert list(got.columns) == list(EVENT_COLUMNS)
        assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype)


# ---------------------------------------------------------------------------------------------------------
# Send state: consent, 7/28-day counts, last sends.


def test_send_state_counts_at_the_window_boundaries(store: Store) -> None:
    now = T0 + 30 * D  # 2024-03-31 12:00 UTC
    us = timedelta(microseconds=1)
    rows = [
        sent("c1", now - 28 * D, "welcome_series"),  # on the 28-day bound: outside both windows
        sent("c1", now - 28 * D + timedelta(seconds=1), "browse_abandonment"),  # 28 days only
        sent("c1", now - 7 * D, "cart_abandonment"),  # on the 7-day bound: 28 days only
        sent("c1", now - 7 * D + us, "cross_sell", event_type="sms_sent"),  # both (an SMS counts too)
        sent("c1", now, "cart_abandonment"),  # both: the window includes now
        sent("c1", now + timedelta(seconds=1), "winback_offer"),  # after now: not yet
        ev("c1", now - H, "email_open", channel="email", message_type="cross_sell"),  # a reaction, not a send
    ]
    store.append_events(frame(rows))
    state = store.send_state(["c1"], now)["c1"]
    assert (state.sends_7d, state.sends_28d) == (2, 4)
    assert state.last_send == {
        "welcome_series": now - 28 * D,
        "browse_abandonment": now - 28 * D + timedelta(seconds=1),
        "cart_abandonment": now,
        "cross_sell": now - 7 * D + us,
    }
    # A week earlier: (now-14d, now-7d] holds the send on the old 7-day bound; (now-35d, now-7d] three.
    earlier = store.send_state(["c1"], now - 7 * D)["c1"]
    assert (earlier.sends_7d, earlier.sends_28d) == (1, 3)
    assert earlier.last_send["cart_abandonment"] == now - 7 * D


def test_send_state_of_unknown_customers_and_every_id_asked(store: Store) -> None:
    store.append_events(frame([sent("c1", T0, "cross_sell")]))
    states = store.send_state(["nobody", "c1", "nobody"], T0 + D)
    assert set(states) == {"nobody", "c1"}
    assert states["nobody"] == SendState(consent=-1.0, sends_7d=0, sends_28d=0, last_send={})
    assert states["c1"].sends_7d == 1
    assert store.send_state([], T0) == {}


def test_consent_is_the_latest_consent_event_by_ts(store: Store) -> None:
    def consent() -> float:
        return store.send_state(["c1"], T0 + D)["c1"].consent

    store.append_events(frame([ev("c1", T0 - H, "signup")]))
    assert consent() == -1.0  # an account signup says nothing about the newsletter
    store.append_events(frame([ev("c1", T0, "newsletter_signup", channel="email")]))
    assert consent() == 1.0
    store.append_events(frame([ev("c1", T0 + 2 * H, "email_unsubscribe", channel="email")]))
    assert consent() == 0.0
    # A subscription that arrives late but happened earlier does not undo the unsubscription.
    store.append_events(frame([ev("c1", T0 + H, "newsletter_signup", channel="email")]))
    assert consent() == 0.0
    store.append_events(frame([ev("c1", T0 + 3 * H, "newsletter_signup", channel="email")]))
    assert consent() == 1.0
    # The state carries when the consent event that set it happened.
    assert store.send_state(["c1"], T0 + D)["c1"].consent_ts == T0 + 3 * H


def test_send_log_forgets_sends_90_days_older_than_the_newest(store: Store) -> None:
    store.append_events(frame([sent("c1", T0, "cross_sell"), sent("c1", T0 + 89 * D, "cross_sell")]))
    assert store.send_state(["c1"], T0 + D)["c1"].sends_7d == 1
    store.append_events(frame([sent("c1", T0 + 91 * D, "loyalty_reward")]))
    assert store.send_state(["c1"], T0 + D)["c1"].sends_7d == 0
    assert store.send_state(["c1"], T0 + 91 * D)["c1"].sends_7d == 2


# ---------------------------------------------------------------------------------------------------------
# Decisions: caps, no_send, reads.


def test_commit_refuses_the_fourth_message_in_seven_days(store: Store) -> None:
    for k in range(3):
        assert store.commit_decision(decision(f"d{k}", "c1", T0 + k * D), caps(3, 10))
    assert not store.commit_decision(decision("d3", "c1", T0 + 3 * D), caps(3, 10))
    assert store.decision("d3") is None
    assert [d.decision_id for d in store.decisions_of("c1")] == ["d2", "d1", "d0"]
    assert store.send_state(["c1"], T0 + 3 * D)["c1"].sends_7d == 3
    assert (store.events(["c1"])["event_type"] == "email_sent").sum() == 3
    assert "d3" not in store.export_decisions()["decision_id"].tolist()
    # A week after the first send, (ts-7d, ts] holds only two: the fourth goes out.
    assert store.commit_decision(decision("d4", "c1", T0 + 7 * D), caps(3, 10))


def test_commit_decisions_applies_the_cap_within_one_batch(store: Store) -> None:
    batch = [decision(f"b{k}", "c1", T0 + k * H) for k in range(5)] + [decision("n0", "c2", T0, "no_send")]
    assert [bool(r) for r in store.commit_decisions(batch, caps(3, 10))] == [True] * 3 + [False] * 2 + [True]
    assert sorted(d.decision_id for d in store.decisions_of("c1")) == ["b0", "b1", "b2"]
    assert store.decision("n0") is not None
    assert store.send_state(["c1"], T0 + 5 * H)["c1"].sends_7d == 3


def test_commit_applies_the_28_day_cap(store: Store) -> None:
    assert store.commit_decision(decision("d0", "c1", T0), caps(3, 2))
    assert store.commit_decision(decision("d1", "c1", T0 + 8 * D), caps(3, 2))
    assert not store.commit_decision(decision("d2", "c1", T0 + 16 * D), caps(3, 2))
    assert store.commit_decision(decision("d3", "c1", T0 + 28 * D), caps(3, 2))  # d0 left the window


def test_commit_counts_sends_stamped_after_the_decision(store: Store) -> None:
    # Another replica's clock ran ahead: three sends stamped after this decision are already logged, and
    # with a fourth at T0 the window (T0 + 3h - 7d, T0 + 3h] would hold four.
    for k in range(1, 4):
        assert store.commit_decision(decision(f"d{k}", "c1", T0 + k * H), caps(3, 10))
    assert not store.commit_decision(decision("d0", "c1", T0), caps(3, 10))
    # Exactly 7 days before the first of them, no 7-day window holds both: allowed.
    assert store.commit_decision(decision("d-1", "c1", T0 + H - 7 * D), caps(3, 10))


def test_commit_counts_sends_posted_as_events(store: Store) -> None:
    store.append_events(frame([sent("c1", T0 - k * H, "cross_sell", event_id=f"m{k}") for k in range(3)]))
    assert not store.commit_decision(decision("d0", "c1", T0), caps(3, 10))


def test_committed_message_adds_its_send_and_event(store: Store) -> None:
    assert store.commit_decision(decision("d0", "c1", T0, "welcome_series"), caps(3, 10))
    events = store.events(["c1"])
    assert len(events) == 1
    row = events.iloc[0]
    assert (row["event_type"], row["channel"], row["message_type"]) == (
        "email_sent",
        "email",
        "welcome_series",
    )
    assert (row["campaign_id"], row["event_id"], row["ts"]) == ("d0", "decision:d0", pd.Timestamp(T0))
    assert store.send_state(["c1"], T0)["c1"].last_send == {"welcome_series": T0}
    # The provider echoing the send back as an event is a duplicate, not a second send.
    echo = sent("c1", T0, "welcome_series", event_id="decision:d0")
    assert store.append_events(frame([echo])).duplicates == 1
    # Committing the same decision again (a retried request) stands and changes nothing.
    assert store.commit_decision(decision("d0", "c1", T0, "welcome_series"), caps(3, 10))
    assert store.send_state(["c1"], T0)["c1"].sends_7d == 1
    assert len(store.export_decisions()) == 1


def test_no_send_is_always_stored(store: Store) -> None:
    for k in range(3):
        assert store.commit_decision(decision(f"d{k}", "c1", T0 + k * H), caps(3, 10))
    for k in range(3, 5):
        assert store.commit_decision(decision(f"d{k}", "c1", T0 + k * H, "no_send"), caps(3, 10))
    assert store.commit_decision(decision("d5", "c1", T0 + 5 * H, "no_send"), caps(0, 0))
    assert [d.action for d in store.decisions_of("c1", limit=3)] == ["no_send"] * 3
    assert store.send_state(["c1"], T0 + D)["c1"].sends_7d == 3
    assert len(store.events(["c1"])) == 3


def test_decision_round_trip_and_newest_first(store: Store) -> None:
    detail = {
        "ranked": [["cart_abandonment", 0.05], ["no_send", 0.0]],
        "reasons": {"winback_offer": "cooldown"},
    }
    original = decision(
        "x", "c1", T0 + timedelta(microseconds=7), "no_send", propensity=0.25, control=True, detail=detail
    )
    store.commit_decision(original, caps(3, 10))
    store.commit_decision(decision("y", "c1", T0 + H, "no_send"), caps(3, 10))
    store.commit_decision(decision("z", "c1", T0 + H, "no_send"), caps(3, 10))
    assert store.decision("x") == original
    assert store.decision("x").ts.tzinfo is not None  # type: ignore[union-attr]
    assert store.decision("nope") is None
    assert [d.decision_id for d in store.decisions_of("c1")] == ["z", "y", "x"]
    assert [d.decision_id for d in store.decisions_of("c1", limit=2)] == ["z", "y"]
    assert store.decisions_of("c1", limit=0) == []
    assert store.decisions_of("nobody") == []


def test_decision_and_outcome_reject_invalid_values() -> None:
    with pytest.raises(ValueError, match="unknown action"):
        decision("d0", "c1", T0, "spam")
    with pytest.raises(ValueError, match="propensity"):
        decision("d0", "c1", T0, propensity=0.0)
    with pytest.raises(ValueError, match="tz-aware"):
        decision("d0", "c1", datetime(2024, 3, 1))
    with pytest.raises(ValueError, match="unknown outcome kind"):
        Outcome("bounced", T0)


# ---------------------------------------------------------------------------------------------------------
# Concurrency: the cap holds when replicas race.


def test_threads_with_their_own_stores_never_exceed_the_cap(backend: Backend) -> None:
    stores = [backend.open() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: list[bool] = []
    lock = threading.Lock()

    def worker(k: int, store: Store) -> None:
        barrier.wait(timeout=30)
        for i in range(5):
            ok = store.commit_decision(decision(f"t{k}-{i}", "c1", T0 + i * H), caps(3, 10)).ok
            with lock:
                results.append(ok)

    threads = [threading.Thread(target=worker, args=(k, s)) for k, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 40
    assert sum(results) == 3
    assert stores[0].send_state(["c1"], T0 + D)["c1"].sends_7d == 3
    assert len(stores[0].decisions_of("c1")) == 3
    assert len(stores[0].events(["c1"])) == 3


def _race(url: str, worker: int, barrier: Any, results: Any) -> None:
    """One racing process: its own store from the URL, five messages to the same customer."""
    store = open_store(url)
    try:
        barrier.wait(timeout=60)
        won = sum(
            store.commit_decision(decision(f"p{worker}-{i}", "c1", T0 + i * H), caps(3, 10)).ok
            for i in range(5)
        )
        results.put(won)
    finally:
        store.close()


@pytest.mark.integration
def test_processes_with_their_own_stores_never_exceed_the_cap(backend: Backend) -> None:
    backend.open()  # creates the SQLite schema / checks the server before the race
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(backend.url, k, barrier, results)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert results.get(timeout=5) + results.get(timeout=5) == 3
    check = backend.open()
    assert check.send_state(["c1"], T0 + D)["c1"].sends_7d == 3
    assert len(check.decisions_of("c1")) == 3


# ---------------------------------------------------------------------------------------------------------
# Fatigue, consent and time: every rule that reads the past is held in the commit.


def test_the_same_decision_a_minute_apart_sends_once(store: Store) -> None:
    ten = datetime(2026, 11, 20, 10, tzinfo=UTC)
    results = [
        store.commit_decision(decision(f"r{k}", "c1", ten + k * M, "loyalty_reward"), RULES)
        for k in (1, 2, 3)
    ]
    assert results == [CommitResult(True), CommitResult(False, "min_gap"), CommitResult(False, "min_gap")]
    assert store.commit_decision(decision("r4", "c1", ten + 4 * M, "cart_abandonment"), RULES) == (
        CommitResult(False, "min_gap")
    )
    assert store.send_state(["c1"], ten + H)["c1"].sends_7d == 1
    assert [d.decision_id for d in store.decisions_of("c1")] == ["r1"]
    assert (store.events(["c1"])["event_type"] == "email_sent").sum() == 1
    # Sixteen hours after the send, another action may go; the loyalty reward waits for its cooldown.
    assert store.commit_decision(decision("r5", "c1", ten + M + 16 * H, "cart_abandonment"), RULES)
    assert store.commit_decision(decision("r6", "c1", ten + M + 40 * H, "loyalty_reward"), RULES) == (
        CommitResult(False, "cooldown_loyalty_reward")
    )


def test_the_gap_counts_sends_stamped_after_the_decision_and_posted_as_events(store: Store) -> None:
    # Another replica's clock ran ahead: a send 10 hours after this decision is already logged.
    assert store.commit_decision(decision("late", "c1", T0 + 10 * H, "cross_sell"), RULES)
    assert store.commit_decision(decision("early", "c1", T0, "cart_abandonment"), RULES).rule == "min_gap"
    # Exactly the gap before it: allowed.
    assert store.commit_decision(decision("earlier", "c1", T0 - 6 * H, "cart_abandonment"), RULES)
    # A send the platform posted as an event counts like a committed one.
    store.append_events(frame([sent("c2", T0, "cross_sell", event_id="m0")]))
    assert store.commit_decision(decision("d0", "c2", T0 + 15 * H, "welcome_series"), RULES).rule == "min_gap"


def test_a_seven_day_cooldown_holds_for_seven_days_then_frees(store: Store) -> None:
    assert RULES.cooldown_days["browse_abandonment"] == 7
    assert store.commit_decision(decision("b0", "c1", T0, "browse_abandonment"), RULES)
    for k, when in enumerate([T0 + D, T0 + 3 * D, T0 + 7 * D - timedelta(seconds=1)]):
        refused = store.commit_decision(decision(f"b{k + 1}", "c1", when, "browse_abandonment"), RULES)
        assert refused == CommitResult(False, "cooldown_browse_abandonment"), when
    # Only that action waits: another one goes once the gap has passed.
    assert store.commit_decision(decision("x0", "c1", T0 + 2 * D, "cart_abandonment"), RULES)
    assert store.commit_decision(decision("b9", "c1", T0 + 7 * D, "browse_abandonment"), RULES)
    assert store.send_state(["c1"], T0 + 7 * D)["c1"].last_send["browse_abandonment"] == T0 + 7 * D
    # A send of the action stamped after the decision (a clock ahead) holds it too.
    assert store.commit_decision(decision("w1", "c2", T0 + 5 * D, "winback_offer"), RULES)
    assert store.commit_decision(decision("w0", "c2", T0, "winback_offer"), RULES) == (
        CommitResult(False, "cooldown_winback_offer")
    )


def test_quiet_hours_refuse_messages_but_not_no_send(store: Store) -> None:
    rules = RuleConfig(quiet_hours=(21, 8), timezone="Europe/Berlin")
    night = datetime(2026, 11, 20, 21, 30, tzinfo=UTC)  # 22:30 in Berlin
    assert store.commit_decision(decision("q0", "c1", night, "cart_abandonment"), rules) == (
        CommitResult(False, "quiet_hours")
    )
    assert store.commit_decision(decision("q1", "c1", night, "no_send"), rules)
    morning = datetime(2026, 11, 21, 7, tzinfo=UTC)  # 08:00 in Berlin: the quiet hours are over
    assert store.commit_decision(decision("q2", "c1", morning, "cart_abandonment"), rules)
    assert store.send_state(["c1"], morning)["c1"].sends_7d == 1
    assert store.decision("q0") is None


def test_fifty_concurrent_commits_for_one_customer_send_one_message(backend: Backend) -> None:
    replicas = [backend.open(), backend.open()]  # two store objects: two replicas on one store
    actions = sorted(MESSAGE_ACTIONS)
    barrier = threading.Barrier(50)

    def attempt(k: int) -> CommitResult:
        barrier.wait(timeout=30)
        d = decision(f"burst-{k}", "c1", T0 + k * timedelta(seconds=1), actions[k % len(actions)])
        return replicas[k % 2].commit_decision(d, RULES)

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(attempt, range(50)))
    assert sum(r.ok for r in results) == 1
    assert {r.rule for r in results if not r.ok} == {"min_gap"}
    check = backend.open()
    assert check.send_state(["c1"], T0 + H)["c1"].sends_7d == 1
    assert len(check.decisions_of("c1")) == 1
    assert len(check.events(["c1"])) == 1


def test_a_stored_unsubscribe_newer_than_the_decisions_consent_refuses_it(store: Store) -> None:
    store.append_events(frame([ev("c1", T0, "newsletter_signup", channel="email")]))
    state = store.send_state(["c1"], T0 + H)["c1"]
    assert (state.consent, state.consent_ts) == (1.0, T0)
    # The decision relied on that signup; an unsubscribe is stored before it commits.
    store.append_events(frame([ev("c1", T0 + 2 * H, "email_unsubscribe", channel="email")]))
    assert store.commit_decision(decision("d0", "c1", T0 + 3 * H, consent_ts=T0), RULES) == (
        CommitResult(False, "consent")
    )
    assert store.commit_decision(decision("d1", "c1", T0 + 3 * H), RULES).rule == "consent"  # relied on none
    # At the same time, the unsubscription wins.
    assert store.commit_decision(decision("d2", "c1", T0 + 3 * H, consent_ts=T0 + 2 * H), RULES).rule == (
        "consent"
    )
    assert store.commit_decision(decision("d3", "c1", T0 + 3 * H, "no_send", consent_ts=T0), RULES)
    # A signup newer than the stored unsubscription (inline in the request): the send stands.
    assert store.commit_decision(decision("d4", "c1", T0 + 3 * H, consent_ts=T0 + 2 * H + M), RULES)
    assert store.send_state(["c1"], T0 + D)["c1"].sends_7d == 1
    # Without the consent rule, the commit does not read consent.
    store.append_events(frame([ev("c2", T0, "email_unsubscribe", channel="email")]))
    assert store.commit_decision(decision("d5", "c2", T0 + H), RuleConfig(require_consent=False))


def test_a_decision_from_the_future_does_not_shorten_the_send_history(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    past = [(1, "cross_sell"), (2, "cart_abandonment"), (6, "winback_offer")]
    store.append_events(frame([sent("c1", now - k * D, a, event_id=f"m{k}") for k, a in past]))
    # A decision and a posted send stamped far in the future (a client's clock, a backtest).
    assert store.commit_decision(decision("future", "c1", datetime(2199, 12, 31, tzinfo=UTC)), RULES)
    store.append_events(frame([sent("c1", datetime(2199, 6, 1, tzinfo=UTC), "cross_sell", event_id="mf")]))
    assert store.send_state(["c1"], now)["c1"].sends_7d == 3
    assert store.commit_decision(decision("today", "c1", now, "feedback_request"), RULES) == (
        CommitResult(False, "frequency_cap_7d")
    )
    # 64 later decisions at the real time, an hour apart: the cap frees one send when the send of 6 days
    # ago leaves the week, and the gap holds the rest.
    actions = sorted(MESSAGE_ACTIONS)
    results = [
        store.commit_decision(decision(f"t{k}", "c1", now + k * H, actions[k % len(actions)]), RULES)
        for k in range(64)
    ]
    assert [k for k, r in enumerate(results) if r] == [24]
    assert {r.rule for r in results[:24]} == {"frequency_cap_7d"}


def test_the_send_log_is_pruned_relative_to_the_wall_clock_not_a_future_send(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    old = [sent("c1", now - 100 * D, "cross_sell", event_id="old"), sent("c1", now - 80 * D, "cross_sell")]
    store.append_events(frame(old))
    assert store.send_state(["c1"], now - 99 * D)["c1"].sends_7d == 1  # kept: the newest is 20 days later
    store.append_events(frame([sent("c1", datetime(2199, 1, 1, tzinfo=UTC), "cross_sell", event_id="f")]))
    # 90 days before the wall clock, not before 2199: the send of 80 days ago stays.
    assert store.send_state(["c1"], now)["c1"].last_send == {"cross_sell": now - 80 * D}
    assert store.send_state(["c1"], now - 99 * D)["c1"].sends_7d == 0


def test_rules_the_send_log_cannot_hold_are_refused(store: Store) -> None:
    longer = RuleConfig.from_dict({"cooldown_days": {"loyalty_reward": 120}})
    with pytest.raises(ValueError, match="send log"):
        store.commit_decision(decision("d0", "c1", T0, "loyalty_reward"), longer)
    assert store.decision("d0") is None


# ---------------------------------------------------------------------------------------------------------
# Outcomes and the export.


def test_record_outcome(store: Store) -> None:
    assert not store.record_outcome("nope", Outcome("delivered", T0))
    store.commit_decision(decision("d0", "c1", T0), caps(3, 10))
    assert store.record_outcome("d0", Outcome("purchased", T0 + H, revenue=59.9))
    # The second report of the same kind changes nothing but is not an error.
    assert store.record_outcome("d0", Outcome("purchased", T0 + 2 * H, revenue=100.0))
    row = store.export_decisions().iloc[0]
    assert row["purchased"]
    assert row["revenue"] == 59.9
    assert not row["opened"]


def test_export_columns_types_and_values(store: Store) -> None:
    store.commit_decision(
        decision(
            "dec-b", "c1", T0, propensity=0.8, model_version="7", inputs_digest="abc", expected_uplift=0.12
        ),
        caps(3, 10),
    )
    store.commit_decision(
        decision(
            "dec-a", "c2", T0, "no_send", propensity=0.5, control=True, stage="awareness", expected_uplift=0.0
        ),
        caps(3, 10),
    )
    store.commit_decision(decision("dec-c", "c1", T0 + H, "welcome_series", stage="awareness"), caps(3, 10))
    store.record_outcome("dec-b", Outcome("delivered", T0 + timedelta(minutes=1)))
    store.record_outcome("dec-b", Outcome("opened", T0 + 2 * H))
    store.record_outcome("dec-b", Outcome("purchased", T0 + 3 * H, revenue=59.9))
    store.record_outcome("dec-c", Outcome("unsubscribed", T0 + 4 * H))

    got = store.export_decisions()
    assert list(got.columns) == list(EXPORT_COLUMNS)
    assert set(DECISION_COLUMNS) <= set(got.columns)
    assert list(got.columns[:5]) == list(DECISION_COLUMNS)
    assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype)
    assert str(got["ts"].dt.tz) == "UTC"
    assert got["propensity"].dtype == np.float64
    assert got["revenue"].dtype == np.float64
    for name in ("control", "delivered", "opened", "clicked", "purchased", "unsubscribed"):
        assert got[name].dtype == bool, name
    # Sorted by ts, then decision_id: dec-a and dec-b share T0.
    assert got["decision_id"].tolist() == ["dec-a", "dec-b", "dec-c"]
    assert got["customer_id"].tolist() == ["c2", "c1", "c1"]
    assert got["ts"].tolist() == [pd.Timestamp(T0), pd.Timestamp(T0), pd.Timestamp(T0 + H)]
    assert got["action"].tolist() == ["no_send", "cart_abandonment", "welcome_series"]
    assert got["propensity"].tolist() == [0.5, 0.8, 0.9]
    assert got["policy"].tolist() == ["journey-scorer/3", "journey-scorer/7", "journey-scorer/3"]
    assert got["channel"].tolist() == [None, "email", "email"]
    assert got["control"].tolist() == [True, False, False]
    assert got["stage"].tolist() == ["awareness", "decision", "awareness"]
    assert got["expected_uplift"].tolist() == [0.0, 0.12, 0.05]
    assert got["delivered"].tolist() == [False, True, False]
    assert got["opened"].tolist() == [False, True, False]
    assert got["clicked"].tolist() == [False, False, False]
    assert got["purchased"].tolist() == [False, True, False]
    assert got["unsubscribed"].tolist() == [False, False, True]
    assert np.isnan(got["revenue"][0])
    assert got["revenue"][1] == 59.9
    assert np.isnan(got["revenue"][2])


def test_export_of_an_empty_store_has_the_columns(store: Store) -> None:
    got = store.export_decisions()
    assert got.empty
    assert list(got.columns) == list(EXPORT_COLUMNS)
    assert isinstance(got["ts"].dtype, pd.DatetimeTZDtype)


# ---------------------------------------------------------------------------------------------------------
# Erasure.


def test_erase_leaves_nothing_of_the_customer(backend: Backend) -> None:
    store = backend.open(max_events=5)
    gone, kept = "cust-erase-7f3a", "cust-keep-2b9c"
    rows = [
        ev(gone, T0, "newsletter_signup", channel="email", event_id="sub-1"),
        sent(gone, T0 + H, "cross_sell", event_id="mail-1"),
        *(ev(gone, T0 + k * H, "product_view", item_id="sku-1") for k in range(2, 6)),
        ev(kept, T0, "newsletter_signup", channel="email", event_id="sub-2"),
    ]
    store.append_events(frame(rows))
    store.commit_decision(decision("dx-81", gone, T0 + 6 * H), caps(3, 10))  # adds a sixth event: trims one
    store.commit_decision(decision("dx-82", gone, T0 + 7 * H, "no_send"), caps(3, 10))
    store.record_outcome("dx-81", Outcome("opened", T0 + 8 * H))
    store.commit_decision(decision("dk-91", kept, T0, "no_send"), caps(3, 10))

    assert store.erase(gone) == 5 + 2
    assert store.events([gone]).empty
    assert store.decisions_of(gone) == []
    assert store.decision("dx-81") is None
    assert store.decision("dx-82") is None
    assert store.send_state([gone], T0 + D)[gone] == SendState(-1.0, 0, 0, {})
    assert not store.record_outcome("dx-81", Outcome("clicked", T0 + 9 * H))
    assert store.erase(gone) == 0
    # The other customer is untouched.
    assert len(store.events([kept])) == 1
    assert store.send_state([kept], T0)[kept].consent == 1.0
    assert store.export_decisions()["decision_id"].tolist() == ["dk-91"]

    dump = backend.dump()
    assert kept in dump  # the dump does see the data
    for trace in (gone, "dx-81", "dx-82", "sub-1", "mail-1"):
        assert trace not in dump, trace
    if backend.kind == "redis":
        assert not [k for k in backend.all_key_names() if gone in k or "dx-8" in k]
    else:
        # secure_delete and the WAL checkpoint: not even the file's free space keeps the customer.
        assert isinstance(store, SQLiteStore)
        for path in (store.path, store.path.with_name(store.path.name + "-wal")):
            if path.exists():
                assert gone.encode() not in path.read_bytes(), path


# ---------------------------------------------------------------------------------------------------------
# Opening.


def test_ping(store: Store) -> None:
    assert store.ping()


@pytest.mark.parametrize(
    "url", ["postgres://localhost/journey", "sqlite:///:memory:", "sqlite://", "journey.db", ""]
)
def test_open_store_refuses_unknown_urls(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported store URL") as err:
        open_store(url)
    assert repr(url) in str(err.value)


def test_open_store_rejects_a_bad_history_length(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_events"):
        open_store(f"sqlite:///{tmp_path / 'x.db'}", max_events=0)


def test_sqlite_url_paths_follow_sqlalchemy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///online/rel.db") as rel:
        assert isinstance(rel, SQLiteStore)
        assert rel.path == Path("online/rel.db")
    with open_store(f"sqlite:///{tmp_path / 'abs.db'}") as absolute:
        assert isinstance(absolute, SQLiteStore)
        assert absolute.path == tmp_path / "abs.db"
    assert (tmp_path / "online" / "rel.db").exists()
