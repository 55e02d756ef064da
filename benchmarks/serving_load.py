"""`journey serve` under open-loop load at fixed request rates, beside the model's floor and MLflow's server.

    .venv/bin/python benchmarks/serving_load.py --work /tmp/journey-serving-load --markdown BENCHMARKS.md

What it does, in one run:

1. Prepares, cached in `--work` (outside the repository): a simulated shop with a 100,000-item catalogue,
   its features build, a small sequence model (the project's default shape, a few epochs on a sample of
   rows) registered as `journey-scorer@champion` in an MLflow store under `--work`, and an online store
   (SQLite) holding the histories of the customers to be scored. The item vocabulary of a build only
   keeps items seen in the training window, and a simulated shop of a few million events touches fewer
   than half of 100,000 items (the simulator draws items from Zipf tails), so the items never seen
   there are appended to the vocabulary after the fitted ones: the model ranks the whole catalogue,
   with untrained embeddings for those items (the results state both counts).
2. Starts `journey serve` (1 uvicorn worker, `torch_threads` 1) on 127.0.0.1 and waits for `/readyz`.
3. Measures, while the server is idle, the floor in this process: the encoder on one customer and the
   registered model's forward on one customer (median of many runs), and `Service.score` in process.
4. Drives `POST /v1/score` from a separate, light process (one asyncio loop, aiohttp, keep-alive
   connections) on a fixed schedule, whatever the answers (open loop: a slow answer delays no later
   request, so queueing shows in the latency, which runs from each request's scheduled send time), for
   the stored-history path (customer_id only) and the inline path (customer_id + 20 events), at each
   `--rates`, for `--duration` seconds after a `--warmup`. A path's sweep stops at the first rate it
   does not hold (errors, or the generator falling behind).
5. Measures batch scoring through `POST /v1/score/batch` (1,000 customers per request) and in process.
6. Serves the same registered model with `mlflow models serve --env-manager local` (one worker, the same
   torch threads) and drives `/invocations` with the same inline events at the same rates.
7. Profiles `Service.score` in process (cProfile) for both paths, and writes
   `benchmarks/results/serving_load.json`, `benchmarks/results/serving_load.md` and, with `--markdown`,
   the section between `<!-- serving_load:start -->` and `<!-- serving_load:end -->`.

The load generator shares the machine's cores with the server; its own CPU time is recorded per run, and
so is the CPU that other processes took meanwhile (`other_cpu_share`). Every `/v1/score` records a
decision in the store (the route's real work), so the store grows during the run; it is copied afresh
from the prepared one at the start of each run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import json
import math
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START = "<!-- serving_load:start -->"
END = "<!-- serving_load:end -->"
HOST = "127.0.0.1"
API_KEY = "bench-key"
P99_TARGET_MS = 10.0
TARGET_RATE = 200.0
BATCH_TARGET = 5_000.0
HISTORY_LEN = 200  # ServeSettings.history_len's default: the store keeps what the server would keep
INLINE_EVENTS = 20
N_ITEMS_ANSWERED = 10
PREP_VERSION = 1  # bump when the prepared artefacts change meaning

# ---------------------------------------------------------------------------------------------------------
# Pure helpers (unit-tested in tests/test_serving_load_benchmark.py)


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


def send_times(rate: float, duration_s: float) -> list[float]:
    """Offsets (seconds from the start) of the requests of an open-loop run: evenly spaced at `rate`.

    Raises:
        ValueError: a rate or duration that is not positive.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate} and {duration_s}")
    return [i / rate for i in range(round(rate * duration_s))]


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


def held(row: dict[str, Any], max_lag_ms: float = 50.0) -> bool:
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
    """Repeats of one (server, path, rate) as one row: median percentiles, summed counts, max lag."""
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
    for key in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "achieved_rps"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    for key in ("latency_max_ms", "lag_p99_ms", "lag_max_ms"):
        values = [r[key] for r in rows if r[key] is not None]
        out[key] = max(values) if values else None
    out["repeats"] = len(rows)
    return out


def _max_of(sweeps: dict[str, list[dict[str, Any]]], key: str) -> float:
    values = [r[key] for rows in sweeps.values() for r in rows if r.get(key) is not None]
    return max(values) if values else 0.0


def verdict(met: bool) -> str:
    return "**met**" if met else "**NOT met**"


def _ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.1f}" if x >= 100 else f"{x:.2f}")


def _rate(x: float | None) -> str:
    return "none" if x is None else f"{x:,.0f} requests/s"


