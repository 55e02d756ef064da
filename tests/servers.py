"""Real servers for integration tests: a Redis server, and an MLflow tracking server backed by a throwaway
PostgreSQL cluster.

The registry is the way a team runs it (`mlflow server` on a PostgreSQL store, artifacts proxied by the
server), started from Debian's PostgreSQL binaries on 127.0.0.1. `tests/conftest.py` registers this module
as a plugin: a test asks for the session fixtures `redis_url` and `mlflow_server` by name.

PostgreSQL refuses to run as root. When the tests run as root, the cluster lives in a fresh directory under
the system temp folder (pytest's root-owned temp folders are closed to other users) owned by the
`postgres` user, or `nobody` where there is none, and `initdb`, `pg_ctl` and `postgres` run as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HOST = "127.0.0.1"
DATABASE = "mlflow"
SUPERUSER = "mlflow"
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MlflowServer:
    """A running tracking server.

    Attributes:
        tracking_uri: what clients set as `MLFLOW_TRACKING_URI`, e.g. `http://127.0.0.1:5123`.
        backend_store_uri: the database of runs and registered models (SQLAlchemy URL, driver named).
        artifacts: the folder behind the server's artifact proxy (`--artifacts-destination`).
    """

    tracking_uri: str
    backend_store_uri: str
    artifacts: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def postgres_bindir() -> Path:
    """The folder of PostgreSQL's server binaries (`initdb`, `pg_ctl`, `postgres`).

    `pg_config --bindir` where it names a folder holding `initdb` (libpq-dev's `pg_config` can point at a
    folder without the server), else the newest `/usr/lib/postgresql/<version>/bin`, else `initdb` on PATH.

    Raises:
        RuntimeError: no PostgreSQL server is installed.
    """
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        done = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        bindir = Path(done.stdout.strip())
        if done.returncode == 0 and (bindir / "initdb").is_file():
            return bindir

    def version(bindir: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", bindir.parent.name))

    candidates = sorted((p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb")), key=version)
    if candidates:
        return candidates[-1]
    initdb = shutil.which("initdb")
    if initdb is not None:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries not found (no initdb from pg_config, /usr/lib/postgresql/*/bin or PATH); "
        "install Debian's `postgresql` package"
    )


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run PostgreSQL as when we are root (it refuses to run as root); None when we are not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and no `postgres` or `nobody` user to run PostgreSQL as")


def _run(
    args: list[str], user: pwd.struct_passwd | None, cwd: Path, timeout: float = START_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    """Runs a PostgreSQL tool, as `user` when given; raises with its output when it fails."""
    done = subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        user=user.pw_uid if user else None,
        group=user.pw_gid if user else None,
        extra_groups=[] if user else None,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def postgres_database(tmp_dir: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with one empty database; yields its libpq URL.

    The cluster trusts local connections and skips fsync: it is for tests only. It is stopped (`pg_ctl
    stop -m fast`, then SIGKILL of the postmaster) and, when it had to live outside `tmp_dir`, removed.

    Raises:
        RuntimeError: PostgreSQL is missing or does not start (with its log).
    """
    bindir = postgres_bindir()
    user = _unprivileged_user()
    if user is None:
        root = tmp_dir / "postgres"
        root.mkdir(parents=True)
    else:
        root = Path(tempfile.mkdtemp(prefix="journey-pg-"))
        os.chown(root, user.pw_uid, user.pw_gid)
    data, log = root / "data", root / "postgres.log"
    port = free_port()
    # Trust on 127.0.0.1 and no fsync: a throwaway cluster for tests.
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--no-sync"]
    _run([*initdb, "-E", "UTF8", "--locale=C"], user, cwd=root)
    options = [f"-p {port}", f"-k {shlex.quote(str(root))}", f"-c listen_addresses={HOST}"]
    options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
    pg_ctl = str(bindir / "pg_ctl")
    try:
        try:
            start = [pg_ctl, "-D", str(data), "-l", str(log), "-w", "-t", str(int(START_TIMEOUT_S))]
            _run([*start, "-o", " ".join(options), "start"], user, cwd=root, timeout=START_TIMEOUT_S + 10)
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"PostgreSQL did not start: {e}\nlog tail:\n{_tail(log)}") from e
        _run(
            [str(bindir / "createdb"), "-h", HOST, "-p", str(port), "-U", SUPERUSER, DATABASE], user, cwd=root
        )
        yield f"postgresql://{SUPERUSER}@{HOST}:{port}/{DATABASE}"
    finally:
        _stop_postgres(pg_ctl, data, user, root)
        if user is not None:
            shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(pg_ctl: str, data: Path, user: pwd.struct_passwd | None, cwd: Path) -> None:
    pid_file = data / "postmaster.pid"
    if not pid_file.is_file():
        return
    try:
        _run([pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "30", "stop"], user, cwd=cwd, timeout=40)
    except (RuntimeError, subprocess.TimeoutExpired):
        # The postmaster's pid is the first line of postmaster.pid; it was started for this cluster only.
        with contextlib.suppress(OSError, ValueError, IndexError):
            os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


