"""The steps of one load-benchmark run (`benchmarks.serving_load`), each filling its part of the
results: the in-process measurements, the audience export, one `journey serve` per worker count (both
paths' sweeps, the framework alone, batch) and `mlflow models serve`. A step that cannot run (a server
that does not start, an option the CLI lacks) records why in `not_run` and `notes` instead of failing.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.load_client import LoadPlan
from benchmarks.load_prepare import Bodies
from benchmarks.load_protocol import API_KEY, HOST, JOURNEY, MLFLOW, TARGET_RATE, sweep_name, threads_for

# The libraries on the hot path, whose versions the results record (`benchmarks._harness.machine_info`).
HOT_PATH = ("torch", "mlflow", "pandas", "numpy", "fastapi", "uvicorn", "aiohttp", "pydantic")


@dataclass(frozen=True)
class RunContext:
    """What every step shares: the venv's scripts, the servers' environment, how each load run goes,
    the scoring time, the machine's cores and the request bodies."""

    bin_dir: Path
    env: dict[str, str]
    plan: LoadPlan
    now: str
    cores: int
    bodies: Bodies


def server_run(
    args: argparse.Namespace,
    ctx: RunContext,
    results: dict[str, Any],
    workers: int,
    workers_option: bool,
    log: Callable[[str], None],
) -> None:
    """One `journey serve` with `workers` workers: both paths' sweeps, the framework alone, batch."""
    from benchmarks.load_batch import measure_batch_http
    from benchmarks.load_client import run_load, sweep
    from benchmarks.load_servers import check_alive, free_port, fresh_copy, journey_serve_command, running

    threads = threads_for(workers, ctx.cores, args.torch_threads)
    server: dict[str, Any] = {"workers": workers, "torch_threads": threads, "ran": True}
    results["servers"].append(server)
    names = [sweep_name(JOURNEY, p, workers) for p in ("stored", "inline")]
    if workers != 1 and not workers_option:
        server.update(ran=False, reason="`journey serve` has no `--workers` option in this checkout")
        for name in names:
            results["not_run"][name] = server["reason"]
        return
    store_url = fresh_copy(args.work / "store-seed.db", args.work / f"online-w{workers}.db")
    port = free_port()
    base = f"http://{HOST}:{port}"
    command = journey_serve_command(ctx.bin_dir, port, store_url, workers, threads, workers_option)
    server_log = args.work / f"journey-serve-w{workers}.log"
    headers = {"X-API-Key": API_KEY}
    log(f"starting {shlex.join(command[1:])}")
    try:
        with running(
            command, ctx.env, f"{base}/readyz", server_log, nice=args.nice, ready_streak=5 * workers
        ) as proc:
            for path, name in zip(("stored", "inline"), names, strict=True):
                log(f"load: {name}")
                bodies = ctx.bodies.stored if path == "stored" else ctx.bodies.inline
                rows, skipped = sweep(
                    name, f"{base}/v1/score", bodies, args.rates, ctx.plan, proc, server_log, headers, log
                )
                results["sweeps"][name] = rows
                results["sweep_info"][name] = {
                    "server": JOURNEY,
                    "path": path,
                    "workers": workers,
                    "torch_threads": threads,
                }
                if skipped:
                    results["skipped"][name] = skipped
            row = run_load(f"{base}/v1/model", [""], TARGET_RATE, ctx.plan, proc.pid, headers, "GET")
            check_alive(proc, server_log)
            results["http_floor"][str(workers)] = row
            log(f"  GET /v1/model at {TARGET_RATE:g}/s: p99 {row['latency_p99_ms']} ms")
            check_alive(proc, server_log)
            http = measure_batch_http(base, ctx.bodies.stored_ids, ctx.now, args.batch_size, args.batch_calls)
            results["batch"]["http_by_workers"][str(workers)] = http
            log(f"  /v1/score/batch: {http['customers_per_s']:,.0f} customers/s")
    except RuntimeError as err:  # a server that did not start or died: said in the results, run goes on
        server.update(ran=False, reason=str(err).splitlines()[0])
        for name in names:
            if name not in results["sweeps"]:
                results["not_run"][name] = server["reason"]
        results["notes"].append(f"`journey serve` with {workers} worker(s): {err}")
        log(f"  failed: {err}")