def latency_table(sweeps: dict[str, list[dict[str, Any]]]) -> str:
    """One line per (server and path, rate)."""
    lines = [
        "| server, path | rate (req/s) | requests | errors | p50 ms | p95 ms | p99 ms | max ms "
        "| generator lag p99 ms | server CPU (cores) | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in sweeps.items():
        for r in rows:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["error_kinds"].items()))
            errors = f"{r['errors']:,}" + (f" ({kinds})" if kinds else "")
            server_cpu = r.get("server_cpu_cores")
            other = r.get("other_cpu_share")
            lines.append(
                f"| {name} | {r['rate']:,.0f} | {r['expected']:,} | {errors} | {_ms(r['latency_p50_ms'])} "
                f"| {_ms(r['latency_p95_ms'])} | {_ms(r['latency_p99_ms'])} | {_ms(r['latency_max_ms'])} "
                f"| {_ms(r['lag_p99_ms'])} | {'–' if server_cpu is None else f'{server_cpu:.2f}'} "
                f"| {'–' if other is None else f'{other:.0%}'} |"
            )
    return "\n".join(lines)


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The figures of DESIGN.md against this run: p99 at 200 requests/s per path, batch customers/s."""
    out: dict[str, Any] = {}
    for path in ("stored", "inline"):
        rows = results["sweeps"].get(f"journey serve, {path}", [])
        at = next((r for r in rows if r["rate"] == TARGET_RATE), None)
        out[f"p99_at_200_{path}_ms"] = at["latency_p99_ms"] if at else None
        out[f"held_{path}"] = highest_rate(rows)
        out[f"stopped_{path}"] = None if at or not rows else rows[-1]["rate"]
        out[f"p99_at_200_{path}_met"] = bool(
            at and held(at) and at["latency_p99_ms"] is not None and at["latency_p99_ms"] <= P99_TARGET_MS
        )
    batch = results.get("batch", {}).get("http", {})
    out["batch_customers_per_s"] = batch.get("customers_per_s")
    out["batch_met"] = bool(batch and batch["customers_per_s"] >= BATCH_TARGET and batch["errors"] == 0)
    return out


def render_markdown(results: dict[str, Any]) -> str:
    """The section of BENCHMARKS.md between its markers, every figure taken from `results`."""
    m, prep, t = results["machine"], results["prepared"], targets(results)
    sweeps = results["sweeps"]
    lines = [
        START,
        "## Scoring service under load (`benchmarks/serving_load.py`)",
        "",
        "```",
        results["command"],
        "```",
        "",
        f"Run {results['date']} on {m['cpu_count_logical']} cores ({m['processor']}), {m['memory_gb']} GB, "
        f"Python {m['python']}, torch {m['versions']['torch']}, MLflow {m['versions']['mlflow']}; "
        f"{results['elapsed_s'] / 60:.1f} minutes in all. The load generator (one asyncio loop, aiohttp, "
        "keep-alive connections) runs on the same 2 cores as the server, in its own process; it used at "
        f"most {_max_of(sweeps, 'generator_cpu_cores'):.2f} of a core. "
        + (
            f"Servers, generator and in-process measurements ran at niceness {results['nice']}, each server "
            "and generator in its own session, so that other sessions' work on this shared machine did not "
            "take the cores mid-run; the share of all cores that other processes still used is in the "
            "table (other CPU)."
            if results.get("nice")
            else "Other processes' share of all cores during each run is in the table (other CPU)."
        ),
        "",
        f"**Catalogue.** The model ranks {prep['catalogue_size']:,} items: {prep['items_fitted']:,} fitted "
        f"from the training window of a simulated shop ({prep['customers']:,} customers, "
        f"{prep['events']:,} events) and the other {prep['items_appended']:,} items of its "
        f"{prep['shop_items']:,}-item catalogue appended to the vocabulary with untrained embeddings (a shop "
        "this size never shows them in training; the ranking over all of them costs the same either way). "
        f"Model: the default shape ({prep['model']}), {prep['epochs']} epochs on {prep['train_rows']:,} "
        f"training rows, registered as `journey-scorer@champion` version {prep['version']}.",
        "",
        f"**Server.** `journey serve`, one uvicorn worker, `torch_threads={results['torch_threads']}` "
        "(FastAPI runs each request in its thread pool, so concurrent requests would each start that many "
        "intra-op threads on 2 cores shared with the generator; "
        + _threads_note(results)
        + "), SQLite store with the histories of "
        f"{prep['stored_customers']:,} customers ({prep['stored_events']:,} events, at most "
        f"{HISTORY_LEN} kept each). Every request: `now` {results['now']}, channels `email`, "
        f"{N_ITEMS_ANSWERED} items; each records a decision. Stored path: customer_id only, one customer "
        f"after another from the store; inline path: customer_id and their last {INLINE_EVENTS} events, "
        "customers the store does not know. MLflow: `mlflow models serve -m "
        "models:/journey-scorer@champion --env-manager local` (`MLFLOW_MODELS_WORKERS=1`, "
        f"`OMP_NUM_THREADS={results['torch_threads']}`), `/invocations` with the inline path's events as "
        "`dataframe_split` and the same `now` and `k`; it has no store, rules or decisions. Open loop at "
        f"each rate: {results['warmup_s']:g} s warm-up, then {results['duration_s']:g} s measured "
        f"({results['repeats']} repeat(s)); latency from the scheduled send time, errors = non-2xx, "
        f"timeouts ({results['timeout_s']:g} s) and requests never sent.",
        "",
        "### Against the targets",
        "",
        f"- p99 <= {P99_TARGET_MS:g} ms at {TARGET_RATE:g} requests/s on `/v1/score`: stored-history path "
        f"{verdict(t['p99_at_200_stored_met'])} ({_at_target(t, 'stored')}); inline path "
        f"{verdict(t['p99_at_200_inline_met'])} ({_at_target(t, 'inline')}).",
        f"- batch scoring >= {BATCH_TARGET:,.0f} customers/s: {verdict(t['batch_met'])} "
        f"({t['batch_customers_per_s']:,.0f} customers/s through `POST /v1/score/batch`, "
        f"{results['batch']['http']['customers_per_request']:,} customers per request).",
    ]
    for name, rows in sweeps.items():
        lines.append(
            f"- {name}: highest rate held without errors {_rate(highest_rate(rows))}; "
            f"with p99 <= {P99_TARGET_MS:g} ms too: {_rate(highest_rate(rows, P99_TARGET_MS))}"
            + (f" (rates tried: {', '.join(format(r['rate'], 'g') for r in rows)})" if rows else "")
            + "."
        )
    lines += ["", "### Latency under load", "", latency_table(sweeps), ""]
    http_floor = results.get("http_floor")
    if http_floor:
        lines += [
            f"The framework alone (`GET /v1/model`: key check, middleware, thread pool, JSON; no scoring) "
            f"through the same generator at {http_floor['rate']:g} requests/s: p50 "
            f"{_ms(http_floor['latency_p50_ms'])} ms, p99 {_ms(http_floor['latency_p99_ms'])} ms, "
            f"{http_floor['errors']} errors, server {http_floor['server_cpu_cores']:.2f} cores.",
            "",
        ]
    skipped = results.get("skipped", {})
    if skipped:
        lines.append(
            "Not run (a lower rate of the same sweep was not held): "
            + "; ".join(f"{k}: {', '.join(f'{r:g}' for r in v)}" for k, v in skipped.items())
            + "."
        )
        lines.append("")
    lines += _diagnosis_lines(results)
    lines += _floor_lines(results), ""
    lines += _batch_lines(results), ""
    lines += _profile_lines(results)
    if results.get("baseline"):
        lines += ["", _baseline_lines(results)]
    notes = results.get("notes") or []
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    lines.append(END)
    return "\n".join(lines) + "\n"


def _threads_note(results: dict[str, Any]) -> str:
    """What a second intra-op thread did to one customer's forward in the floor measurements."""
    forward = results.get("floor", {}).get("forward", {})
    one, two = forward.get("1", {}).get("median_ms"), forward.get("2", {}).get("median_ms")
    if one is None or two is None:
        return "see the floor below"
    return (
        f"with the machine otherwise idle a second thread takes one customer's forward from {_ms(one)} to "
        f"{_ms(two)} ms, in the floor below"
    )


def _diagnosis_lines(results: dict[str, Any]) -> list[str]:
    """Why the figures are what they are, from this run's own numbers."""
    threads = str(results.get("torch_threads", 1))
    floor = results.get("floor", {})

    def median(name: str, t: str = threads) -> float | None:
        value = floor.get(name, {}).get(t, {}).get("median_ms")
        return float(value) if value is not None else None

    out = []
    rows = results["sweeps"].get("journey serve, stored", [])
    top = highest_rate(rows)
    row = next((r for r in rows if r["rate"] == top), None)
    predict, encode, service = median("predict"), median("encode"), median("service_stored")
    http = results.get("http_floor") or {}
    if row and row.get("server_cpu_cores") and predict is not None:
        cpu_ms = row["server_cpu_cores"] / row["rate"] * 1000
        out.append(
            f"**What dominates.** At {row['rate']:g} requests/s on the stored path the server spent "
            f"{cpu_ms:.1f} ms of CPU per request ({row['server_cpu_cores']:.2f} cores), against "
            f"{_ms(service)} ms for the route's work in this process with the cache warm and, within it, "
            f"{_ms(predict)} ms for the model's forward with the top-{N_ITEMS_ANSWERED} ranking (the floor) "
            f"and {_ms(encode)} ms for the encoder; the framework alone answers in "
            f"{_ms(http.get('latency_p50_ms'))} ms (p50). At that CPU per request, {TARGET_RATE:g} "
            f"requests/s would take {cpu_ms * TARGET_RATE / 1000:.1f} cores, and one uvicorn worker runs "
            "Python on one core at a time (the GIL; torch, numpy and SQLite release it only inside their "
            "own calls), so the queue grows without bound past the rates in the table. On one core, "
            f"{TARGET_RATE:g} requests/s leaves {1000 / TARGET_RATE:g} ms per request with no room to queue: "
            "a 10 ms p99 needs a few ms of CPU per request at most, and more than one worker process. The "
            "steps to shrink are in the profile below."
        )
        out.append("")
    chunked = (results.get("batch", {}).get("predict") or {}).get("by_threads", {})
    if chunked:
        best = max(chunked.items(), key=lambda kv: kv[1]["customers_per_s"])
        out.append(
            "**Batch.** The model alone, `SequenceScorer.predict` on already encoded rows, scores "
            + ", ".join(
                f"{m['customers_per_s']:,.0f} customers/s at {t} thread(s)" for t, m in chunked.items()
            )
            + f": the best, {best[1]['customers_per_s']:,.0f}, is below {BATCH_TARGET:,.0f} before any store "
            "read, rule or decision. Each customer's item scores are a product with the whole "
            f"{results['prepared']['catalogue_size']:,}-item embedding table, and the ranking (top "
            f"{N_ITEMS_ANSWERED}, the softmax's normaliser) passes over those scores again."
        )
        out.append("")
    return out


