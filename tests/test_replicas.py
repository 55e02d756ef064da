"""Two `journey serve` processes on one Redis: replicas share the online store, so the frequency cap, the
minimum gap and the cooldowns hold between them under concurrent requests for the same customer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from features.schema import MESSAGE_ACTIONS
from tests.servers import free_port
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "replica-key"
NOW = pd.Timestamp("2026-06-01T12:00:00Z")  # after the shop's history: no send of its own in the week
# Greedy, no control group, and any eligible e-mail beats sending nothing: only the rules stop a send.
GREEDY = {"epsilon": 0.0, "control_share": 0.0, "min_uplift": -1.0, "reload_interval_s": 0}
# The caps alone (no gap, no cooldowns), scored at the shop's own time (months before the machine's
# clock, so the clock tolerance is opened).
CAPS_ONLY = {
    **GREEDY,
    "max_clock_skew_s": 10 * 365 * 86_400,
    "rules": {"min_gap_hours": 0, "cooldown_days": dict.fromkeys(MESSAGE_ACTIONS, 0)},
}


def _call(port: int, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def replicas(
    served: Served,
    redis_url: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[list[int]]:
    """Two replicas on one Redis namespace, with the settings the test passes (indirect parameter)."""
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump(getattr(request, "param", GREEDY)))
    store = f"{redis_url}?namespace=replicas-{uuid.uuid4().hex[:8]}:"
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri, "JOURNEY_API_KEYS": KEY}
    journey = str(Path(sys.executable).with_name("journey"))
    ports = [free_port(), free_port()]
    procs = []
    for port in ports:
        log = (tmp_path / f"serve-{port}.log").open("wb")
        cmd = [
            journey,
            "serve",
            "--port",
            str(port),
            "--store",
            store,
            "--config",
            str(config),
            "--log-level",
            "warning",
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 120
        for port, proc in zip(ports, procs, strict=True):
            while True:
                try:
                    if _call(port, "GET", "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (tmp_path / f"serve-{port}.log").read_text()[-3000:]
                    pytest.fail(f"journey serve on port {port} did not get ready: {log_text}")
                time.sleep(0.2)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.parametrize("replicas", [CAPS_ONLY], indirect=True)
def test_two_replicas_on_one_redis_hold_the_frequency_cap(replicas: list[int], served: Served) -> None:
    customer = served.events["customer_id"].value_counts().index[0]
    history = served.events[served.events["customer_id"] == customer].tail(40)
    rows = [
        {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
        for r in history.assign(ts=history["ts"].astype(str)).to_dict(orient="records")
    ]
    rows.append({"customer_id": customer, "ts": (NOW - pd.Timedelta(days=1)).isoformat(),
                 "event_type": "newsletter_signup"})  # fmt: skip
    status, answer = _call(replicas[0], "POST", "/v1/events", {"events": rows})
    assert status == 200, answer

    body = {"customer_id": customer, "context": {"now": NOW.isoformat()}}
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda i: _call(replicas[i % 2], "POST", "/v1/score", body), range(12)))
    assert all(status == 200 for status, _ in results), results
    actions = [answer["next_best_action"]["action"] for _, answer in results]
    sent = [a for a in actions if a != "no_send"]
    assert len(sent) == 3, actions  # the cap (3 in 7 days) across both replicas, not per replica
    for _, answer in results:
        if answer["next_best_action"]["action"] == "no_send":
            blocked = {
                r["blocked_by"] for r in answer["next_best_action"]["ranked"] if r["action"] != "no_send"
            }
            assert blocked & {"frequency_cap", "frequency_cap_7d"}, blocked
    status, seen = _call(replicas[1], "GET", f"/v1/customers/{customer}")
    assert status == 200
    assert len(seen["decisions"]) == 12


@pytest.mark.parametrize("replicas", [GREEDY], indirect=True)
def test_fifty_requests_on_two_replicas_send_one_message(replicas: list[int], served: Served) -> None:
    """The default rules (16 hours between messages, a cooldown per action) at the server's own clock: a
    burst of 50 requests for one customer, split between the replicas, sends at most one message."""
    clock = pd.Timestamp.now(tz="UTC")
    counts = served.events["customer_id"].value_counts()
    customer = counts.index[1]
    history = served.events[served.events["customer_id"] == customer].tail(40)
    rows = [
        {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and pd.isna(v))}
        for r in history.assign(ts=history["ts"].astype(str)).to_dict(orient="records")
    ]
    rows.append({"customer_id": customer, "ts": (clock - pd.Timedelta(days=1)).isoformat(),
                 "event_type": "newsletter_signup"})  # fmt: skip
    status, answer = _call(replicas[0], "POST", "/v1/events", {"events": rows})
    assert status == 200, answer
    status, preview = _call(replicas[1], "POST", "/v1/score", {"customer_id": customer, "record": False})
    assert status == 200, preview
    assert preview["next_best_action"]["action"] != "no_send", "the test needs a customer who may get one"

    body = {"customer_id": customer}  # no context.now: the server's clock
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda i: _call(replicas[i % 2], "POST", "/v1/score", body), range(50)))
    assert all(status == 200 for status, _ in results), results
    actions = [answer["next_best_action"]["action"] for _, answer in results]
    assert sum(a != "no_send" for a in actions) == 1, actions
    for _, answer in results:
        if answer["next_best_action"]["action"] == "no_send":
            blocked = {
                r["blocked_by"] for r in answer["next_best_action"]["ranked"] if r["action"] != "no_send"
            }
            assert blocked == {"min_gap"}, blocked
    status, seen = _call(replicas[0], "GET", f"/v1/customers/{customer}")
    assert status == 200
    assert len(seen["decisions"]) == 20  # the last 20 of the 50, all recorded
    assert (
        sum(e["event_type"] == "email_sent" and e["event_id"].startswith("decision:") for e in seen["events"])
        == 1
    )