def mlflow_run(
    args: argparse.Namespace, ctx: RunContext, results: dict[str, Any], log: Callable[[str], None]
) -> None:
    """`mlflow models serve` on the same model (one worker, the one-worker threads), the inline events."""
    from benchmarks.load_client import sweep
    from benchmarks.load_servers import free_port, mlflow_env, mlflow_serve_command, post_json, running
    from predictor.registry import CHAMPION, MODEL_NAME, model_uri

    name = sweep_name(MLFLOW, "inline")
    threads = threads_for(1, ctx.cores, args.torch_threads)
    results["mlflow_server"] = {"workers": 1, "torch_threads": threads}
    if args.skip_mlflow:
        results["not_run"][name] = "--skip-mlflow"
        return
    port = free_port()
    base = f"http://{HOST}:{port}"
    command = mlflow_serve_command(ctx.bin_dir, port, model_uri(MODEL_NAME, alias=CHAMPION))
    server_log = args.work / "mlflow-serve.log"
    log("starting mlflow models serve")
    try:
        with running(
            command, mlflow_env(ctx.env, 1, threads), f"{base}/ping", server_log, nice=args.nice
        ) as proc:
            status, body = post_json(f"{base}/invocations", ctx.bodies.mlflow[0].encode())
            if status != 200:
                raise RuntimeError(f"mlflow serve answered {status}: {body[:2000]!r}")
            log(f"load: {name}")
            rows, skipped = sweep(
                name,
                f"{base}/invocations",
                ctx.bodies.mlflow,
                args.mlflow_rates,
                ctx.plan,
                proc,
                server_log,
                {},
                log,
            )
            results["sweeps"][name] = rows
            results["sweep_info"][name] = {
                "server": MLFLOW,
                "path": "inline",
                "workers": 1,
                "torch_threads": threads,
            }
            if skipped:
                results["skipped"][name] = skipped
    except RuntimeError as err:
        results["not_run"][name] = str(err).splitlines()[0]
        results["notes"].append(f"`mlflow models serve`: {err}")


def in_process(
    args: argparse.Namespace, ctx: RunContext, results: dict[str, Any], log: Callable[[str], None]
) -> None:
    """The floor, batch in process and the profile, with no server running. Entry points that the
    service's rewrite removed or renamed (an import or attribute error) end the step, with the reason in
    the results, not the run."""
    from benchmarks.load_inprocess import InProcess, measure_batch_inprocess, measure_floor
    from benchmarks.load_profile import profile_service

    first = threads_for(args.workers[0], ctx.cores, args.torch_threads)
    counts = [
        first,
        *sorted({1, *(threads_for(w, ctx.cores, args.torch_threads) for w in args.workers)} - {first}),
    ]
    results["floor_threads"] = first
    bodies, now = ctx.bodies, ctx.now
    try:
        inproc = InProcess(args.work, first)
    except (ImportError, AttributeError, TypeError, RuntimeError) as err:
        results["not_run"]["in_process"] = f"{type(err).__name__}: {err}"
        results["notes"].append(f"in-process measurements not run: {type(err).__name__}: {err}")
        return
    try:
        log("the floor")
        results["floor"] = measure_floor(
            inproc, bodies.stored, bodies.inline, now, args.floor_runs, counts, log
        )
        log("batch scoring in process")
        results["batch"].update(
            measure_batch_inprocess(
                inproc, bodies.stored_ids, now, args.batch_size, args.batch_calls, sorted(set(counts))
            )
        )
        log("profiling Service.score in process")
        results["profile"] = profile_service(inproc, bodies.stored, bodies.inline, args.profile_calls)
    except (ImportError, AttributeError, TypeError) as err:
        results["not_run"]["in_process"] = f"{type(err).__name__}: {err}"
        results["notes"].append(f"in-process measurements stopped: {type(err).__name__}: {err}")
    finally:
        inproc.close()


def audience(
    args: argparse.Namespace, ctx: RunContext, results: dict[str, Any], log: Callable[[str], None]
) -> None:
    """`journey score-audience` over the first `--audience-customers` customers of the shop."""
    from benchmarks.load_batch import measure_audience
    from benchmarks.load_prepare import audience_segment

    if args.audience_customers <= 0 or args.audience_repeats <= 0:
        results["not_run"]["audience"] = "--audience-customers 0"
        return
    segment = args.work / "audience-segment.csv"
    n = audience_segment(args.work / "shop", args.audience_customers, segment)
    if n < args.audience_customers:
        results["notes"].append(f"the shop has {n:,} customers, fewer than --audience-customers")
    log(f"journey score-audience over {n:,} customers, {args.audience_repeats} time(s)")
    try:
        results["audience"] = measure_audience(
            ctx.bin_dir,
            ctx.env,
            args.work,
            segment,
            ctx.now,
            args.audience_repeats,
            args.audience_chunk,
            args.nice,
        )
        log(f"  {results['audience']['customers_per_s']:,.0f} customers/s (median)")
    except (RuntimeError, ValueError) as err:
        results["not_run"]["audience"] = str(err).splitlines()[0]
        results["notes"].append(f"`journey score-audience`: {err}")