def _at_target(t: dict[str, Any], path: str) -> str:
    if t[f"p99_at_200_{path}_ms"] is not None:
        return f"p99 {_ms(t[f'p99_at_200_{path}_ms'])} ms"
    stopped = t.get(f"stopped_{path}")
    if stopped is not None:
        return (
            f"not reached: the server already fell behind at {stopped:g} requests/s and held at most "
            f"{_rate(t.get(f'held_{path}'))}"
        )
    return "not measured"


def _floor_lines(results: dict[str, Any]) -> str:
    f = results["floor"]
    rows = [
        "### The floor (in the benchmark process, server idle, one customer)",
        "",
        "| step | torch threads | median ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    for name, label in (
        (
            "encode",
            "encoder (`features.encoder.encode`, one customer's stored events, the service's vocabulary)",
        ),
        ("forward", "model forward only (`JourneyModel.forward`)"),
        ("predict", "`SequenceScorer.predict`, k=10 (forward, top-10 of the catalogue, probabilities)"),
        ("score_customers", "`serving.scoring.score_customers` (encoder + predict)"),
        ("service_stored", "the route's work in process, stored path: parse, `Service.score`, answer model"),
        (
            "service_inline",
            "the route's work in process, inline path: parse, `events_frame`, `Service.score`, answer",
        ),
    ):
        for threads, m in sorted(f.get(name, {}).items()):
            rows.append(f"| {label} | {threads} | {_ms(m['median_ms'])} | {_ms(m['p99_ms'])} |")
    return "\n".join(rows)


def _batch_lines(results: dict[str, Any]) -> str:
    b = results["batch"]
    rows = [
        "### Batch scoring",
        "",
        "| how | customers per call | calls | customers/s | seconds per call (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    labels = {
        "http": "`POST /v1/score/batch` (stored path, decisions recorded)",
        "service": "`Service.score` in process (stored path, decisions recorded)",
        "predict": "`SequenceScorer.predict` on the same customers' encoded rows (the floor)",
    }
    for key, label in labels.items():
        for threads, m in sorted((b.get(key) or {}).get("by_threads", {}).items()):
            rows.append(
                f"| {label}, torch threads {threads} | {m['customers_per_request']:,} | {m['calls']} "
                f"| {m['customers_per_s']:,.0f} | {m['median_s']:.3f} |"
            )
    return "\n".join(rows)


def _profile_lines(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile") or {}
    out = [
        "### Where the time goes (cProfile of the route's work in process, one customer per call)",
        "",
        "cProfile's own overhead inflates every time (compare the per-call times with the floor table); "
        "read the shares.",
        "",
    ]
    breakdown = [p.get("breakdown", {}) for p in prof.values()]
    if any(breakdown):
        names = [label for label, _, _ in BREAKDOWN if any(label in b for b in breakdown)]
        out += ["| step (cumulative) | " + " | ".join(f"{k} path ms per call" for k in prof) + " |"]
        out += ["|---|" + "---:|" * len(prof)]
        for name in names:
            cells = " | ".join(_ms(b.get(name)) for b in breakdown)
            depth = (len(name) - len(name.lstrip(" "))) // 2  # Markdown drops leading spaces in a cell
            out.append(f"| {'&nbsp;&nbsp;&nbsp;&nbsp;' * depth}{name.lstrip(' ')} | {cells} |")
        out.append("")
    for path, p in prof.items():
        areas = ", ".join(f"{k} {v:.0%}" for k, v in p["areas"].items())
        out.append(f"{path} path ({p['calls']} calls, {p['ms_per_call']:.2f} ms per call): {areas}.")
        out.append("")
        out.append("| function | own ms per call | cumulative ms per call |")
        out.append("|---|---:|---:|")
        for fn in p["top"]:
            out.append(f"| `{fn['function']}` | {fn['own_ms']:.3f} | {fn['cum_ms']:.3f} |")
        out.append("")
    return out[:-1] if out[-1] == "" else out


def _baseline_lines(results: dict[str, Any]) -> str:
    """Before/after: the key figures of an earlier run (before the hot-path changes) beside this one's."""
    before = results["baseline"]
    after = key_figures(results)
    lowest = after.get("lowest_rate", 25.0)
    rows = [
        f"### Before and after ({before.get('label', 'earlier run')})",
        "",
        f"Before: the same command, same prepared shop, model and store, run {before.get('date')} on the "
        "code before the changes to `serving/scoring.py` and `serving/store.py`; its figures are kept in "
        "`benchmarks/results/serving_load.json` under `baseline`.",
        "",
        "| figure | before | after |",
        "|---|---:|---:|",
    ]
    for key, label in (
        ("held_stored", "highest rate held, stored path (requests/s)"),
        ("held_inline", "highest rate held, inline path (requests/s)"),
        ("p99_lowest_stored_ms", f"p99 ms at {lowest:g} requests/s, stored path"),
        ("p99_lowest_inline_ms", f"p99 ms at {lowest:g} requests/s, inline path"),
        ("encode_ms", "encoder on one customer, median ms"),
        ("service_stored_ms", "the route's work in process, stored path, median ms"),
        ("service_inline_ms", "the route's work in process, inline path, median ms"),
        ("batch_customers_per_s", "`POST /v1/score/batch`, customers/s"),
        ("max_other_cpu_share", "other processes' share of the CPU during a load run, at most"),
    ):
        a, b = before["figures"].get(key), after.get(key)
        if key == "max_other_cpu_share":
            fmt: Callable[[Any], str] = lambda x: f"{x:.0%}"  # noqa: E731
        elif "per_s" in key or key.startswith("held"):
            fmt = lambda x: f"{x:,.0f}"  # noqa: E731
        else:
            fmt = _ms
        rows.append(f"| {label} | {'–' if a is None else fmt(a)} | {'–' if b is None else fmt(b)} |")
    return "\n".join(rows)


def key_figures(results: dict[str, Any]) -> dict[str, Any]:
    t = targets(results)
    floor = results.get("floor", {})
    threads = str(results.get("torch_threads", 1))
    sweeps = results.get("sweeps", {})

    def p99_at(path: str, rate: float) -> float | None:
        row = next((r for r in sweeps.get(f"journey serve, {path}", []) if r["rate"] == rate), None)
        return row["latency_p99_ms"] if row and held(row) else None

    lowest = min(results.get("rates") or [25.0])
    return {
        "p99_at_200_stored_ms": t["p99_at_200_stored_ms"],
        "p99_at_200_inline_ms": t["p99_at_200_inline_ms"],
        "held_stored": t["held_stored"],
        "held_inline": t["held_inline"],
        "lowest_rate": lowest,
        "p99_lowest_stored_ms": p99_at("stored", lowest),
        "p99_lowest_inline_ms": p99_at("inline", lowest),
        "encode_ms": floor.get("encode", {}).get(threads, {}).get("median_ms"),
        "service_stored_ms": floor.get("service_stored", {}).get(threads, {}).get("median_ms"),
        "service_inline_ms": floor.get("service_inline", {}).get(threads, {}).get("median_ms"),
        "batch_customers_per_s": t["batch_customers_per_s"],
        "max_other_cpu_share": max(
            (r.get("other_cpu_share") or 0.0 for rows in sweeps.values() for r in rows), default=None
        ),
    }


# ---------------------------------------------------------------------------------------------------------
# The load generator: a separate, light process (stdlib + aiohttp), one asyncio loop.


async def _open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    bodies = [b.encode() for b in spec["bodies"]]
    rate, warmup, duration = float(spec["rate"]), float(spec["warmup_s"]), float(spec["duration_s"])
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    method = spec.get("method", "POST")
    loop = asyncio.get_running_loop()
    records: list[tuple[float, float, float, str]] = []
    connector = aiohttp.TCPConnector(limit=int(spec.get("max_connections", 256)), ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=float(spec["timeout_s"]))

    async def one(session: aiohttp.ClientSession, body: bytes, at: float) -> None:
        started = loop.time()
        try:
            async with session.request(method, spec["url"], data=body or None, headers=headers) as resp:
                await resp.read()
                status = str(resp.status)
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as err:
            status = type(err).__name__
        records.append((at, started, loop.time(), status))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open a few keep-alive connections before the clock starts.
        await asyncio.gather(*(one(session, bodies[i % len(bodies)], loop.time()) for i in range(4)))
        records.clear()
        offsets = send_times(rate, warmup + duration) if warmup + duration > 0 else []
        t0 = loop.time() + 0.05
        tasks = []
        for i, offset in enumerate(offsets):
            at = t0 + offset
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, bodies[i % len(bodies)], at)))
        await asyncio.gather(*tasks)
    measured = [r for r in records if r[0] >= t0 + warmup - 1e-9]
    return {"samples": measured}


