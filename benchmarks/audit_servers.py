"""The decision audit's servers: a throw-away Redis, replicas of `journey serve` on one config, and the
JSON calls the audit makes to them (`benchmarks.audit_replay` drives them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KEY = "audit-key"


def journey_command() -> str:
    """The `journey` script beside this interpreter (the venv's)."""
    return str(Path(sys.executable).with_name("journey"))


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throw-away redis-server without persistence on a free local port."""
    import socket

    import redis

    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One JSON request to a local replica with the audit's key: (status, parsed answer or error text)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"X-API-Key": KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@contextmanager
def serving(config: Path, replicas: int, logs: Path) -> Iterator[list[int]]:
    """`replicas` processes of `journey serve` on one config (and so one store), ready to answer."""
    import socket

    ports, procs = [], []
    env = {**os.environ, "JOURNEY_API_KEYS": KEY}
    for _ in range(replicas):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
        out = (logs / f"serve-{ports[-1]}.log").open("wb")
        cmd = [
            journey_command(),
            "serve",
            "--port",
            str(ports[-1]),
            "--config",
            str(config),
            "--log-level",
            "warning",
        ]
        procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 300
        for port, proc in zip(ports, procs, strict=True):
            while True:
                try:
                    if call(port, "GET", "/readyz")[0] == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"journey serve on {port} did not get ready: see {logs}")
                time.sleep(0.3)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
