"""`journey serve` under open-loop load at fixed request rates, with 1 and 2 workers, beside the model's
floor, batch scoring, the audience export and MLflow's own server, against the targets of issue 11.

    .venv/bin/python -m benchmarks.serving_load --work /tmp/journey-serving-load --markdown BENCHMARKS.md

What it does, in one run:

1. Prepares, cached in `--work` (outside the repository; `benchmarks/load_prepare.py`): a simulated shop
   with a 100,000-item catalogue (every item in the model's vocabulary), its features, a small sequence
   model registered as `journey-scorer@champion` in an MLflow store under `--work`, and an online store
   (SQLite) holding the histories of the customers to be scored.
2. In this process, no server running (`load_inprocess.py`, `load_profile.py`): the floor (one
   customer's encoder, the bare network forward, the predictor's answer, the route's work on each path:
   medians of many runs), `Service.score` and the predictor alone on 1,000 customers, and a cProfile of
   `Service.score` per path whose own time is grouped by area (validation, JSON, the store, the encoder,
   the model forward, pandas, numpy, decisions and rules, ...) by the module path of each function.
3. `journey score-audience` over the first `--audience-customers` customers of the shop, `--audience-
   repeats` times into fresh stores: customers/s, median (`load_batch.py`).
4. For each `--workers` count: `journey serve --workers N` with max(1, cores // N) torch threads each
   (`--torch-threads`), on a fresh copy of the store, ready when every worker answers `/readyz` and the
   processes are idle (`load_servers.py`). `POST /v1/score` driven from a separate, light process on a
   fixed schedule whatever the answers (open loop: latency runs from each request's scheduled send time;
   `load_generator.py`, `load_client.py`) for the stored-history path (customer_id only) and the inline
   path (customer_id + 20 events), at each `--rates` for `--duration` seconds after a `--warmup`; a
   sweep stops at the first rate it does not hold (errors, or the generator falling behind). Then the
   framework alone (`GET /v1/model` at 200 requests/s) and `POST /v1/score/batch` (1,000 customers per
   request). Where `journey serve` has no `--workers` option, the counts above 1 are reported as not run.
5. `mlflow models serve --env-manager local` on the same registered model (one worker, the one-worker
   threads), `/invocations` with the same inline events at each `--mlflow-rates`.
6. Verdicts on the targets (`load_targets.py`): p99 <= 10 ms at 200 requests/s on the stored path with 0
   errors, per worker count; the highest rate held at least 5x MLflow's; batch and audience at least
   5,000 customers/s. Writes `benchmarks/results/serving_load.json`, `benchmarks/results/serving_load.md`
   and, with `--markdown`, the section between `<!-- serving_load:start -->` and
   `<!-- serving_load:end -->` (`load_report.py`).

The load generator shares the machine's cores with the server; its own CPU time is recorded per run, and
so is the CPU that other processes took meanwhile (`other_cpu_share`). Every `/v1/score` records a
decision in the store (the route's real work), so each server starts on a fresh copy of the prepared one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    RESULTS,
    add_from_json,
    add_markdown,
    add_nice,
    add_quiet_wait,
    add_repeats,
    add_seed,
    add_work,
    command_line,
    machine_info,
    make_parser,
    prioritised,
    update_section,
    write_json,
)
from benchmarks.load_protocol import (
    API_KEY,
    END,
    START,
    parse_list,
    positive_float,
    positive_int,
    threads_for,
)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """The whole benchmark; its results (what `render_markdown` and the JSON file hold)."""
    import time

    from benchmarks import load_steps
    from benchmarks.load_client import LoadPlan
    from benchmarks.load_prepare import ShopPlan, prepare, request_bodies, tracking_uri
    from benchmarks.load_servers import has_option, serve_help, usable_cores

    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {msg}", flush=True)

    args.work = args.work.resolve()
    if args.nice:  # the in-process measurements too (this process and the session it runs in)
        prioritise = prioritised(args.nice)
        assert prioritise is not None
        prioritise()
    uri = tracking_uri(args.work)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    shop = ShopPlan(args.customers, args.items, args.days, args.seed, args.epochs, args.train_rows,
                    args.valid_rows, args.stored_customers, args.inline_customers)  # fmt: skip
    prepared = prepare(args.work, shop, log)
    if args.prepare_only:
        raise SystemExit(0)
    import mlflow

    mlflow.set_tracking_uri(uri)
    bin_dir = Path(sys.executable).parent
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "JOURNEY_API_KEYS": API_KEY, "PATH": path}
    plan = LoadPlan(args.warmup, args.duration, args.timeout, args.repeats, args.quiet_wait,
                    args.quiet_threshold, args.nice, args.no_stop)  # fmt: skip
    bodies = request_bodies(prepared, args.work / "shop")
    ctx = load_steps.RunContext(bin_dir, env, plan, prepared["now"], usable_cores(), bodies)
    results: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine_info(load_steps.HOT_PATH),
        "prepared": prepared,
        "now": prepared["now"],
        "workers": args.workers,
        "torch_threads_setting": args.torch_threads,
        "nice": args.nice,
        "rates": sorted(args.rates),
        "mlflow_rates": sorted(args.mlflow_rates),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "timeout_s": args.timeout,
        **{key: {} for key in ("sweeps", "sweep_info", "skipped", "not_run", "http_floor")},
        "servers": [],
        "batch": {"http_by_workers": {}},
        "notes": [],
    }
    load_steps.in_process(args, ctx, results, log)
    load_steps.audience(args, ctx, results, log)
    workers_option = has_option(serve_help(bin_dir, env), "--workers")
    if not workers_option:
        results["notes"].append(
            "`journey serve --help` lists no `--workers` option: one worker was run without the option, "
            "and the sweeps of more workers were not run."
        )
    for workers in args.workers:
        load_steps.server_run(args, ctx, results, workers, workers_option, log)
    load_steps.mlflow_run(args, ctx, results, log)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__)
    add = p.add_argument
    add_work(p, Path("/tmp/journey-serving-load"), "cache and scratch")
    add("--customers", type=int, default=20_000, help="customers of the simulated shop")
    add("--items", type=int, default=100_000, help="items of the shop's catalogue")
    add("--days", type=int, default=182)
    add_seed(p)
    add("--epochs", type=int, default=2)
    add("--train-rows", type=int, default=8_000, help="training rows sampled (0: all)")
    add("--valid-rows", type=int, default=2_000, help="validation rows sampled")
    add("--stored-customers", type=int, default=4_000)
    add("--inline-customers", type=int, default=1_000)
    add("--rates", nargs="+", default=["50,100,200,300,400"], help="requests/s of journey serve's sweeps")
    add("--mlflow-rates", nargs="+", default=["10,25,50,100,200"], help="requests/s of MLflow's sweep")
    add("--workers", nargs="+", default=["1,2"], help="journey serve worker counts, e.g. 1,2")
    add(
        "--torch-threads", default="auto", help="intra-op threads per worker (auto: max(1, cores // workers))"
    )
    add("--duration", type=float, default=10.0, help="measured seconds per rate")
    add("--warmup", type=float, default=2.0, help="seconds at the rate before measuring")
    add_repeats(p, 1)
    add("--timeout", type=float, default=5.0, help="a request unanswered this long is an error")
    add_quiet_wait(p, 20.0)
    add("--quiet-threshold", type=float, default=0.15, help="busy share counted as idle")
    add("--no-stop", action="store_true", help="run every rate even after one was not held")
    add_nice(
        p,
        "run the servers, the generator and the in-process measurements at this niceness, each "
        "in its own session (negative values need root; keeps other sessions' work from taking the "
        "cores mid-run on a shared machine)",
    )
    add("--floor-runs", type=int, default=300)
    add("--batch-size", type=int, default=1_000)
    add("--batch-calls", type=int, default=4)
    add("--profile-calls", type=int, default=300)
    add(
        "--audience-customers", type=int, default=20_000, help="customers of journey score-audience (0: skip)"
    )
    add("--audience-repeats", type=int, default=3)
    add("--audience-chunk", type=int, default=5_000, help="journey score-audience --chunk")
    add("--skip-mlflow", action="store_true")
    add("--prepare-only", action="store_true", help="build the cached artefacts and stop")
    add("--json", type=Path, default=RESULTS / "serving_load.json")
    add_markdown(p)
    add_from_json(p)
    add(
        "--baseline", type=Path, default=None, help="an earlier run's JSON, shown as 'before' beside this run"
    )
    add("--baseline-label", default="before the hot-path changes")
    add("--generate", nargs=2, type=Path, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    return p


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options, with the lists parsed (`--rates 50,100 200` is 50, 100, 200) and checked."""
    p = parser()
    args = p.parse_args(argv)
    try:
        args.rates = parse_list(args.rates, positive_float, "--rates")
        args.mlflow_rates = parse_list(args.mlflow_rates, positive_float, "--mlflow-rates")
        args.workers = parse_list(args.workers, positive_int, "--workers")
        threads_for(1, 1, args.torch_threads)
    except ValueError as err:
        p.error(str(err))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.load_report import render_markdown
    from benchmarks.load_targets import key_figures, verdicts

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.generate:
        from benchmarks.load_generator import generate

        generate(*args.generate)
        return 0
    command = command_line("serving_load", argv)
    results = json.loads(args.from_json.read_text()) if args.from_json else run(args, command)
    if args.baseline:
        before = json.loads(args.baseline.read_text())
        results["baseline"] = {
            "label": args.baseline_label,
            "date": before.get("date"),
            "figures": before.get("baseline_figures") or before.get("figures") or key_figures(before),
        }
    results["figures"] = key_figures(results)
    results["verdicts"] = [v.to_dict() for v in verdicts(results)]
    section = render_markdown(results)
    if args.from_json:
        args.from_json.with_suffix(".md").write_text(section)
    else:
        write_json(args.json, results)
        args.json.with_suffix(".md").write_text(section)
    print(section)
    if args.markdown:
        update_section(args.markdown, section, START, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