def generate(spec_path: Path, out_path: Path) -> None:
    """The generator process: reads its spec, runs the open loop, writes the raw records and its CPU time."""
    spec = json.loads(spec_path.read_text())
    gc.disable()  # no collector pauses inside the measured window (the run is short and allocates little)
    cpu0 = time.process_time()
    result = asyncio.run(_open_loop(spec))
    result["generator_cpu_s"] = time.process_time() - cpu0
    out_path.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------------------
# Servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _get(url: str, timeout: float = 2.0) -> int:
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


@contextlib.contextmanager
def running(
    command: list[str],
    env: dict[str, str],
    ready_url: str,
    log_path: Path,
    nice: int = 0,
    timeout_s: float = 300.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts a server in its own process group, waits until `ready_url` answers 200, stops it after."""
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
            while _get(ready_url) != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"{shlex.join(command)} exited ({proc.returncode}); see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{shlex.join(command)} not ready in {timeout_s:.0f} s; see {log_path}"
                    )
                time.sleep(0.5)
            yield proc
        finally:
            # The group is the one this process started (mlflow's CLI starts uvicorn as its child).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _busy_cpu_seconds() -> float:
    import psutil

    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _tree_cpu_seconds(pid: int) -> float:
    import psutil

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


def wait_for_quiet(max_wait_s: float, threshold: float) -> float:
    """Waits (up to `max_wait_s`) until the machine's CPU is less busy than `threshold` (share of all
    cores, measured over a second, the server idle); returns the last share seen."""
    import psutil

    started = time.monotonic()
    load = psutil.cpu_percent(interval=1.0) / 100
    while load > threshold and time.monotonic() - started < max_wait_s:
        time.sleep(2.0)
        load = psutil.cpu_percent(interval=1.0) / 100
    return round(load, 3)


def wait_idle(pid: int, max_wait_s: float = 180.0, below_cores: float = 0.05) -> float:
    """Waits until the server's processes are idle (its backlog from an earlier run answered); returns
    the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < max_wait_s:
        before = _tree_cpu_seconds(pid)
        time.sleep(0.5)
        if (_tree_cpu_seconds(pid) - before) / 0.5 < below_cores:
            break
    return round(time.monotonic() - started, 1)


def check_alive(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Raises with the end of the server's log when it has exited."""
    if proc.poll() is not None:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"the server exited with code {proc.returncode} during the run:\n{tail}")


def run_load(
    url: str,
    bodies: list[str],
    rate: float,
    args: argparse.Namespace,
    server_pid: int,
    headers: dict[str, str],
    method: str = "POST",
) -> dict[str, Any]:
    """One open-loop run in a fresh generator process; its summary with the CPU the processes used."""
    drained_s = wait_idle(server_pid)
    load_before = wait_for_quiet(args.quiet_wait, args.quiet_threshold) if args.quiet_wait > 0 else None
    with tempfile.TemporaryDirectory(prefix="serving-load-") as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.json"
        spec.write_text(
            json.dumps(
                {
                    "url": url,
                    "bodies": bodies,
                    "rate": rate,
                    "warmup_s": args.warmup,
                    "duration_s": args.duration,
                    "timeout_s": args.timeout,
                    "headers": headers,
                    "method": method,
                }
            )
        )
        busy0, server0, wall0 = _busy_cpu_seconds(), _tree_cpu_seconds(server_pid), time.monotonic()
        self0 = time.process_time()
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--generate", str(spec), str(out)],
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
            preexec_fn=prioritised(args.nice),
        )
        wall = time.monotonic() - wall0
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{done.stderr[-4000:]}")
        raw = json.loads(out.read_text())
    server = _tree_cpu_seconds(server_pid) - server0
    own = server + raw["generator_cpu_s"] + (time.process_time() - self0)
    other = max(0.0, _busy_cpu_seconds() - busy0 - own)
    row = summarize([tuple(s) for s in raw["samples"]], rate, args.duration)
    cores = os.cpu_count() or 1
    row["server_cpu_cores"] = round(server / wall, 2)
    row["generator_cpu_cores"] = round(raw["generator_cpu_s"] / wall, 2)
    row["other_cpu_share"] = round(other / (wall * cores), 3)
    row["load_before"] = load_before
    row["drained_s"] = drained_s
    return row


def sweep(
    name: str,
    url: str,
    bodies: list[str],
    args: argparse.Namespace,
    server: subprocess.Popen[bytes],
    server_log: Path,
    headers: dict[str, str],
    log: Callable[[str], None],
) -> tuple[list[dict[str, Any]], list[float]]:
    """Every rate, lowest first, `--repeats` times; stops after the first rate not held."""
    rows: list[dict[str, Any]] = []
    rates = sorted(args.rates)
    for n, rate in enumerate(rates):
        runs = []
        for _ in range(args.repeats):
            runs.append(run_load(url, bodies, rate, args, server.pid, headers))
            check_alive(server, server_log)
        row = median_row(runs)
        row["runs"] = runs
        rows.append(row)
        log(
            f"  {name} at {rate:g}/s: p50 {_ms(row['latency_p50_ms'])} p95 {_ms(row['latency_p95_ms'])} "
            f"p99 {_ms(row['latency_p99_ms'])} ms, errors {row['errors']}, lag p99 {_ms(row['lag_p99_ms'])} "
            f"ms, server {row['server_cpu_cores']} cores, other {row['other_cpu_share']:.0%}"
        )
        if not all(held(r) for r in runs) and not args.no_stop:
            return rows, rates[n + 1 :]
    return rows, []


