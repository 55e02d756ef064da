"""The HTTP surface against what attacking it found: each answer a documented 4xx naming the field, never
a 500 and never a request taken by a lax reading of it.

No model and no registry here: every request these tests send is refused (or answered) before a model
is needed, so the app runs on an online store in a temporary folder and an empty model manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from serving.app import _first_load, create_app
from serving.deps import Metrics, get_service
from serving.model import ModelManager
from serving.settings import ServeSettings
from serving.store import open_store

KEY = "http-key"
HEADERS = {"X-API-Key": KEY}
LIMIT = 4_000
NOW = "2026-04-20T12:00:00+00:00"
# Times that pydantic parses but that leave datetime's range once moved to UTC (year 0 or 10000).
OUT_OF_RANGE = ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
SKEW = 10 * 365 * 86_400.0  # the tests' times are the shop's (2026), not the machine's clock


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    store = open_store(f"sqlite:///{tmp_path / 'online.db'}", max_events=50)
    settings = ServeSettings(
        api_keys=(KEY,), reload_interval_s=0, max_body_bytes=LIMIT, max_clock_skew_s=SKEW, seed=0
    )
    app = create_app(settings, store=store, manager=ModelManager("journey-scorer", "champion"))
    # No `with`: the lifespan (which would read the registry) never runs; the given store is ready.
    yield TestClient(app, raise_server_exceptions=False)
    store.close()


def post(client: TestClient, path: str, body: Any) -> Any:
    return client.post(path, json=body, headers=HEADERS)


def event(**fields: Any) -> dict[str, Any]:
    return {"customer_id": "C1", "ts": NOW, "event_type": "page_view", **fields}


def locs(response: Any) -> list[list[Any]]:
    return [d["loc"] for d in response.json()["detail"]]


@pytest.mark.parametrize("ts", OUT_OF_RANGE)
def test_times_that_overflow_in_utc_are_422_naming_the_field(client: TestClient, ts: str) -> None:
    cases = [
        ("/v1/events", {"events": [event(ts=ts)]}, ["body", "events", 0, "ts"]),
        ("/v1/score", {"customer_id": "C1", "events": [{"ts": ts, "event_type": "page_view"}]},
         ["body", "events", 0, "ts"]),
        ("/v1/score", {"customer_id": "C1", "context": {"now": ts}}, ["body", "context", "now"]),
        ("/v1/feedback", {"decision_id": "d1", "outcome": "opened", "ts": ts}, ["body", "ts"]),
    ]  # fmt: skip
    for path, body, loc in cases:
        r = post(client, path, body)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert locs(r) == [loc], r.text
        assert "between 1970-01-01 and 2200-01-01" in r.text


def test_a_chunked_body_over_the_limit_is_413_and_one_under_it_is_read(client: TestClient) -> None:
    def chunks(body: bytes) -> Iterator[bytes]:  # no Content-Length: httpx sends it chunked
        for i in range(0, len(body), 1_000):
            yield body[i : i + 1_000]

    headers = {**HEADERS, "Content-Type": "application/json"}
    big = b'{"events": [' + b" " * (2 * LIMIT) + b"]}"
    r = client.post("/v1/events", content=chunks(big), headers=headers)
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"request body above the limit of {LIMIT:,} bytes"
    small = b'{"events": [{"customer_id": "C1", "ts": "' + NOW.encode() + b'", "event_type": "page_view"}]}'
    r = client.post("/v1/events", content=chunks(small), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 1, "duplicates": 0}


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_a_blank_id_is_422_everywhere(client: TestClient, blank: str) -> None:
    cases = [
        ("/v1/score", {"customer_id": blank}, ["body", "customer_id"]),
        ("/v1/score/batch", {"customers": [{"customer_id": blank}]}, ["body", "customers", 0, "customer_id"]),
        ("/v1/events", {"events": [event(customer_id=blank)]}, ["body", "events", 0, "customer_id"]),
        ("/v1/feedback", {"decision_id": blank, "outcome": "opened"}, ["body", "decision_id"]),
    ]
    for path, body, loc in cases:
        r = post(client, path, body)
        assert r.status_code == 422, (path, r.text)
        assert locs(r) == [loc], r.text
    assert client.get("/v1/customers/%20%20", headers=HEADERS).status_code == 422
    assert client.delete("/v1/customers/%20", headers=HEADERS).status_code == 422


def test_an_id_with_a_control_character_is_422_so_every_stored_id_has_a_path(client: TestClient) -> None:
    for bad in ["C\n1", "C\t1", "C\x7f1"]:
        r = post(client, "/v1/events", {"events": [event(customer_id=bad)]})
        assert r.status_code == 422, r.text
        assert "control characters" in r.text
    assert client.delete("/v1/customers/C%091", headers=HEADERS).status_code == 422
    # A newline no route matches: the documented 404, as for any unknown customer.
    assert client.delete("/v1/customers/C%0A1", headers=HEADERS).status_code == 404
    assert (
        "404"
        in client.get("/openapi.json").json()["paths"]["/v1/customers/{customer_id}"]["delete"]["responses"]
    )


def test_ids_are_stripped_as_the_event_store_strips_them(client: TestClient) -> None:
    assert post(client, "/v1/events", {"events": [event(customer_id=" C7 ")]}).status_code == 200
    r = client.get("/v1/customers/C7", headers=HEADERS)
    assert r.status_code == 200, r.text
    assert client.get("/v1/customers/%20C7%20", headers=HEADERS).json()["customer_id"] == "C7"


@pytest.mark.parametrize("path", ["/v1/customers/shop/42", "/v1/customers/shop%2F42"])
def test_an_id_with_a_slash_can_be_read_and_erased(client: TestClient, path: str) -> None:
    r = post(client, "/v1/events", {"events": [event(customer_id="shop/42"), event(customer_id="shop")]})
    assert r.json()["accepted"] == 2
    seen = client.get(path, headers=HEADERS)
    assert seen.status_code == 200, seen.text
    assert seen.json()["customer_id"] == "shop/42"
    assert [e["customer_id"] for e in seen.json()["events"]] == ["shop/42"]
    erased = client.delete(path, headers=HEADERS)
    assert erased.json() == {"customer_id": "shop/42", "erased": 1}
    assert client.get(path, headers=HEADERS).status_code == 404
    assert client.get("/v1/customers/shop", headers=HEADERS).status_code == 200  # its neighbour stays


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"customer_id": "C1", "context": {"now": 0}}, ["body", "context", "now"]),
        ({"customer_id": "C1", "context": {"now": 1776686400.5}}, ["body", "context", "now"]),
        ({"customer_id": "C1", "context": {"now": "1776686400"}}, ["body", "context", "now"]),
        ({"customer_id": "C1", "context": {"n_items": "5"}}, ["body", "context", "n_items"]),
        ({"customer_id": "C1", "context": {"n_items": True}}, ["body", "context", "n_items"]),
        ({"customer_id": "C1", "context": {"n_items": 5.0}}, ["body", "context", "n_items"]),
        ({"customer_id": "C1", "record": "false"}, ["body", "record"]),
        ({"customer_id": "C1", "record": 0}, ["body", "record"]),
        ({"customer_id": 42}, ["body", "customer_id"]),
        (
            {"customer_id": "C1", "events": [{"ts": 1776686400, "event_type": "page_view"}]},
            ["body", "events", 0, "ts"],
        ),
        (
            {
                "customer_id": "C1",
                "events": [{"ts": NOW, "event_type": "purchase", "item_id": "I1", "value": "12.5"}],
            },
            ["body", "events", 0, "value"],
        ),
    ],
)
def test_scoring_requests_are_strict_about_types(client: TestClient, body: Any, loc: list[Any]) -> None:
    r = post(client, "/v1/score", body)
    assert r.status_code == 422, r.text
    assert locs(r) == [loc], r.text
    if loc[-1] in ("now", "ts"):  # refused as a time that is not ISO text, not by the clock check
        assert "ISO 8601" in r.text, r.text


def test_feedback_and_events_are_strict_about_types(client: TestClient) -> None:
    r = post(client, "/v1/feedback", {"decision_id": "d1", "outcome": "purchased", "revenue": "9.5"})
    assert (r.status_code, locs(r)) == (422, [["body", "revenue"]]), r.text
    r = post(client, "/v1/feedback", {"decision_id": "d1", "outcome": "opened", "ts": 0})
    assert (r.status_code, locs(r)) == (422, [["body", "ts"]]), r.text
    r = post(client, "/v1/events", {"events": [event(quantity=True)]})
    assert (r.status_code, locs(r)) == (422, [["body", "events", 0, "quantity"]]), r.text
    r = post(client, "/v1/score/batch", {"customers": [{"customer_id": "C1"}], "record": "no"})
    assert (r.status_code, locs(r)) == (422, [["body", "record"]]), r.text


@pytest.mark.parametrize("path", ["/v1/score", "/v1/score/batch", "/v1/events", "/v1/feedback"])
def test_malformed_json_is_the_documented_400(client: TestClient, path: str) -> None:
    headers = {**HEADERS, "Content-Type": "application/json"}
    r = client.post(path, content=b'{"customer_id": "C1",', headers=headers)
    assert r.status_code == 400, r.text
    assert r.json() == {"detail": "the body is not valid JSON"}
    documented = client.get("/openapi.json").json()["paths"][path]["post"]["responses"]
    assert "400" in documented


def test_method_not_allowed_lists_every_method_of_the_path(client: TestClient) -> None:
    r = client.options("/v1/customers/C1", headers=HEADERS)
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET"}
    r = client.put("/v1/customers/shop/42", headers=HEADERS)
    assert set(r.headers["allow"].split(", ")) == {"DELETE", "GET"}
    assert client.get("/v1/score", headers=HEADERS).headers["allow"] == "POST"


def test_routes_take_their_dependencies_from_app_state_and_tests_may_override_them(
    client: TestClient,
) -> None:
    class Erasing:
        def erase(self, customer_id: str) -> int:
            return len(customer_id)

    client.app.dependency_overrides[get_service] = Erasing  # type: ignore[attr-defined]
    assert client.delete("/v1/customers/abc", headers=HEADERS).json() == {"customer_id": "abc", "erased": 3}
    assert client.delete("/v1/customers/abc").status_code == 401  # the router's key check still holds


def test_scoring_without_a_model_is_503_and_readyz_says_not_ready(client: TestClient) -> None:
    r = post(client, "/v1/score", {"customer_id": "C1"})
    assert r.status_code == 503, r.text
    assert r.json()["detail"].startswith("no model loaded")
    assert client.get("/readyz").status_code == 503
    assert client.get("/healthz").json() == {"status": "ok", "model_version": None, "detail": None}


class _NoRegistry(ModelManager):
    def reload(self) -> dict[str, Any]:
        return {"changed": False, "version": None, "previous": None, "error": "registry unreachable"}


@pytest.mark.parametrize(
    ("interval", "said"),
    [(0.0, "periodic reloads are off (reload_interval_s 0)"), (30.0, "retried every 30 s")],
)
def test_the_start_up_log_says_whether_a_missing_model_is_retried(
    caplog: pytest.LogCaptureFixture, interval: float, said: str
) -> None:
    settings = ServeSettings(api_keys=(KEY,), reload_interval_s=interval)
    with caplog.at_level(logging.ERROR, logger="serving.app"):
        _first_load(_NoRegistry("journey-scorer", "champion"), settings, Metrics.create())
    [record] = caplog.records
    assert said in record.getMessage()
    assert "every 0 s" not in record.getMessage()
    assert "registry unreachable" in record.getMessage()
