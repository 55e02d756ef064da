"""The API behind a real uvicorn: `journey serve --workers 2` on one SQLite store, and a client that hangs
up before its answer (nothing may be recorded for it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import uvicorn
import yaml
from fastapi import FastAPI

from predictor.registry import CHAMPION, MODEL_NAME
from serving.app import create_app
from serving.model import ModelManager
from serving.settings import ServeSettings
from serving.store import SQLiteStore, open_store
from tests.servers import HOST, free_port, stop_group
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

KEY = "servers-key"
START_TIMEOUT_S = 180.0


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{HOST}:{port}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw = response.read()
            return response.status, json.loads(raw) if path != "/metrics" else raw.decode()
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@contextlib.contextmanager
def journey_serve(args: Sequence[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`journey serve ARGS` in a session of its own, stopped with its workers at exit."""
    journey = str(Path(sys.executable).with_name("journey"))
    with log.open("wb") as out:
        process = subprocess.Popen(
            [journey, "serve", *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield process
    finally:
        stop_group(process)


def test_two_workers_serve_one_sqlite_store_with_the_commands_settings(
    served: Served,
    tmp_path: Path,
) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"reload_interval_s": 30, "epsilon": 0.0, "control_share": 0.0}))
    db = tmp_path / "online.db"
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.tracking_uri, "JOURNEY_API_KEYS": KEY}
    env.pop("JOURNEY_TORCH_THREADS", None)
    args = ["--port", str(port), "--workers", "2", "--store", f"sqlite:///{db}", "--config", str(config)]
    with journey_serve([*args, "--set", "max_batch=3"], env, log) as process:
        deadline = time.monotonic() + START_TIMEOUT_S
        while log.read_text().count("Application startup complete") < 2:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"journey serve --workers 2 did not start:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        text = log.read_text()
        assert "2 worker(s), 1 torch thread(s) each" in text or os.cpu_count() != 2, text
        workers = set(re.findall(r"Started server process \[(\d+)\]", text))
        assert len(workers) == 2, text
        ready = {"status": "ok", "model_version": served.version, "detail": None}
        assert call(port, "GET", "/readyz") == (200, ready)

        customers = [f"W{i:03d}" for i in range(12)]
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda c: call(port, "POST", "/v1/score", {"customer_id": c}), customers))
        assert all(status == 200 for status, _ in answers), answers
        decisions = {a["customer_id"]: a["next_best_action"]["decision_id"] for _, a in answers}
        for customer in customers:  # written by one worker, read by whichever takes the request
            status, seen = call(port, "GET", f"/v1/customers/{customer}")
            assert status == 200, seen
            assert [d["decision_id"] for d in seen["decisions"]] == [decisions[customer]]
        for _ in range(6):  # the --set override reached every worker
            status, refused = call(port, "POST", "/v1/score/batch", {"customers": [{"customer_id": "x"}] * 4})
            assert (status, "limit of 3" in refused["detail"]) == (413, True), refused
    store = open_store(f"sqlite:///{db}")
    try:
        assert sorted(store.export_decisions()["decision_id"]) == sorted(decisions.values())
    finally:
        store.close()


class SlowReads(SQLiteStore):
    """Reads events slowly, so that a client's hang-up lands while its request is being scored."""

    def events(self, customer_ids: Sequence[str]) -> pd.DataFrame:
        time.sleep(0.5)
        return super().events(customer_ids)


@contextlib.contextmanager
def uvicorn_thread(app: FastAPI) -> Iterator[int]:
    """`app` behind a real uvicorn on a free port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped before it started"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def test_a_request_the_client_abandoned_records_nothing(
    served: Served,
    tmp_path: Path,
) -> None:
    manager = ModelManager(MODEL_NAME, CHAMPION)
    assert manager.reload()["error"] is None
    store = SlowReads(tmp_path / "online.db")
    settings = ServeSettings(api_keys=(KEY,), reload_interval_s=0, torch_threads=1, seed=0)
    try:
        with uvicorn_thread(create_app(settings, store=store, manager=manager)) as port:
            status, answer = call(port, "POST", "/v1/score", {"customer_id": "kept"})
            assert status == 200, answer
            assert store.decision(answer["next_best_action"]["decision_id"]) is not None

            body = json.dumps({"customer_id": "gone"}).encode()
            head = (
                f"POST /v1/score HTTP/1.1\r\nHost: {HOST}\r\nX-API-Key: {KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            with socket.create_connection((HOST, port), timeout=10) as client:
                client.sendall(head.encode() + body)
            # Closed before the answer: the server is still reading the customer's events.
            abandoned = 'route="/v1/score",status="499"'
            deadline = time.monotonic() + 30
            while abandoned not in call(port, "GET", "/metrics")[1]:
                assert time.monotonic() < deadline, "the abandoned request was not answered 499"
                time.sleep(0.1)
            assert store.decisions_of("gone") == []
            assert store.events(["gone"]).empty
            metrics = call(port, "GET", "/metrics")[1]
            decided = re.findall(r"^journey_decisions_total\{[^}]*\} (\S+)$", metrics, flags=re.M)
            assert sum(float(n) for n in decided) == 1.0, metrics  # "kept" alone
    finally:
        store.close()
