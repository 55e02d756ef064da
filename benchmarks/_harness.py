"""What every benchmark shares: the machine it ran on, a quiet CPU before measuring, the CPU, wall time
and memory of a measured process, the JSON results, the Markdown sections of BENCHMARKS.md and the
options every command line has.

Benchmarks run from the repository root as modules, `.venv/bin/python -m benchmarks.NAME`; a benchmark
that measures a fresh process starts it the same way (`module_command`, in `REPO`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PYTHON = ".venv/bin/python"

# ---------------------------------------------------------------------------------------------------------
# The machine


def cpu_model() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def package_version(name: str) -> str:
    """The installed version of a distribution, without importing it; "absent" when not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def machine_info(packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers were measured on: platform, processor, cores, memory, Python and the versions of
    `packages` (the libraries on the measured path)."""
    return {
        "platform": platform.platform(),
        "processor": cpu_model(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
    }


def load_average() -> float:
    """The one-minute load average (other jobs share the machine; reported beside the figures)."""
    return os.getloadavg()[0]


# ---------------------------------------------------------------------------------------------------------
# A quiet machine, and the CPU and memory of processes


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of the machine have used since boot (idle and I/O wait left out)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children and their waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process and its live descendants (a server and its workers)."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in members:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """Resident bytes of a process and of it with all its descendants (vanished processes count 0)."""
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    sizes = [0] * len(members)
    for i, p in enumerate(members):
        with contextlib.suppress(psutil.NoSuchProcess):
            sizes[i] = p.memory_info().rss
    return sizes[0], sum(sizes)


def wait_for_quiet(max_wait_s: float, threshold: float, pause_s: float = 4.0) -> dict[str, float]:
    """Waits (up to `max_wait_s`) until the machine's CPU is less busy than `threshold` (share of all
    cores, measured over a second), looking again every `pause_s` seconds.

    Timings on a shared 2-core machine mean little while something else runs; the load seen before the
    run is recorded beside it either way.

    Returns:
        waited_s, and load_before: the last share seen.
    """
    started = time.perf_counter()
    load = psutil.cpu_percent(interval=1.0) / 100
    while load > threshold and time.perf_counter() - started < max_wait_s:
        time.sleep(pause_s)
        load = psutil.cpu_percent(interval=1.0) / 100
    return {"waited_s": round(time.perf_counter() - started, 1), "load_before": round(load, 3)}


def prioritised(nice: int) -> Callable[[], None] | None:
    """What a child runs before it starts (after `start_new_session` made it its own session): niceness
    `nice` for it and its session's autogroup (Linux shares the CPU between sessions first, so plain
    `nice` is not enough against other sessions' work). None when `nice` is 0."""
    if not nice:
        return None

    def run() -> None:
        os.nice(nice)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))

    return run


def module_command(name: str, *args: str) -> list[str]:
    """The command line that runs `benchmarks.NAME` in a fresh interpreter (start it in `REPO`)."""
    return [sys.executable, "-m", f"benchmarks.{name}", *args]


def measure(command: list[str], poll_s: float = 0.02, nice: int = 0) -> dict[str, Any]:
    """Runs a command in `REPO`, polling the resident memory of its process tree; returns wall time and
    peaks.

    Also returns the share of the machine's CPU that other processes used meanwhile (`other_cpu_share`:
    busy CPU seconds of the whole machine minus the command's own, over wall time times cores), and the
    command's own report (JSON on the last line of its stdout) under `result`. A non-zero `nice` runs
    the command in its own session at that niceness (negative values need root): on a shared machine it
    keeps other processes from taking the cores in the middle of a run.
    """
    busy0, own0 = busy_cpu_seconds(), children_cpu_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=err,
            text=True,
            cwd=REPO,
            start_new_session=bool(nice),
            preexec_fn=prioritised(nice),
        )
        watched = psutil.Process(proc.pid)
        peak_root = peak = 0
        while proc.poll() is None:
            root, tree = tree_rss(watched)
            peak_root, peak = max(peak_root, root), max(peak, tree)
            time.sleep(poll_s)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    own = children_cpu_seconds() - own0
    other = max(0.0, busy_cpu_seconds() - busy0 - own)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n{stderr[-4000:]}")
    lines = stdout.strip().splitlines()
    return {
        "process_seconds": round(wall, 3),
        "peak_mb": round(peak / 2**20, 1),
        "peak_main_process_mb": round(peak_root / 2**20, 1),
        "cpu_seconds": round(own, 2),
        "other_cpu_share": round(other / (wall * (psutil.cpu_count() or 1)), 3),
        "result": json.loads(lines[-1]),
    }


# ---------------------------------------------------------------------------------------------------------
# Results: the command that made them, the JSON file, the Markdown section


def command_line(name: str, argv: Sequence[str]) -> str:
    """How to run `benchmarks.NAME` again with these arguments, as the results report it."""
    return shlex.join([PYTHON, "-m", f"benchmarks.{name}", *argv])


def write_json(path: Path, data: Any) -> Path:
    """Writes `data` as indented JSON (values JSON does not know as strings), making the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def markers(name: str) -> tuple[str, str]:
    """The pair of markers around a benchmark's section of BENCHMARKS.md."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def update_section(path: Path, section: str, start: str, end: str) -> None:
    """Writes `section` (which begins with `start` and ends with `end`) into `path`, keeping the rest.

    BENCHMARKS.md is written by several benchmarks, each between its own pair of markers. The file is
    read right before it is written, so sections that other benchmarks wrote meanwhile are kept; without
    the markers the section is appended at the end.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def write_section(path: Path, name: str, body: str) -> None:
    """Replaces (or appends) the text between `<!-- name:start -->` and `<!-- name:end -->`."""
    start, end = markers(name)
    update_section(path, f"{start}\n{body}\n{end}", start, end)


# ---------------------------------------------------------------------------------------------------------
# The command line


def make_parser(doc: str | None, *, summary: bool = False) -> argparse.ArgumentParser:
    """A benchmark's parser: its module docstring as the help text (only the first paragraph with
    `summary`), laid out as written."""
    description = doc.split("\n\n")[0] if doc and summary else doc
    # Run as `python -m benchmarks.NAME`, the usage line says so (rather than NAME.py).
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    prog = f"python -m {name}" if name.startswith("benchmarks.") else None
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def add_markdown(
    p: argparse.ArgumentParser, text: str = "write the section into this file between its markers"
) -> None:
    p.add_argument("--markdown", type=Path, default=None, help=text)


def add_from_json(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--from-json", type=Path, default=None, help="render an earlier run's JSON instead of measuring"
    )


def add_seed(p: argparse.ArgumentParser, default: int = 0) -> None:
    p.add_argument("--seed", type=int, default=default)


def add_repeats(p: argparse.ArgumentParser, default: int, text: str | None = None) -> None:
    p.add_argument("--repeats", type=int, default=default, help=text)


def add_work(
    p: argparse.ArgumentParser, default: Path, text: str = "work folder (outside the repository)"
) -> None:
    p.add_argument("--work", type=Path, default=default, help=text)


def add_quiet_wait(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=default,
        help="before each run, wait up to this many seconds for other processes to leave the CPU idle",
    )


def add_nice(p: argparse.ArgumentParser, text: str) -> None:
    p.add_argument("--nice", type=int, default=0, help=text)
