"""The scoring service against a small trained model in a real registry (MLflow on SQLite) and a real
online store: what an e-mail platform relies on, route by route."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from features.build import load_rows, padded_tokens
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.policy import RuleConfig
from features.schema import MESSAGE_ACTIONS, STAGES
from predictor.registry import CHAMPION, MODEL_NAME
from serving.app import create_app
from serving.model import ModelManager, ModelRefused, load_version
from serving.scoring import score_customers
from serving.service import CustomerRequest, Service
from serving.settings import ServeSettings
from serving.store import open_store
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "test-key"
NOW = pd.Timestamp("2026-04-20T12:00:00Z")
HEADERS = {"X-API-Key": KEY}
# A month after the history posted: no e-mail of the shop's own within any cooldown or cap window.
LATER = NOW + pd.Timedelta(days=30)
TEN = LATER.floor("D") + pd.Timedelta(hours=10)  # a morning after the signup these tests post
# The simulated shop lives in the first half of 2026 and these tests score it at its own times
# (`context.now`), months before the machine's clock: they open the tolerance for the client's clock.
# `test_the_api_refuses_times_beyond_the_clock_tolerance` checks the default.
SHOP_TIME_SKEW_S = 10 * 365 * 86_400.0
# The caps alone (no gap, no cooldowns), for the tests of the caps.
CAPS_ONLY = RuleConfig(min_gap_hours=0.0, cooldown_days=dict.fromkeys(MESSAGE_ACTIONS, 0.0))


def settings_for(**overrides: Any) -> ServeSettings:
    base = ServeSettings(
        api_keys=(KEY,),
        reload_interval_s=0,
        exploration="epsilon",
        epsilon=0.0,
        control_share=0.0,
        seed=0,
        max_clock_skew_s=SHOP_TIME_SKEW_S,
    )
    return base.replace(**overrides)


@pytest.fixture(scope="module")
def manager(served: Served) -> ModelManager:
    m = ModelManager(MODEL_NAME, CHAMPION)
    m.reload()
    assert m.current is not None
    return m


def make_client(
    tmp_path: Path, manager: ModelManager, store_url: str | None = None, **overrides: Any
) -> TestClient:
    settings = settings_for(store_url=store_url or f"sqlite:///{tmp_path / 'online.db'}", **overrides)
    return TestClient(create_app(settings, manager=manager))


@pytest.fixture(params=["sqlite", "redis"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The online store of a test: a SQLite file, or a namespace of a real Redis server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'online.db'}"
    url = request.getfixturevalue("redis_url")
    return f"{url}?namespace=serving-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def client(tmp_path: Path, manager: ModelManager) -> Iterator[TestClient]:
    with make_client(tmp_path, manager) as c:
        yield c


def event_rows(events: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for r in events.to_dict(orient="records"):
        row = {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and np.isnan(v))}
        row["ts"] = pd.Timestamp(r["ts"]).isoformat()
        rows.append(row)
    return rows


def post_history(client: TestClient, served: Served, customer: str) -> pd.DataFrame:
    events = served.events[(served.events["customer_id"] == customer) & (served.events["ts"] < NOW)]
    rows = event_rows(events)
    for lo in range(0, len(rows), 500):
        r = client.post("/v1/events", json={"events": rows[lo : lo + 500]}, headers=HEADERS)
        assert r.status_code == 200, r.text
    return events


def active_customers(served: Served, n: int) -> list[str]:
    e = served.events
    recent = e[(e["ts"] < NOW) & (e["ts"] > NOW - pd.Timedelta(days=30))]
    counts = recent["customer_id"].value_counts()
    return sorted(counts[counts >= 5].index)[:n]


def score(client: TestClient, customer: str, now: pd.Timestamp = NOW, **body: Any) -> dict[str, Any]:
    context = {"now": now.isoformat(), **body.pop("context", {})}
    r = client.post("/v1/score", json={"customer_id": customer, "context": context, **body}, headers=HEADERS)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def ranked(answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["action"]: r for r in answer["next_best_action"]["ranked"]}


def test_a_cart_moves_the_stage_toward_decision_and_makes_cart_abandonment_eligible(
    client: TestClient,
    served: Served,
) -> None:
    item = served.build.vocab.tokens["item_id"][0]
    moved = []
    for customer in active_customers(served, 6):
        post_history(client, served, customer)
        client.post(
            "/v1/events",
            headers=HEADERS,
            json={
                "events": [
                    {
                        "customer_id": customer,
                        "ts": (LATER - pd.Timedelta(days=2)).isoformat(),
                        "event_type": "newsletter_signup",
                    }
                ]
            },
        )
        # Scored without e-mail allowed, so that this first decision sends nothing (no cooldown starts).
        before = score(client, customer, now=LATER - pd.Timedelta(hours=3), context={"channels": ["sms"]})
        cart = [
            {
                "customer_id": customer,
                "ts": (LATER - pd.Timedelta(hours=2)).isoformat(),
                "event_type": "product_view",
                "item_id": item,
                "event_id": f"{customer}-pv",
            },
            {
                "customer_id": customer,
                "ts": (LATER - pd.Timedelta(hours=2) + pd.Timedelta(minutes=5)).isoformat(),
                "event_type": "add_to_cart",
                "item_id": item,
                "event_id": f"{customer}-cart",
            },
            {
                "customer_id": customer,
                "ts": (LATER - pd.Timedelta(hours=2) + pd.Timedelta(minutes=8)).isoformat(),
                "event_type": "checkout_start",
                "event_id": f"{customer}-checkout",
            },
        ]
        r = client.post("/v1/events", json={"events": cart}, headers=HEADERS)
        assert r.json() == {"accepted": 3, "duplicates": 0}
        assert client.post("/v1/events", json={"events": cart}, headers=HEADERS).json() == {
            "accepted": 0,
            "duplicates": 3,
        }
        after = score(client, customer, now=LATER - pd.Timedelta(hours=1))
        moved.append(
            after["stage"]["probabilities"]["decision"] - before["stage"]["probabilities"]["decision"]
        )
        cart_rule = ranked(after)["cart_abandonment"]
        assert cart_rule["blocked_by"] is None, cart_rule
        assert cart_rule["eligible"], cart_rule
        assert ranked(before)["cart_abandonment"]["blocked_by"] in ("needs_open_cart", "channel_not_allowed")
    assert np.mean(moved) > 0.02, moved
    assert sum(m > 0 for m in moved) >= 4, moved


def test_an_unsubscribed_customer_gets_no_send_with_the_consent_rule_named(
    client: TestClient,
    served: Served,
) -> None:
    customer = active_customers(served, 1)[0]
    post_history(client, served, customer)
    client.post(
        "/v1/events",
        headers=HEADERS,
        json={
            "events": [
                {
                    "customer_id": customer,
                    "ts": (NOW - pd.Timedelta(days=1)).isoformat(),
                    "event_type": "email_unsubscribe",
                }
            ]
        },
    )
    answer = score(client, customer)
    nba = answer["next_best_action"]
    assert nba["action"] == "no_send"
    for action, row in ranked(answer).items():
        if action != "no_send":
            assert row["blocked_by"] == "consent", row
            assert not row["eligible"], row
    assert nba["decision_id"]
    assert 0 < nba["propensity"] <= 1
    assert any("blocked: consent" in r for r in answer["reasons"]), answer["reasons"]


def test_the_frequency_cap_blocks_the_fourth_email_in_a_week(
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    # Send whenever something is eligible (min_uplift -1), and without the gap and cooldowns (which would
    # stop the same action first), so the cap is what stops the fourth e-mail.
    with make_client(tmp_path, manager, min_uplift=-1.0, rules=CAPS_ONLY) as client:
        customer = active_customers(served, 1)[0]
        post_history(client, served, customer)
        start = NOW + pd.Timedelta(days=40)  # no e-mail of the shop's own history within the week
        client.post(
            "/v1/events",
            headers=HEADERS,
            json={
                "events": [
                    {
                        "customer_id": customer,
                        "ts": (start - pd.Timedelta(days=1)).isoformat(),
                        "event_type": "newsletter_signup",
                    }
                ]
            },
        )
        actions = [
            score(client, customer, now=start + pd.Timedelta(hours=h))["next_best_action"]
            for h in (0, 20, 40, 60)
        ]
        assert [a["action"] != "no_send" for a in actions] == [True, True, True, False], actions
        assert ranked_blocked(actions[3]) == {"frequency_cap_7d"}
        # A week after the first send, e-mail is possible again.
        later = score(client, customer, now=start + pd.Timedelta(days=7, hours=1))
        assert later["next_best_action"]["action"] != "no_send"


def ranked_blocked(nba: dict[str, Any]) -> set[str]:
    return {r["blocked_by"] for r in nba["ranked"] if r["action"] != "no_send"}


def test_feedback_and_erasure_leave_nothing_behind(
    client: TestClient,
    served: Served,
    tmp_path: Path,
) -> None:
    customer = active_customers(served, 1)[0]
    post_history(client, served, customer)
    answer = score(client, customer)
    decision = answer["next_best_action"]["decision_id"]
    item = served.build.vocab.tokens["item_id"][3]
    r = client.post(
        "/v1/feedback",
        headers=HEADERS,
        json={"decision_id": decision, "outcome": "purchased", "revenue": 12.5, "item_id": item},
    )
    assert r.status_code == 200, r.text
    assert r.json()["events_added"] == 1
    assert (
        client.post(
            "/v1/feedback", headers=HEADERS, json={"decision_id": "nope", "outcome": "opened"}
        ).status_code
        == 404
    )
    no_item = client.post(
        "/v1/feedback", headers=HEADERS, json={"decision_id": decision, "outcome": "purchased"}
    )
    assert no_item.status_code == 422
    assert "item_id" in no_item.text
    seen = client.get(f"/v1/customers/{customer}", headers=HEADERS).json()
    assert seen["decisions"][0]["decision_id"] == decision
    assert seen["stage"]["label"] in STAGES
    assert any(e["event_type"] == "purchase" and e["item_id"] == item for e in seen["events"])

    r = client.delete(f"/v1/customers/{customer}", headers=HEADERS)
    assert r.status_code == 200
    assert r.json()["erased"] > 0
    assert client.get(f"/v1/customers/{customer}", headers=HEADERS).status_code == 404
    db = sqlite3.connect(tmp_path / "online.db")
    for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for row in db.execute(f'SELECT * FROM "{table}"').fetchall():
            assert not any(isinstance(v, str) and (customer in v or decision in v) for v in row), (table, row)


def test_keys_and_limits_answer_with_their_own_4xx(tmp_path: Path, manager: ModelManager) -> None:
    with make_client(
        tmp_path, manager, max_batch=2, max_events_per_request=3, max_body_bytes=20_000
    ) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/model").status_code == 401
        assert client.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.get("/v1/model", headers=HEADERS).json()["version"] == manager.current.version  # type: ignore[union-attr]
        event = {"customer_id": "C1", "ts": NOW.isoformat(), "event_type": "page_view"}
        r = client.post("/v1/events", headers=HEADERS, json={"events": [event] * 4})
        assert r.status_code == 413
        assert "limit of 3" in r.text
        batch = {"customers": [{"customer_id": f"C{i}"} for i in range(3)]}
        r = client.post("/v1/score/batch", headers=HEADERS, json=batch)
        assert r.status_code == 413
        assert "limit of 2" in r.text
        r = client.post("/v1/events", headers=HEADERS, content=b'{"events": [' + b" " * 30_000 + b"]}")
        assert r.status_code == 413
        assert "bytes" in r.text
        bad = {"customer_id": "C1", "ts": NOW.isoformat(), "event_type": "add_to_cart"}  # no item
        r = client.post("/v1/events", headers=HEADERS, json={"events": [event, bad]})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["events", 1, "item_id"], r.text
        r = client.post("/v1/events", headers=HEADERS, json={"events": [{**event, "event_type": "teleport"}]})
        assert r.status_code == 422
        assert "event_type" in r.text
        r = client.post("/v1/score", headers=HEADERS, json={"customer_id": "C1\u0000"})
        assert r.status_code == 422
        metrics = client.get("/metrics").text
        assert "journey_request_seconds_bucket" in metrics
        assert 'route="/v1/events"' in metrics


def test_batch_scoring_matches_single_scoring(client: TestClient, served: Served) -> None:
    customers = active_customers(served, 5)
    for c in customers:
        post_history(client, served, c)
    context = {"now": NOW.isoformat(), "channels": ["sms"]}  # no e-mail: no decision changes the state
    batch = client.post(
        "/v1/score/batch",
        headers=HEADERS,
        json={"customers": [{"customer_id": c, "context": context} for c in customers]},
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["customer_id"] for r in results] == customers
    for c, r in zip(customers, results, strict=True):
        single = score(client, c, context={"channels": ["sms"]})
        assert single["stage"]["label"] == r["stage"]["label"]
        for stage, p in r["stage"]["probabilities"].items():
            assert single["stage"]["probabilities"][stage] == pytest.approx(p, abs=1e-6)
        assert [x["item_id"] for x in single["recommendations"]] == [
            x["item_id"] for x in r["recommendations"]
        ]
        assert r["next_best_action"]["action"] == "no_send"
        messages = [x for x in r["next_best_action"]["ranked"] if x["action"] != "no_send"]
        assert not any(x["eligible"] for x in messages)
        assert all(x["blocked_by"] for x in messages)


def test_the_online_path_and_the_feature_job_give_identical_model_inputs(
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    rows = load_rows(served.build.path, "test").to_pandas()
    cutoff = rows["cutoff"].min()
    picked = rows[rows["cutoff"] == cutoff].head(20)
    customers = picked["customer_id"].tolist()
    store = open_store(f"sqlite:///{tmp_path / 'parity.db'}", max_events=100_000)
    events = served.events[served.events["customer_id"].isin(customers)]
    store.append_events(events[events["ts"] < cutoff].reset_index(drop=True))
    model = manager.current
    assert model is not None
    stored = store.event_columns(customers)
    scored = score_customers(model.predictor, stored, customers, [cutoff.to_pydatetime()] * len(customers), 5)
    table = load_rows(served.build.path, "test")
    mask = (
        np.isin(np.array(table.column("customer_id").to_pylist()), customers)
        & (table.column("cutoff").to_pandas() == cutoff).to_numpy()
    )
    batch_rows = table.filter(mask)
    order = np.argsort(np.array(batch_rows.column("customer_id").to_pylist()))
    online_tokens = scored.batch.tokens
    sort_online = np.argsort(np.array(customers))
    for name in TOKEN_FIELDS:
        offline = padded_tokens(batch_rows, name, served.build.max_len)[order]
        np.testing.assert_array_equal(online_tokens[name][sort_online], offline, err_msg=name)
    for name in AGGREGATE_NAMES:
        offline = batch_rows.column(name).to_numpy()[order]
        np.testing.assert_allclose(
            scored.batch.aggregates[name][sort_online], offline, rtol=1e-9, err_msg=name
        )
    store.close()


def test_moving_the_alias_swaps_the_model_and_a_broken_model_is_refused(
    tmp_path: Path,
    served: Served,
) -> None:
    manager = ModelManager(MODEL_NAME, CHAMPION)
    manager.reload()
    with make_client(tmp_path, manager) as client:
        first = client.get("/v1/model", headers=HEADERS).json()["version"]
        customer = active_customers(served, 1)[0]
        post_history(client, served, customer)
        second = served.register(served.scorer, CHAMPION)
        r = client.post("/v1/admin/reload", headers=HEADERS).json()
        assert r == {"changed": True, "version": second, "previous": first, "error": None}
        assert score(client, customer)["model"]["version"] == second

        broken = _broken_copy(served)
        third = served.register(broken, CHAMPION)
        with pytest.raises(ModelRefused, match="not finite"):
            load_version(MODEL_NAME, third, CHAMPION)
        r = client.post("/v1/admin/reload", headers=HEADERS).json()
        assert r["changed"] is False
        assert r["version"] == second
        assert "not finite" in r["error"]
        info = client.get("/v1/model", headers=HEADERS).json()
        assert info["version"] == second
        assert "not finite" in info["last_error"]
        assert score(client, customer)["model"]["version"] == second
        assert "journey_model_reload_failures_total 1.0" in client.get("/metrics").text
    served.register(served.scorer, CHAMPION)  # leave a good champion for the other tests


def _broken_copy(served: Served) -> Any:
    import copy

    broken = copy.deepcopy(served.scorer)
    with torch.no_grad():
        broken.model_.stage_head.weight.fill_(float("nan"))
    return broken


def test_settings_hold_the_clock_tolerance_and_refuse_rules_beyond_the_send_log() -> None:
    assert ServeSettings().max_clock_skew_s == 300
    env = ServeSettings.load(None, {}, environ={"JOURNEY_MAX_CLOCK_SKEW_S": "60"})
    assert env.max_clock_skew_s == 60
    with pytest.raises(ValueError, match="max_clock_skew_s"):
        ServeSettings(max_clock_skew_s=-1)
    with pytest.raises(ValueError, match="send log"):
        ServeSettings.from_dict({"rules": {"cooldown_days": {"winback_offer": 400}}})


def test_settings_name_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown serve setting"):
        ServeSettings.from_dict({"max_bach": 3})
    with pytest.raises(ValueError, match="control_share"):
        ServeSettings.from_dict({"control_share": 1.5})
    s = ServeSettings.load(None, {"rules.max_emails_7d": 2}, environ={"JOURNEY_API_KEYS": "a, b"})
    assert s.api_keys == ("a", "b")
    assert s.rules == RuleConfig(max_emails_7d=2)
    with pytest.raises(ValueError, match="JOURNEY_API_KEYS"):
        create_app(ServeSettings())


def test_decisions_export_in_the_form_the_feature_job_reads(
    client: TestClient,
    served: Served,
    tmp_path: Path,
) -> None:
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from features.labels import DECISION_COLUMNS
    from journey.cli import app as cli

    customers = active_customers(served, 3)
    for c in customers:
        post_history(client, served, c)
    answers = [score(client, c) for c in customers]
    first = answers[0]["next_best_action"]["decision_id"]
    r = client.post("/v1/feedback", headers=HEADERS, json={"decision_id": first, "outcome": "opened"})
    assert r.status_code == 200, r.text

    out = tmp_path / "decisions.parquet"
    result = CliRunner().invoke(
        cli, ["decisions", "export", "--out", str(out), "--store", f"sqlite:///{tmp_path / 'online.db'}"]
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    simulated = pq.read_table(served.shop / "decisions.parquet")
    for name in DECISION_COLUMNS:
        assert table.schema.field(name).type == simulated.schema.field(name).type, name
    frame = table.to_pandas()
    assert sorted(frame["decision_id"]) == sorted(a["next_best_action"]["decision_id"] for a in answers)
    assert frame.set_index("decision_id").loc[first, "opened"]
    assert not frame.set_index("decision_id").drop(index=first)["opened"].any()
    treated = frame[~frame["control"]]
    assert (treated["intended_action"] == treated["action"]).all()
    by_id = {a["next_best_action"]["decision_id"]: a["next_best_action"] for a in answers}
    for row in frame.itertuples():
        assert row.action == by_id[row.decision_id]["action"]
        assert row.propensity == pytest.approx(by_id[row.decision_id]["propensity"])
        assert row.model_version == served.version or row.model_version.isdigit()


def test_shipped_serve_config_is_the_defaults() -> None:
    shipped = ServeSettings.load(Path(__file__).parents[1] / "configs" / "serve.yaml", environ={})
    assert shipped == ServeSettings()


def test_control_customers_get_no_send_and_keep_the_intended_action(
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    with make_client(tmp_path, manager, control_share=0.99, min_uplift=-1.0) as client:
        customers = active_customers(served, 4)
        for c in customers:
            post_history(client, served, c)
            signup = {"customer_id": c, "ts": (LATER - pd.Timedelta(days=1)).isoformat()}
            client.post(
                "/v1/events",
                headers=HEADERS,
                json={"events": [{**signup, "event_type": "newsletter_signup"}]},
            )
        answers = [score(client, c, now=LATER) for c in customers]
        store = open_store(f"sqlite:///{tmp_path / 'online.db'}")
        frame = store.export_decisions().set_index("decision_id")
        store.close()
    in_control = [a for a in answers if a["next_best_action"]["control_group"]]
    assert in_control  # 99 %: all but a very unlucky draw
    for a in in_control:
        nba = a["next_best_action"]
        assert nba["action"] == "no_send"
        # The logged propensity is the marginal: control share + the rest times the policy's no_send share.
        assert 0.99 <= nba["propensity"] <= 1.0
        row = frame.loc[nba["decision_id"]]
        assert row["control"]
        assert row["intended_action"] != "no_send"  # min_uplift -1: the policy would have sent an e-mail


# ---------------------------------------------------------------------------------------------------------
# Decisions a marketer can trust: fatigue held atomically, time checked, consent in order, previews.


def signup(client: TestClient, customer: str, when: pd.Timestamp) -> None:
    event = {"customer_id": customer, "ts": when.isoformat(), "event_type": "newsletter_signup"}
    r = client.post("/v1/events", headers=HEADERS, json={"events": [event]})
    assert r.status_code == 200, r.text


def sendable_customer(client: TestClient, served: Served, when: pd.Timestamp) -> str:
    """A customer (history and a signup posted) whom the rules allow an e-mail at `when`, found by
    previews, which record nothing."""
    for customer in active_customers(served, 12):
        post_history(client, served, customer)
        signup(client, customer, LATER - pd.Timedelta(days=1))
        preview = score(client, customer, now=when, record=False)["next_best_action"]
        if preview["action"] != "no_send":
            return customer
    raise AssertionError("no active customer may get an e-mail: the test needs one")


def messages_in(store_url: str) -> pd.DataFrame:
    store = open_store(store_url)
    try:
        decisions = store.export_decisions()
    finally:
        store.close()
    return decisions[decisions["action"] != "no_send"]


def test_the_same_call_a_minute_apart_sends_one_message(
    store_url: str,
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    with make_client(tmp_path, manager, store_url, min_uplift=-1.0) as client:
        customer = sendable_customer(client, served, TEN)
        answers = [
            score(client, customer, now=TEN + pd.Timedelta(minutes=k))["next_best_action"] for k in (1, 2, 3)
        ]
    assert answers[0]["action"] != "no_send", answers[0]
    assert [a["action"] for a in answers[1:]] == ["no_send", "no_send"]
    for a in answers[1:]:
        assert ranked_blocked(a) == {"min_gap"}, a["ranked"]
    assert len(messages_in(store_url)) == 1


def test_fifty_concurrent_decisions_on_two_replicas_send_one_message(
    store_url: str,
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    with make_client(tmp_path, manager, store_url, min_uplift=-1.0) as client:
        customer = sendable_customer(client, served, TEN)
    settings = settings_for(store_url=store_url, min_uplift=-1.0)
    replicas = [Service(settings, open_store(store_url), manager) for _ in range(2)]
    barrier = threading.Barrier(50)

    def attempt(k: int) -> dict[str, Any]:
        request = CustomerRequest(customer, now=(TEN + pd.Timedelta(seconds=k)).to_pydatetime())
        barrier.wait(timeout=120)
        answer: dict[str, Any] = replicas[k % 2].score([request])[0]["next_best_action"]
        return answer

    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(attempt, range(50)))
    finally:
        for replica in replicas:
            replica.store.close()
    sent = [a for a in answers if a["action"] != "no_send"]
    assert len(sent) == 1, [a["action"] for a in answers]
    assert all(a["decision_id"] for a in answers)
    for a in answers:
        if a["action"] == "no_send":
            assert ranked_blocked(a) == {"min_gap"}, a["ranked"]
    assert len(messages_in(store_url)) == 1


def test_the_api_refuses_times_beyond_the_clock_tolerance(tmp_path: Path, manager: ModelManager) -> None:
    with make_client(tmp_path, manager, max_clock_skew_s=300.0) as client:
        clock = pd.Timestamp.now(tz="UTC")
        for wrong in (
            clock + pd.Timedelta(hours=1),
            clock - pd.Timedelta(hours=1),
            pd.Timestamp("2199-01-01T00:00:00Z"),
        ):
            body = {"customer_id": "C1", "context": {"now": wrong.isoformat()}}
            r = client.post("/v1/score", headers=HEADERS, json=body)
            assert r.status_code == 422, r.text
            detail = r.json()["detail"][0]
            assert detail["loc"] == ["body", "context", "now"], detail
            assert "300 s" in detail["msg"], detail
            assert str(clock.year) in detail["msg"], detail
        assert score(client, "C1", now=clock + pd.Timedelta(seconds=10))["customer_id"] == "C1"
        batch = {
            "customers": [
                {"customer_id": "C1", "context": {"now": clock.isoformat()}},
                {"customer_id": "C2", "context": {"now": (clock + pd.Timedelta(days=1)).isoformat()}},
            ]
        }
        r = client.post("/v1/score/batch", headers=HEADERS, json=batch)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "customers", 1, "context", "now"]
        # Events stamped beyond the clock and its tolerance: refused, all or nothing.
        ok = {
            "customer_id": "C9",
            "ts": (clock - pd.Timedelta(hours=1)).isoformat(),
            "event_type": "page_view",
        }
        future = {**ok, "ts": (clock + pd.Timedelta(hours=1)).isoformat()}
        r = client.post("/v1/events", headers=HEADERS, json={"events": [ok, future]})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["events", 1, "ts"]
        assert client.get("/v1/customers/C9", headers=HEADERS).status_code == 404
        inline = {"customer_id": "C9", "events": [{k: v for k, v in future.items() if k != "customer_id"}]}
        r = client.post("/v1/score", headers=HEADERS, json=inline)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["events", 0, "ts"]
        decision = score(client, "C1", now=clock)["next_best_action"]["decision_id"]
        late = {
            "decision_id": decision,
            "outcome": "unsubscribed",
            "ts": (clock + pd.Timedelta(days=2)).isoformat(),
        }
        r = client.post("/v1/feedback", headers=HEADERS, json=late)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "ts"]


def test_consent_in_order_an_inline_unsubscribe_blocks_and_a_newer_inline_signup_allows(
    store_url: str,
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    with make_client(tmp_path, manager, store_url, min_uplift=-1.0) as client:
        customer = sendable_customer(client, served, TEN)  # a signup is stored the day before
        quit_ = {"ts": (TEN - pd.Timedelta(hours=1)).isoformat(), "event_type": "email_unsubscribe"}
        answer = score(client, customer, now=TEN, events=[quit_])
        nba = answer["next_best_action"]
        assert nba["action"] == "no_send"
        assert ranked_blocked(nba) == {"consent"}, nba["ranked"]
        assert any("blocked: consent" in r for r in answer["reasons"]), answer["reasons"]
        # Stored unsubscription, then a newer signup inline in the request: the rules allow again.
        stored_quit = {**quit_, "customer_id": customer, "ts": (TEN - pd.Timedelta(minutes=30)).isoformat()}
        assert client.post("/v1/events", headers=HEADERS, json={"events": [stored_quit]}).status_code == 200
        assert ranked_blocked(score(client, customer, now=TEN, record=False)["next_best_action"]) == {
            "consent"
        }
        back = {"ts": (TEN - pd.Timedelta(minutes=10)).isoformat(), "event_type": "newsletter_signup"}
        again = score(client, customer, now=TEN, events=[back])["next_best_action"]
        assert "consent" not in ranked_blocked(again), again["ranked"]
        assert again["action"] != "no_send"
    assert len(messages_in(store_url)) == 1


def test_a_preview_records_nothing(
    store_url: str,
    tmp_path: Path,
    manager: ModelManager,
    served: Served,
) -> None:
    with make_client(tmp_path, manager, store_url, min_uplift=-1.0) as client:
        customer = sendable_customer(client, served, TEN)

        def snapshot() -> tuple[Any, ...]:
            store = open_store(store_url)
            try:
                return (
                    store.export_decisions().to_json(),
                    store.events([customer]).to_json(),
                    store.send_state([customer], TEN.to_pydatetime()),
                )
            finally:
                store.close()

        before = snapshot()
        inline = [{"ts": (TEN - pd.Timedelta(minutes=5)).isoformat(), "event_type": "page_view"}]
        preview = score(client, customer, now=TEN, events=inline, record=False)["next_best_action"]
        assert preview["action"] != "no_send"
        assert preview["decision_id"] is None
        body = {
            "customers": [{"customer_id": customer, "context": {"now": TEN.isoformat()}}],
            "record": False,
        }
        r = client.post("/v1/score/batch", headers=HEADERS, json=body)
        assert r.status_code == 200, r.text
        assert [x["next_best_action"]["decision_id"] for x in r.json()["results"]] == [None]
        assert snapshot() == before
        # The same call recorded does change the store.
        assert score(client, customer, now=TEN)["next_best_action"]["decision_id"]
        assert snapshot() != before


def test_a_decision_from_the_future_through_the_library_keeps_the_send_history(
    store_url: str,
    manager: ModelManager,
    served: Served,
) -> None:
    # One kept event per customer, so that the send log alone remembers what was sent.
    settings = settings_for(store_url=store_url, min_uplift=-1.0, history_len=1)
    store = open_store(store_url, max_events=1)
    service = Service(settings, store, manager)
    customer = active_customers(served, 1)[0]
    wall = datetime.now(UTC)
    history = served.events[served.events["customer_id"] == customer].reset_index(drop=True)
    store.append_events(history)
    signup_row = history.tail(1).assign(
        ts=pd.Timestamp(wall) - pd.Timedelta(days=5),
        event_type="newsletter_signup",
        channel="email",
        item_id=None,
        event_id="signup-now",
    )
    store.append_events(signup_row.reset_index(drop=True))
    try:
        # The library's `now` is free (backtests): a decision stamped in 2199.
        future = service.score([CustomerRequest(customer, now=datetime(2199, 12, 31, tzinfo=UTC))])
        assert future[0]["next_best_action"]["action"] != "no_send"
        # 64 decisions at the real time, an hour apart.
        times = [pd.Timestamp(wall) - pd.Timedelta(hours=64 - k) for k in range(64)]
        answers = [
            service.score([CustomerRequest(customer, now=t.to_pydatetime())])[0]["next_best_action"]
            for t in times
        ]
    finally:
        store.close()
    sent = [t for t, a in zip(times, answers, strict=True) if a["action"] != "no_send"]
    assert sent, "nothing was eligible: the test needs one send"
    gaps = np.diff([t.value for t in sent]) / 3.6e12
    assert (gaps >= 16).all(), gaps
    for t in sent:
        assert sum(t - pd.Timedelta(days=7) < u <= t for u in sent) <= 3
    store = open_store(store_url)
    try:
        assert store.send_state([customer], wall)[customer].sends_7d == len(sent)
    finally:
        store.close()