# ---------------------------------------------------------------------------------------------------------
# Preparation (cached in --work)


def _prep_key(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from training.model import ModelConfig

    # The model's shape follows the project's defaults, so a change of default retrains the model.
    shape = {k: v for k, v in asdict(ModelConfig()).items() if k not in ("token_sizes", "n_items", "targets")}
    return {
        "version": PREP_VERSION,
        "model": shape,
        "customers": args.customers,
        "items": args.items,
        "days": args.days,
        "seed": args.seed,
        "epochs": args.epochs,
        "train_rows": args.train_rows,
        "valid_rows": args.valid_rows,
        "stored_customers": args.stored_customers,
        "inline_customers": args.inline_customers,
    }


def prepare(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Shop, features (catalogue-wide vocabulary), registered model and a filled store, cached by key."""
    work: Path = args.work
    marker = work / "prepared.json"
    key = _prep_key(args)
    if marker.exists():
        prepared: dict[str, Any] = json.loads(marker.read_text())
        if prepared.get("key") == key:
            log(f"prepared artefacts reused from {work}")
            return prepared
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    import mlflow
    import numpy as np
    import pandas as pd

    from features.build import BuildConfig, build_features
    from features.simulate import SimConfig, simulate
    from features.vocab import Vocabulary
    from training.data import FeatureBuild
    from training.registry import CHAMPION, MODEL_NAME, configure, log_scorer
    from training.sequence import FitConfig, SequenceScorer, model_config_for

    shop, features = work / "shop", work / "features"
    log(f"simulating {args.customers:,} customers, {args.items:,} items, {args.days} days")
    simulate(
        SimConfig(n_customers=args.customers, n_items=args.items, days=args.days, seed=args.seed),
        shop,
        progress=False,
    )
    log("building features")
    build_features(
        shop / "events", features, BuildConfig(), decisions=shop / "decisions.parquet", progress=False
    )

    # The whole catalogue in the vocabulary: the fitted items keep their indices (so the rows stay valid),
    # the rest of the catalogue follows, most popular first.
    vocab = Vocabulary.load(features / "vocab.json")
    fitted = list(vocab.tokens["item_id"])
    catalog = pd.read_parquet(shop / "catalog.parquet").sort_values(
        ["popularity", "item_id"], ascending=[False, True], kind="stable"
    )
    known = set(fitted)
    appended = [i for i in catalog["item_id"].astype(str) if i not in known]
    vocab.tokens["item_id"] = fitted + appended
    vocab.counts["item_id"] = list(vocab.counts.get("item_id", [0] * len(fitted))) + [0] * len(appended)
    vocab.save(features / "vocab.json")
    manifest = json.loads((features / "manifest.json").read_text())
    manifest["vocab_sizes"]["item_id"] = vocab.size("item_id")
    manifest["token_sizes"]["item_id"] = vocab.size("item_id")
    manifest["catalogue_extension"] = {"fitted": len(fitted), "appended": len(appended)}
    (features / "manifest.json").write_text(json.dumps(manifest, indent=2))

    build = FeatureBuild.open(features)
    train, valid = build.split("train"), build.split("valid")
    if len(valid) > args.valid_rows:
        rng = np.random.default_rng(args.seed)
        valid = valid.subset(np.sort(rng.choice(len(valid), args.valid_rows, replace=False)))
    model_config = model_config_for(build)
    fit = FitConfig(
        max_epochs=args.epochs, patience=args.epochs, max_train_rows=args.train_rows, seed=args.seed
    )
    log(
        f"training on {min(len(train), args.train_rows or len(train)):,} of {len(train):,} rows, "
        f"{args.epochs} epochs, {build.n_items:,} item indices"
    )
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    scorer = SequenceScorer(model_config, fit, progress=False).fit(train, valid)

    events = _shop_events(shop)
    os.environ["MLFLOW_TRACKING_URI"] = _tracking_uri(work)
    configure("serving-load")
    log("registering the model")
    with mlflow.start_run(run_name="serving-load-benchmark"):
        version = str(log_scorer(scorer, build.vocab, events.head(20)))
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version)

    stored, inline, now = choose_customers(events, args.stored_customers, args.inline_customers, args.seed)
    log(f"filling the store with the histories of {len(stored):,} customers")
    from serving.store import open_store

    history = events[events["customer_id"].isin(set(stored))]
    with open_store(f"sqlite:///{work / 'store-seed.db'}", max_events=HISTORY_LEN) as store:
        for lo in range(0, len(history), 50_000):
            store.append_events(history.iloc[lo : lo + 50_000])
    prepared = {
        "key": key,
        "customers": args.customers,
        "events": len(events),
        "shop_items": len(catalog),
        "items_fitted": len(fitted),
        "items_appended": len(appended),
        "catalogue_size": len(fitted) + len(appended),
        "model": f"{model_config.encoder}, d_model {model_config.d_model}, {model_config.n_layers} layers, "
        f"max_len {model_config.max_len}",
        "epochs": len(scorer.history_) or args.epochs,
        "train_rows": min(len(train), args.train_rows or len(train)),
        "version": version,
        "stored_customers": len(stored),
        "stored_events": len(history),
        "inline_customers": len(inline),
        "now": now,
        "seconds": round(time.perf_counter() - started, 1),
    }
    marker.write_text(json.dumps(prepared, indent=2))
    log(f"prepared in {prepared['seconds']:.0f} s")
    return prepared


def _tracking_uri(work: Path) -> str:
    return f"sqlite:///{(work / 'mlruns' / 'mlflow.db').resolve()}"


def _shop_events(shop: Path) -> Any:
    import pandas as pd

    events = pd.read_parquet(shop / "events")
    for col in events.columns:
        if isinstance(events[col].dtype, pd.CategoricalDtype):
            events[col] = events[col].astype(object)
    return events.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)


def choose_customers(
    events: Any, n_stored: int, n_inline: int, seed: int
) -> tuple[list[str], list[str], str]:
    """Customers for the stored path (at least 5 events) and the inline path (at least INLINE_EVENTS
    events, none of them stored), drawn with a seed; `now`: noon of the day after the last event."""
    import numpy as np
    import pandas as pd

    counts = events["customer_id"].value_counts().sort_index()
    rng = np.random.default_rng(seed)
    inline_pool = np.asarray(counts[counts >= INLINE_EVENTS].index, dtype=object)
    inline = sorted(rng.choice(inline_pool, min(n_inline, len(inline_pool)), replace=False).tolist())
    rest = counts[(counts >= 5) & ~counts.index.isin(inline)]
    stored_pool = np.asarray(rest.index, dtype=object)
    stored = rng.choice(stored_pool, min(n_stored, len(stored_pool)), replace=False).tolist()
    now = (pd.Timestamp(events["ts"].max()).normalize() + pd.Timedelta(hours=36)).isoformat()
    return stored, inline, now


def event_rows(events: Any) -> list[dict[str, Any]]:
    """Events as JSON-ready rows of the API's contract (missing fields left out)."""
    import pandas as pd

    rows = []
    for r in events.to_dict(orient="records"):
        row = {k: v for k, v in r.items() if v is not None and not (isinstance(v, float) and math.isnan(v))}
        row["ts"] = pd.Timestamp(r["ts"]).isoformat()
        rows.append(row)
    return rows


def request_bodies(prepared: dict[str, Any], shop: Path) -> tuple[list[str], list[str], list[str]]:
    """JSON bodies of the stored path, the inline path and MLflow's `/invocations` (the inline events)."""
    from features.schema import EVENT_COLUMNS

    events = _shop_events(shop)
    stored, inline, now = choose_customers(
        events, prepared["stored_customers"], prepared["inline_customers"], prepared["key"]["seed"]
    )
    context = {"now": now, "channels": ["email"], "n_items": N_ITEMS_ANSWERED}
    stored_bodies = [json.dumps({"customer_id": c, "context": context}) for c in stored]
    last = events[events["customer_id"].isin(set(inline))].groupby("customer_id").tail(INLINE_EVENTS)
    inline_events = {str(c): event_rows(g) for c, g in last.groupby("customer_id", sort=True)}
    inline_bodies = []
    mlflow_bodies = []
    for c, rows in inline_events.items():
        inline_bodies.append(json.dumps({"customer_id": c, "events": rows, "context": context}))
        data = [[row.get(col) for col in EVENT_COLUMNS] for row in rows]
        mlflow_bodies.append(
            json.dumps(
                {
                    "dataframe_split": {"columns": list(EVENT_COLUMNS), "data": data},
                    "params": {"now": now, "k": N_ITEMS_ANSWERED},
                }
            )
        )
    return stored_bodies, inline_bodies, mlflow_bodies


# ---------------------------------------------------------------------------------------------------------
# In-process measurements: the floor, batch scoring, the profile


def _timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    fn()  # warm caches and lazy initialisation
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": round(statistics.median(times), 4),
        "p99_ms": round(percentile(times, 99), 4),
        "runs": runs,
    }


class InProcess:
    """The registered model and a `Service` over a copy of the store, in this process."""

    def __init__(self, work: Path, prepared: dict[str, Any], torch_threads: int) -> None:
        import torch

        from serving.model import ModelManager, load_version
        from serving.service import Service
        from serving.settings import ServeSettings
        from serving.store import open_store
        from training.registry import CHAMPION, MODEL_NAME

        torch.set_num_threads(torch_threads)  # as the server's lifespan does
        for suffix in ("", "-wal", "-shm"):
            Path(f"{work / 'inproc.db'}{suffix}").unlink(missing_ok=True)
        shutil.copyfile(work / "store-seed.db", work / "inproc.db")
        self.model = load_version(MODEL_NAME, prepared["version"], CHAMPION)
        self.store = open_store(f"sqlite:///{work / 'inproc.db'}", max_events=HISTORY_LEN)
        manager = ModelManager(MODEL_NAME, CHAMPION, current=self.model)
        settings = ServeSettings(api_keys=(API_KEY,), reload_interval_s=0, torch_threads=torch_threads)
        self.service = Service(settings, self.store, manager)

    def answer(self, body: str) -> str:
        """What `POST /v1/score` does with a body, without HTTP: parse, events frame, score, answer JSON."""
        from serving import schemas
        from serving.service import CustomerRequest, events_frame

        req = schemas.ScoreRequest.model_validate_json(body)
        ctx = req.context or schemas.ScoreContext.model_validate({})
        events = events_frame([e.model_dump() for e in req.events], req.customer_id, where="events")
        channels = {c.value for c in ctx.channels} if ctx.channels is not None else None
        request = CustomerRequest(req.customer_id, events, ctx.now, channels, ctx.n_items)
        out = self.service.score([request])[0]
        return schemas.ScoreResponse.model_validate(out).model_dump_json()

    def close(self) -> None:
        self.store.close()


def measure_floor(
    inproc: InProcess,
    stored_bodies: list[str],
    inline_bodies: list[str],
    now: str,
    runs: int,
    threads: Sequence[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Median times of each step on one customer, at each torch thread count."""
    import itertools

    import numpy as np
    import pandas as pd
    import torch

    from features.encoder import TOKEN_FIELDS, encode
    from serving.scoring import score_customers
    from training.data import from_encoded

    model = inproc.model
    vocab = model.pyfunc.vocab
    when = pd.Timestamp(now).to_pydatetime()
    customer = json.loads(stored_bodies[0])["customer_id"]
    events = inproc.store.events([customer])
    ids = np.array([customer], dtype=object)
    cutoffs = pd.DataFrame({"customer_id": ids, "cutoff": pd.to_datetime([when], utc=True)})
    config = model.scorer.model_config
    batch = encode(events, cutoffs, vocab, model.encoder_config)
    data = from_encoded(batch, ids, config.n_items, config.targets)
    tokens = {n: torch.from_numpy(data.tokens[n]) for n in TOKEN_FIELDS}
    aggregates = torch.from_numpy(data.aggregates)
    net = model.scorer.model_
    stored_cycle = itertools.cycle(stored_bodies[1:])
    inline_cycle = itertools.cycle(inline_bodies)

    def forward() -> None:
        with torch.inference_mode():
            net(tokens, aggregates)

    steps: dict[str, Callable[[], Any]] = {
        "encode": lambda: encode(events, cutoffs, vocab, model.encoder_config),
        "forward": forward,
        "predict": lambda: model.scorer.predict(data, k=N_ITEMS_ANSWERED),
        "score_customers": lambda: score_customers(model, events, ids, [when], N_ITEMS_ANSWERED),
        "service_stored": lambda: inproc.answer(next(stored_cycle)),
        "service_inline": lambda: inproc.answer(next(inline_cycle)),
    }
    out: dict[str, Any] = {name: {} for name in steps}
    previous = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for name, fn in steps.items():
                # Other thread counts: the model alone (what a second intra-op thread could speed up).
                if t != threads[0] and name not in ("forward", "predict"):
                    continue
                out[name][str(t)] = _timed(fn, runs)
                log(f"  floor {name} (threads {t}): median {out[name][str(t)]['median_ms']:.3f} ms")
    finally:
        torch.set_num_threads(previous)
    out["history_events"] = len(events)
    return out


def measure_batch_inprocess(
    inproc: InProcess, stored: list[str], now: str, size: int, calls: int, threads: Sequence[int]
) -> dict[str, Any]:
    """customers/s of `Service.score` and of the bare `SequenceScorer.predict` on `size` customers."""
    import numpy as np
    import pandas as pd
    import torch

    from features.encoder import encode
    from serving.scoring import empty_events
    from serving.service import CustomerRequest
    from training.data import from_encoded

    model = inproc.model
    when = pd.Timestamp(now).to_pydatetime()
    groups = [stored[(i * size) % len(stored) :][:size] for i in range(calls + 1)]
    empty = empty_events()
    ids = np.array(groups[0], dtype=object)
    events = inproc.store.events(list(ids))
    cutoffs = pd.DataFrame({"customer_id": ids, "cutoff": pd.to_datetime([when] * len(ids), utc=True)})
    config = model.scorer.model_config
    data = from_encoded(
        encode(events, cutoffs, model.pyfunc.vocab, model.encoder_config), ids, config.n_items, config.targets
    )
    out: dict[str, Any] = {"service": {"by_threads": {}}, "predict": {"by_threads": {}}}
    previous = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            model.scorer.predict(data, k=N_ITEMS_ANSWERED)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                model.scorer.predict(data, k=N_ITEMS_ANSWERED)
                times.append(time.perf_counter() - started)
            out["predict"]["by_threads"][str(t)] = _rate_of(times, len(ids))
            times = []
            for g in groups[1:]:
                requests = [CustomerRequest(c, empty, when, {"email"}, N_ITEMS_ANSWERED) for c in g]
                started = time.perf_counter()
                inproc.service.score(requests)
                times.append(time.perf_counter() - started)
            out["service"]["by_threads"][str(t)] = _rate_of(times, len(groups[1]))
    finally:
        torch.set_num_threads(previous)
    return out


def _rate_of(times: list[float], size: int) -> dict[str, Any]:
    return {
        "customers_per_request": size,
        "calls": len(times),
        "customers_per_s": round(size * len(times) / sum(times), 1),
        "median_s": round(statistics.median(times), 4),
    }


def measure_batch_http(base: str, stored: list[str], now: str, size: int, calls: int) -> dict[str, Any]:
    """customers/s through `POST /v1/score/batch`, one request after another (a batch client's way)."""
    context = {"now": now, "channels": ["email"], "n_items": N_ITEMS_ANSWERED}
    bodies = []
    for i in range(calls + 1):
        group = stored[(i * size) % len(stored) :][:size]
        bodies.append(
            json.dumps({"customers": [{"customer_id": c, "context": context} for c in group]}).encode()
        )
    status, _ = post_json(f"{base}/v1/score/batch", bodies[0])  # warm-up
    times, errors = [], int(status != 200)
    for body in bodies[1:]:
        started = time.perf_counter()
        status, _ = post_json(f"{base}/v1/score/batch", body)
        times.append(time.perf_counter() - started)
        errors += int(status != 200)
    size_done = len(json.loads(bodies[1])["customers"])
    return {**_rate_of(times, size_done), "errors": errors}


def profile_service(
    inproc: InProcess, stored_bodies: list[str], inline_bodies: list[str], calls: int, top: int = 12
) -> dict[str, Any]:
    """cProfile of the route's work in process (`InProcess.answer`), one customer per call."""
    import cProfile
    import pstats

    out: dict[str, Any] = {}
    for name, bodies in (("stored", stored_bodies), ("inline", inline_bodies)):
        inproc.answer(bodies[-1])
        prof = cProfile.Profile()
        started = time.perf_counter()
        prof.enable()
        for i in range(calls):
            inproc.answer(bodies[(i + 101) % len(bodies)])
        prof.disable()
        wall = time.perf_counter() - started
        out[name] = _profile_summary(pstats.Stats(prof), calls, wall, top)
    return out


# The steps of one request, as (label, file, function) of the profiled code.
BREAKDOWN: tuple[tuple[str, str, str], ...] = (
    ("the route's work (parse, score, answer model)", "benchmarks/serving_load.py", "answer"),
    ("inline events to a frame (`events_frame`)", "serving/service.py", "events_frame"),
    ("  of which the event validator (`validate_events`)", "features/validate.py", "validate_events"),
    ("`Service.score`", "serving/service.py", "score"),
    ("  store: the customer's events", "serving/store.py", "events"),
    ("  sort of the merged events", "pandas/core/frame.py", "sort_values"),
    ("  `score_customers`", "serving/scoring.py", "score_customers"),
    ("    encoder", "features/encoder.py", "encode"),
    ("    model (`SequenceScorer.predict`)", "training/sequence.py", "predict"),
    ("  store: send state", "serving/store.py", "send_state"),
    ("  answer per customer (`_answer`)", "serving/service.py", "_answer"),
    ("    store: commit the decision", "serving/store.py", "commit_decision"),
    ("    reasons in words", "serving/scoring.py", "reasons_for"),
)


def _breakdown(stats: Any, calls: int) -> dict[str, float]:
    """Cumulative ms per call of each step of `BREAKDOWN` found in the profile."""
    out: dict[str, float] = {}
    for label, path, func in BREAKDOWN:
        cum = sum(
            v[3] for (filename, _, name), v in stats.stats.items() if name == func and filename.endswith(path)
        )
        if cum:
            out[label] = round(cum / calls * 1000, 3)
    return out


def _profile_summary(stats: Any, calls: int, wall: float, top: int) -> dict[str, Any]:
    """Top functions by own time, and own time by area (our packages, torch, pandas, numpy, sqlite, ...)."""
    entries = []
    areas: dict[str, float] = {}
    total = 0.0
    for (filename, line, func), (_, _, own, cum, _) in stats.stats.items():
        total += own
        area = _area(filename, func)
        areas[area] = areas.get(area, 0.0) + own
        short = filename
        for marker in ("site-packages/", str(ROOT) + "/"):
            if marker in short:
                short = short.split(marker, 1)[1]
        entries.append((own, cum, f"{short}:{line}({func})" if line else func))
    entries.sort(reverse=True)
    ordered = dict(sorted(((k, v / total) for k, v in areas.items()), key=lambda kv: -kv[1]))
    return {
        "calls": calls,
        "ms_per_call": round(wall / calls * 1000, 3),
        "areas": {k: round(v, 3) for k, v in ordered.items() if v >= 0.01},
        "breakdown": _breakdown(stats, calls),
        "top": [
            {"function": name, "own_ms": round(own / calls * 1000, 4), "cum_ms": round(cum / calls * 1000, 4)}
            for own, cum, name in entries[:top]
        ],
    }


def _area(filename: str, func: str) -> str:
    for pkg in ("serving", "features", "training"):
        if f"{ROOT}/{pkg}/" in filename:
            return f"{pkg}/"
    for lib in ("torch", "pandas", "numpy", "mlflow", "sqlite3", "json", "hashlib", "uuid"):
        if f"/{lib}/" in filename or f"{lib}." in func or f"'{lib}." in func:
            return lib
    if filename == "~":
        if "sqlite3" in func:
            return "sqlite3"
        if "torch" in func or "_C." in func:
            return "torch"
        if "numpy" in func:
            return "numpy"
        return "builtins"
    return "other Python"


# ---------------------------------------------------------------------------------------------------------
# The run


def machine_info() -> dict[str, Any]:
    import mlflow
    import numpy as np
    import pandas as pd
    import psutil
    import torch

    processor = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                processor = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "processor": processor,
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "mlflow": mlflow.__version__,
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "fastapi": _version("fastapi"),
            "uvicorn": _version("uvicorn"),
            "aiohttp": _version("aiohttp"),
        },
    }


def _version(name: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    args.work = args.work.resolve()
    if args.nice:  # the in-process measurements too (this process and the session it runs in)
        prioritise = prioritised(args.nice)
        assert prioritise is not None
        prioritise()
    uri = _tracking_uri(args.work)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    prepared = prepare(args, log)
    if args.prepare_only:
        raise SystemExit(0)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    import mlflow

    mlflow.set_tracking_uri(uri)
    stored_bodies, inline_bodies, mlflow_bodies = request_bodies(prepared, args.work / "shop")
    stored_ids = [json.loads(b)["customer_id"] for b in stored_bodies]
    now = prepared["now"]

    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "JOURNEY_API_KEYS": API_KEY,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    results: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(),
        "prepared": prepared,
        "now": now,
        "torch_threads": args.torch_threads,
        "nice": args.nice,
        "rates": sorted(args.rates),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "timeout_s": args.timeout,
        "sweeps": {},
        "skipped": {},
        "notes": [],
    }

    # The journey server, on a fresh copy of the prepared store.
    online = args.work / "online.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{online}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(args.work / "store-seed.db", online)
    port = free_port()
    base = f"http://{HOST}:{port}"
    serve = [
        str(bin_dir / "journey"),
        "serve",
        "--host",
        HOST,
        "--port",
        str(port),
        "--store",
        f"sqlite:///{online}",
        "--set",
        "reload_interval_s=0",
        "--set",
        f"torch_threads={args.torch_threads}",
        # The requests replay the simulated shop at its own (past) times: a benchmark's clock, not a client's.
        "--set",
        "max_clock_skew_s=3153600000",
        "--log-level",
        "warning",
    ]
    log("starting journey serve")
    serve_log = args.work / "journey-serve.log"
    with running(serve, env, f"{base}/readyz", serve_log, nice=args.nice) as proc:
        inproc = InProcess(args.work, prepared, args.torch_threads)
        try:
            log("the floor (server idle)")
            threads = [args.torch_threads, *sorted({1, 2} - {args.torch_threads})]
            results["floor"] = measure_floor(
                inproc, stored_bodies, inline_bodies, now, args.floor_runs, threads, log
            )
            headers = {"X-API-Key": API_KEY}
            for path, bodies in (("stored", stored_bodies), ("inline", inline_bodies)):
                name = f"journey serve, {path}"
                log(f"load: {name}")
                rows, skipped = sweep(name, f"{base}/v1/score", bodies, args, proc, serve_log, headers, log)
                results["sweeps"][name] = rows
                if skipped:
                    results["skipped"][name] = skipped
            name = "journey serve, GET /v1/model (no scoring)"
            log(f"load: {name}")
            wait_idle(proc.pid)
            row = run_load(f"{base}/v1/model", [""], TARGET_RATE, args, proc.pid, headers, method="GET")
            check_alive(proc, serve_log)
            results["http_floor"] = row
            log(
                f"  {name} at {TARGET_RATE:g}/s: p50 {_ms(row['latency_p50_ms'])} "
                f"p99 {_ms(row['latency_p99_ms'])} ms"
            )
            log("batch scoring")
            wait_idle(proc.pid)
            check_alive(proc, serve_log)
            http = measure_batch_http(base, stored_ids, now, args.batch_size, args.batch_calls)
            results["batch"] = {"http": {**http, "by_threads": {str(args.torch_threads): http}}}
            log(f"  /v1/score/batch: {http['customers_per_s']:,.0f} customers/s")
            results["batch"].update(
                measure_batch_inprocess(
                    inproc,
                    stored_ids,
                    now,
                    args.batch_size,
                    args.batch_calls,
                    sorted({args.torch_threads, 2}),
                )
            )
            log("profiling Service.score in process")
            results["profile"] = profile_service(inproc, stored_bodies, inline_bodies, args.profile_calls)
        finally:
            inproc.close()

    mlflow_port = free_port()
    mlflow_serve = [
        str(bin_dir / "mlflow"),
        "models",
        "serve",
        "-m",
        "models:/journey-scorer@champion",
        "--env-manager",
        "local",
        "-p",
        str(mlflow_port),
        "--host",
        HOST,
    ]
    mlflow_env = {**env, "MLFLOW_MODELS_WORKERS": "1", "OMP_NUM_THREADS": str(args.torch_threads)}
    if not args.skip_mlflow:
        log("starting mlflow models serve")
        mlflow_base = f"http://{HOST}:{mlflow_port}"
        mlflow_log = args.work / "mlflow-serve.log"
        with running(mlflow_serve, mlflow_env, f"{mlflow_base}/ping", mlflow_log, nice=args.nice) as proc:
            status, body = post_json(f"{mlflow_base}/invocations", mlflow_bodies[0].encode())
            if status != 200:
                raise RuntimeError(f"mlflow serve answered {status}: {body[:2000]!r}")
            name = "mlflow models serve, inline"
            log(f"load: {name}")
            rows, skipped = sweep(
                name, f"{mlflow_base}/invocations", mlflow_bodies, args, proc, mlflow_log, {}, log
            )
            results["sweeps"][name] = rows
            if skipped:
                results["skipped"][name] = skipped
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("/tmp/journey-serving-load"), help="cache and scratch")
    p.add_argument("--customers", type=int, default=20_000, help="customers of the simulated shop")
    p.add_argument("--items", type=int, default=100_000, help="items of the shop's catalogue")
    p.add_argument("--days", type=int, default=182)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-rows", type=int, default=8_000, help="training rows sampled (0: all)")
    p.add_argument("--valid-rows", type=int, default=2_000, help="validation rows sampled")
    p.add_argument("--stored-customers", type=int, default=4_000)
    p.add_argument("--inline-customers", type=int, default=1_000)
    p.add_argument("--rates", type=float, nargs="+", default=[25, 50, 75, 100, 150, 200, 300, 400])
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds at the rate before measuring")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=float, default=5.0, help="a request unanswered this long is an error")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20.0,
        help="before each run, wait up to this many seconds for other processes to leave the CPU idle",
    )
    p.add_argument("--quiet-threshold", type=float, default=0.15, help="busy share counted as idle")
    p.add_argument("--no-stop", action="store_true", help="run every rate even after one was not held")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the servers, the generator and the in-process measurements at this niceness, each "
        "server and generator in its own session (negative values need root; keeps other sessions' "
        "work from taking the cores mid-run on a shared machine)",
    )
    p.add_argument("--floor-runs", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=1_000)
    p.add_argument("--batch-calls", type=int, default=4)
    p.add_argument("--profile-calls", type=int, default=300)
    p.add_argument("--skip-mlflow", action="store_true")
    p.add_argument("--prepare-only", action="store_true", help="build the cached artefacts and stop")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "serving_load.json")
    p.add_argument("--markdown", type=Path, default=None, help="also write the section into this file")
    p.add_argument("--from-json", type=Path, default=None, help="render an earlier run's JSON, no measuring")
    p.add_argument(
        "--baseline", type=Path, default=None, help="an earlier run's JSON, shown as 'before' beside this run"
    )
    p.add_argument("--baseline-label", default="before the hot-path changes")
    p.add_argument("--generate", nargs=2, type=Path, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p


def _command_line(argv: Sequence[str]) -> str:
    return shlex.join([".venv/bin/python", "benchmarks/serving_load.py", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.generate:
        generate(*args.generate)
        return 0
    results = json.loads(args.from_json.read_text()) if args.from_json else run(args, _command_line(argv))
    if args.baseline:
        before = json.loads(args.baseline.read_text())
        results["baseline"] = {
            "label": args.baseline_label,
            "date": before.get("date"),
            "figures": before.get("baseline_figures") or key_figures(before),
        }
    results["figures"] = key_figures(results)
    results["targets"] = targets(results)
    section = render_markdown(results)
    if args.from_json:
        args.from_json.with_suffix(".md").write_text(section)
    else:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        args.json.with_suffix(".md").write_text(section)
    print(section)
    if args.markdown:
        from benchmarks.sections import update_section

        update_section(args.markdown, section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
