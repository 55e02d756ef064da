"""The scoring service against a small trained model in a real registry (MLflow on SQLite) and a real
online store: what an e-mail platform relies on, route by route."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import replace
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
from features.schema import STAGES
from serving.app import create_app
from serving.model import ModelManager, ModelRefused, load_version
from serving.scoring import score_customers
from serving.settings import ServeSettings
from serving.store import open_store
from tests.serving_env import Served, served  # noqa: F401
from training.registry import CHAMPION, MODEL_NAME

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "test-key"
NOW = pd.Timestamp("2026-04-20T12:00:00Z")
HEADERS = {"X-API-Key": KEY}
# A month after the history posted: no e-mail of the shop's own within any cooldown or cap window.
LATER = NOW + pd.Timedelta(days=30)


def settings_for(**overrides: Any) -> ServeSettings:
    base = ServeSettings(
        api_keys=(KEY,),
        reload_interval_s=0,
        exploration="epsilon",
        epsilon=0.0,
        control_share=0.0,
        seed=0,
    )
    return replace(base, **overrides)


@pytest.fixture(scope="module")
def manager(served: Served) -> ModelManager:  # noqa: F811
    m = ModelManager(MODEL_NAME, CHAMPION)
    m.reload()
    assert m.current is not None
    return m


def make_client(tmp_path: Path, manager: ModelManager, **overrides: Any) -> TestClient:
    settings = settings_for(store_url=f"sqlite:///{tmp_path / 'online.db'}", **overrides)
    return TestClient(create_app(settings, manager=manager))


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


def post_history(client: TestClient, served: Served, customer: str) -> pd.DataFrame:  # noqa: F811
    events = served.events[(served.events["customer_id"] == customer) & (served.events["ts"] < NOW)]
    rows = event_rows(events)
    for lo in range(0, len(rows), 500):
        r = client.post("/v1/events", json={"events": rows[lo : lo + 500]}, headers=HEADERS)
        assert r.status_code == 200, r.text
    return events


def active_customers(served: Served, n: int) -> list[str]:  # noqa: F811
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
    served: Served,  # noqa: F811
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
    served: Served,  # noqa: F811
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
    served: Served,  # noqa: F811
) -> None:
    # Send whenever something is eligible (min_uplift -1), so the cap is what stops the fourth e-mail.
    with make_client(tmp_path, manager, min_uplift=-1.0) as client:
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
    served: Served,  # noqa: F811
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


def test_batch_scoring_matches_single_scoring(client: TestClient, served: Served) -> None:  # noqa: F811
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
    served: Served,  # noqa: F811
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
    stored = store.events(customers)
    scored = score_customers(
        model, stored, np.array(customers, dtype=object), [cutoff.to_pydatetime()] * len(customers), 5
    )
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
    served: Served,  # noqa: F811
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


def _broken_copy(served: Served) -> Any:  # noqa: F811
    import copy

    broken = copy.deepcopy(served.scorer)
    with torch.no_grad():
        broken.model_.stage_head.weight.fill_(float("nan"))
    return broken


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
    served: Served,  # noqa: F811
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
    served: Served,  # noqa: F811
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
