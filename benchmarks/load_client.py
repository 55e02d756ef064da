"""The client side of the load benchmark: one open-loop run in a fresh generator process with the CPU the
processes used meanwhile, a sweep of rates, and the arithmetic of their records (percentiles, what counts
as a held rate, repeats as one row).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    REPO,
    busy_cpu_seconds,
    module_command,
    prioritised,
    tree_cpu_seconds,
    wait_for_quiet,
)
from benchmarks.load_servers import check_alive, wait_idle

MAX_LAG_MS = 50.0


@dataclass(frozen=True)
class LoadPlan:
    """How each open-loop run goes: seconds at the rate before and while measuring, the timeout, repeats
    per rate, the wait for a quiet machine before each run, the niceness, whether a sweep goes on past
    a rate not held."""

    warmup_s: float = 2.0
    duration_s: float = 10.0
    timeout_s: float = 5.0
    repeats: int = 1
    quiet_wait_s: float = 20.0
    quiet_threshold: float = 0.15
    nice: int = 0
    no_stop: bool = False


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default).

    Raises:
        ValueError: no values, or q outside [0, 100].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(
    samples: Sequence[tuple[float, float, float, str]], rate: float, duration_s: float
) -> dict[str, Any]:
    """Figures of one measured window from its requests' (scheduled, started, finished, status) records.

    Times are seconds on one monotonic clock; status is the HTTP status as text, or the error's name.
    Latency runs from the scheduled send time (open loop: the generator's own lateness counts too); lag
    is how late the generator started a request.
    """
    latencies = [(done - at) * 1000 for at, _, done, _ in samples]
    lags = [(started - at) * 1000 for at, started, _, _ in samples]
    ok = [lat for (_, _, _, status), lat in zip(samples, latencies, strict=True) if status.startswith("2")]
    errors: dict[str, int] = {}
    for _, _, _, status in samples:
        if not status.startswith("2"):
            errors[status] = errors.get(status, 0) + 1
    expected = round(rate * duration_s)
    span = (max(s[2] for s in samples) - min(s[0] for s in samples)) if samples else 0.0
    out: dict[str, Any] = {
        "rate": rate,
        "duration_s": duration_s,
        "expected": expected,
        "sent": len(samples),
        "ok": len(ok),
        "errors": sum(errors.values()) + max(0, expected - len(samples)),
        "error_kinds": errors,
        "achieved_rps": round(len(ok) / span, 1) if span > 0 else 0.0,
    }
    for name, values in (("latency", ok), ("lag", lags)):
        for q in (50, 95, 99):
            out[f"{name}_p{q}_ms"] = round(percentile(values, q), 3) if values else None
        out[f"{name}_max_ms"] = round(max(values), 3) if values else None
    return out


def held(row: dict[str, Any], max_lag_ms: float = MAX_LAG_MS) -> bool:
    """Whether a run held its rate: every request answered 2xx and the generator kept to its schedule."""
    lag = row.get("lag_p99_ms")
    return row["errors"] == 0 and row["ok"] == row["expected"] and lag is not None and lag <= max_lag_ms


def highest_rate(rows: Sequence[dict[str, Any]], p99_limit_ms: float | None = None) -> float | None:
    """The highest rate of a sweep held without errors (and with p99 <= the limit when one is given),
    provided every lower rate held too; None when even the lowest did not."""
    best = None
    for row in sorted(rows, key=lambda r: r["rate"]):
        ok = held(row) and (p99_limit_ms is None or row["latency_p99_ms"] <= p99_limit_ms)
        if not ok:
            break
        best = row["rate"]
    return best


def median_row(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one (server, path, rate) as one row: median percentiles and CPU, summed counts, max lag."""
    if len(rows) == 1:
        return dict(rows[0])
    out = dict(rows[0])
    for key in ("expected", "sent", "ok", "errors"):
        out[key] = sum(r[key] for r in rows)
    kinds: dict[str, int] = {}
    for r in rows:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    out["error_kinds"] = kinds
    for key in (
        "latency_p50_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "achieved_rps",
        "server_cpu_cores",
        "server_cpu_ms_per_request",
    ):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    for key in ("latency_max_ms", "lag_p99_ms", "lag_max_ms", "other_cpu_share", "generator_cpu_cores"):
        values = [r[key] for r in rows if r.get(key) is not None]
        out[key] = max(values) if values else None
    out["repeats"] = len(rows)
    return out


def run_load(
    url: str,
    bodies: list[str],
    rate: float,
    plan: LoadPlan,
    server_pid: int,
    headers: dict[str, str],
    method: str = "POST",
) -> dict[str, Any]:
    """One open-loop run in a fresh generator process; its summary with the CPU the processes used."""
    drained_s = wait_idle(server_pid)
    load_before = (
        wait_for_quiet(plan.quiet_wait_s, plan.quiet_threshold, pause_s=2.0)["load_before"]
        if plan.quiet_wait_s > 0
        else None
    )
    spec = {
        "url": url,
        "bodies": bodies,
        "rate": rate,
        "warmup_s": plan.warmup_s,
        "duration_s": plan.duration_s,
        "timeout_s": plan.timeout_s,
        "headers": headers,
        "method": method,
    }
    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec_path.write_text(json.dumps(spec))
        busy0, server0, wall0 = busy_cpu_seconds(), tree_cpu_seconds(server_pid), time.monotonic()
        self0 = time.process_time()
        done = subprocess.run(
            module_command("load_generator", str(spec_path), str(out_path)),
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
            preexec_fn=prioritised(plan.nice),
        )
        wall = time.monotonic() - wall0
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{done.stderr[-4000:]}")
        raw = json.loads(out_path.read_text())
    server = tree_cpu_seconds(server_pid) - server0
    own = server + raw["generator_cpu_s"] + (time.process_time() - self0)
    other = max(0.0, busy_cpu_seconds() - busy0 - own)
    row = summarize([tuple(s) for s in raw["samples"]], rate, plan.duration_s)
    cores = os.cpu_count() or 1
    # Every request the server answered in the window: warm-up and measured ones, and the generator's
    # four that open its connections.
    answered = round(rate * (plan.warmup_s + plan.duration_s)) + 4
    row["server_cpu_cores"] = round(server / wall, 2)
    row["server_cpu_ms_per_request"] = round(server / answered * 1000, 3)
    row["generator_cpu_cores"] = round(raw["generator_cpu_s"] / wall, 2)
    row["other_cpu_share"] = round(other / (wall * cores), 3)
    row["load_before"] = load_before
    row["drained_s"] = drained_s
    return row


def sweep(
    name: str,
    url: str,
    bodies: list[str],
    rates: Sequence[float],
    plan: LoadPlan,
    server: subprocess.Popen[bytes],
    server_log: Path,
    headers: dict[str, str],
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[float]]:
    """Every rate, lowest first, `plan.repeats` times; stops after the first rate not held (unless
    `plan.no_stop`). Returns the rows and the rates not run."""
    rows: list[dict[str, Any]] = []
    ordered = sorted(rates)
    for n, rate in enumerate(ordered):
        runs = []
        for _ in range(plan.repeats):
            runs.append(run_load(url, bodies, rate, plan, server.pid, headers))
            check_alive(server, server_log)
        row = median_row(runs)
        row["runs"] = runs
        rows.append(row)
        log(
            f"  {name} at {rate:g}/s: p50 {row['latency_p50_ms']} p95 {row['latency_p95_ms']} "
            f"p99 {row['latency_p99_ms']} ms, errors {row['errors']}, lag p99 {row['lag_p99_ms']} ms, "
            f"server {row['server_cpu_cores']} cores ({row['server_cpu_ms_per_request']} ms CPU per "
            f"request), other {row['other_cpu_share']:.0%}"
        )
        if not all(held(r) for r in runs) and not plan.no_stop:
            return rows, ordered[n + 1 :]
    return rows, []
