"""The servers under load: the command lines of `journey serve` and `mlflow models serve`, starting and
stopping them (each in its own session), whether `journey serve` takes `--workers`, and waiting until a
server's processes are idle (their CPU: `benchmarks._harness`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from benchmarks._harness import prioritised, tree_cpu_seconds
from benchmarks.load_protocol import API_KEY, HOST

# The requests replay the simulated shop at its own (past) times: a benchmark's clock, not a client's.
CLOCK_SKEW_S = 3_153_600_000
RELOAD_INTERVAL_S = 86_400


def journey_serve_command(
    bin_dir: Path, port: int, store_url: str, workers: int, torch_threads: int, workers_option: bool
) -> list[str]:
    """`journey serve` on HOST:port over `store_url`; `--workers N` only where the CLI has the option."""
    command = [str(bin_dir / "journey"), "serve", "--host", HOST, "--port", str(port), "--store", store_url]
    if workers_option:
        command += ["--workers", str(workers)]
    return [
        *command,
        # No reload during the run (0, reloads on request only, needs one worker).
        "--set",
        f"reload_interval_s={RELOAD_INTERVAL_S}",
        "--set",
        f"torch_threads={torch_threads}",
        "--set",
        f"max_clock_skew_s={CLOCK_SKEW_S}",
        "--log-level",
        "warning",
    ]


def mlflow_serve_command(bin_dir: Path, port: int, model_uri: str) -> list[str]:
    """`mlflow models serve` of `model_uri` in this environment (its workers and threads: environment)."""
    return [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-p",
        str(port),
        "--host",
        HOST,
    ]


def mlflow_env(env: dict[str, str], workers: int, torch_threads: int) -> dict[str, str]:
    """MLflow's server uses every core unless told: its workers and intra-op threads, as for journey."""
    return {**env, "MLFLOW_MODELS_WORKERS": str(workers), "OMP_NUM_THREADS": str(torch_threads)}


def has_option(help_text: str, option: str) -> bool:
    """Whether a command's `--help` text lists `option` (a whole option name, not a prefix of another)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def serve_help(bin_dir: Path, env: dict[str, str]) -> str:
    """`journey serve --help`, wide and without colours (what the options are in this checkout)."""
    done = subprocess.run(
        [str(bin_dir / "journey"), "serve", "--help"],
        env={**env, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return done.stdout + done.stderr


def usable_cores() -> int:
    """The cores this process may run on (what `journey serve` divides among its workers)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def failure_line(output: str) -> str:
    """The line of a failed command's output that says why: the last `...Error: ...` or `error: ...` line
    (with the wrapped lines after it, as rich prints them), else the last non-empty line."""
    lines = [line.strip(" │\t") for line in output.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("╭", "╰"))]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^(\w+(Error|Exception)|error):", lines[i]):
            return " ".join(lines[i:])
    return lines[-1] if lines else "no output"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def http_status(url: str, timeout: float = 2.0) -> int:
    """The status of GET `url`; 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def post_json(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json", "X-API-Key": API_KEY}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


@contextlib.contextmanager
def running(
    command: list[str],
    env: dict[str, str],
    ready_url: str,
    log_path: Path,
    nice: int = 0,
    timeout_s: float = 300.0,
    ready_streak: int = 1,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts a server in its own process group, waits until `ready_url` answers 200 `ready_streak` times
    in a row (each a new connection, so that with several workers more than one has answered) and its
    processes are idle (every worker done loading), stops the whole group after."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=prioritised(nice),
        )
        try:
            deadline = time.monotonic() + timeout_s
            streak = 0
            while streak < ready_streak:
                streak = streak + 1 if http_status(ready_url) == 200 else 0
                if proc.poll() is not None:
                    reason = failure_line(log_path.read_text(errors="replace"))
                    raise RuntimeError(f"exited ({proc.returncode}): {reason} (log: {log_path})")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{shlex.join(command)} not ready in {timeout_s:.0f} s; see {log_path}"
                    )
                time.sleep(0.1 if streak else 0.5)
            wait_idle(proc.pid)
            yield proc
        finally:
            # The group is the one this process started (uvicorn's workers and mlflow's uvicorn are
            # children of the command).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def wait_idle(pid: int, max_wait_s: float = 180.0, below_cores: float = 0.05) -> float:
    """Waits until the server's processes are idle (its backlog from an earlier run answered, or its
    workers done starting); returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = tree_cpu_seconds(pid)
        time.sleep(0.5)
        if (tree_cpu_seconds(pid) - before) / 0.5 < below_cores:
            break
    return round(time.monotonic() - started, 1)


def check_alive(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Raises with the end of the server's log when it has exited."""
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"the server exited with code {proc.returncode} during the run:\n{tail}")


def fresh_copy(seed: Path, target: Path) -> str:
    """A fresh copy of the prepared SQLite store (its WAL files removed); its URL."""
    import shutil

    for suffix in ("", "-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(seed, target)
    return f"sqlite:///{target}"