def _mlflow_executable() -> str:
    # The venv's own, beside its python (not resolved: the python may link to a base interpreter).
    beside = Path(sys.executable).with_name("mlflow")
    if beside.is_file():
        return str(beside)
    found = shutil.which("mlflow")
    if found is None:
        raise RuntimeError(f"no `mlflow` executable beside {sys.executable} or on PATH")
    return found


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextlib.contextmanager
def mlflow_tracking_server(backend_store_uri: str, tmp_dir: Path) -> Iterator[MlflowServer]:
    """`mlflow server` on 127.0.0.1 over `backend_store_uri`, serving artifacts from `tmp_dir/artifacts`.

    Waits until `GET /health` answers; stops the server's whole process group (SIGTERM, then SIGKILL).

    Raises:
        RuntimeError: the server exits or does not answer within `START_TIMEOUT_S` (with its log tail).
    """
    artifacts, log = tmp_dir / "artifacts", tmp_dir / "mlflow-server.log"
    artifacts.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [_mlflow_executable(), "server", "--backend-store-uri", backend_store_uri]
    args += ["--artifacts-destination", str(artifacts), "--serve-artifacts"]
    args += ["--host", HOST, "--port", str(port), "--workers", "1"]
    # The server must not inherit a client's store or experiment; one BLAS thread on a shared machine.
    env = {k: v for k, v in os.environ.items() if k not in {"MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID"}}
    env["OMP_NUM_THREADS"] = "1"
    url = f"http://{HOST}:{port}"
    with log.open("w") as out:
        # Its own session: uvicorn's workers are its children and are stopped with it.
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_dir, start_new_session=True
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(url):
            if process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {process.returncode}:\n{shlex.join(args)}\n{_tail(log)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server did not answer {url}/health in {START_TIMEOUT_S:.0f} s:\n{_tail(log)}"
                )
            time.sleep(0.5)
        yield MlflowServer(tracking_uri=url, backend_store_uri=backend_store_uri, artifacts=artifacts)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Stops a process started in a session of its own, and its whole group (SIGTERM, then SIGKILL)."""
    # The whole group, even when the leader has exited: a worker could outlive it.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@contextlib.contextmanager
def postgres_mlflow_server(tmp_dir: Path) -> Iterator[MlflowServer]:
    """A PostgreSQL cluster and an `mlflow server` on it, both in `tmp_dir`, stopped at exit."""
    with postgres_database(tmp_dir) as database:
        # The driver named: SQLAlchemy's default for `postgresql://` is psycopg2 before 2.1, psycopg after.
        backend = database.replace("postgresql://", "postgresql+psycopg://", 1)
        with mlflow_tracking_server(backend, tmp_dir) as server:
            yield server


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One PostgreSQL-backed MLflow server for the whole session; a failure to start fails the test."""
    with postgres_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throw-away redis-server on a free local port, without persistence, for the whole session: each
    test keeps to a namespace of its own (`?namespace=...` in the store URL)."""
    import redis  # here, not at the top: every pytest run imports this plugin

    binary = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.fail(
            "redis-server not found: the Redis store tests need a real server "
            "(install the Debian package redis-server, as .ci/run does)"
        )
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    log = workdir / "redis.log"
    with log.open("wb") as out:
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
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start on port {port}: {log.read_text()[-2000:]}")
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
