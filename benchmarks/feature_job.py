"""Feature-job benchmark: `build_features` (pandas engine) beside the same job as one DuckDB query.

Simulates shops of about the requested numbers of events (cached in a work folder outside the repository),
then runs each engine several times, each run in a fresh process, and reports the median wall time, events
per second and peak memory (resident memory summed over the process and its children, polled every
20 ms). At the smallest size the two outputs are compared row by row, so the reference is known to do the
same work (`benchmarks.feature_job_compare`).

    .venv/bin/python -m benchmarks.feature_job --sizes 1000000 10000000 --repeats 3 \\
        --markdown BENCHMARKS.md

The DuckDB query lives in `feature_job.sql`; `benchmarks.feature_job_reference` is its Python glue: the
split plan (the same `plan_splits` as the pandas job) and a few constants of the encoder go in as literals.
The results and their section: `benchmarks.feature_job_report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._harness import (
    REPO,
    RESULTS,
    add_from_json,
    add_markdown,
    add_nice,
    add_quiet_wait,
    add_repeats,
    add_seed,
    command_line,
    machine_info,
    make_parser,
    measure,
    module_command,
    wait_for_quiet,
    write_json,
)
from benchmarks.feature_job_compare import compare_outputs
from benchmarks.feature_job_reference import build_reference
from benchmarks.feature_job_report import (
    ENGINES,
    POLL_S,
    render_markdown,
    render_table,
    summarize,
    update_markdown,
)
from features.build import build_features
from features.snapshots import BuildConfig

PILOT_CUSTOMERS = 2_000
# Other processes' share of the CPU under which a run may start (see `benchmarks._harness.wait_for_quiet`).
QUIET_THRESHOLD = 0.1
# The libraries on the measured path, whose versions the results record.
MEASURED_PATH = ("pandas", "numpy", "pyarrow", "duckdb", "psutil")


# --- Data: simulated shops of about the requested size, cached ------------------------------------------


def _simulator_version() -> str:
    """A digest of the simulator's source: cached shops of an older simulator are not reused."""
    import features.sim

    digest = hashlib.sha256()
    for source in sorted(Path(features.sim.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:10]


def _events_per_customer(workdir: Path, seed: int) -> float:
    """Events per customer of the simulator, from a small pilot shop (cached in `workdir`)."""
    from features.sim import SimConfig, simulate

    cache = workdir / f"pilot-seed{seed}-{_simulator_version()}.json"
    if cache.exists():
        return float(json.loads(cache.read_text())["events_per_customer"])
    pilot = workdir / f"pilot-seed{seed}"
    summary = simulate(SimConfig(n_customers=PILOT_CUSTOMERS, seed=seed), pilot, progress=False)
    ratio = summary.events / PILOT_CUSTOMERS
    cache.write_text(json.dumps({"customers": PILOT_CUSTOMERS, "events_per_customer": ratio}))
    shutil.rmtree(pilot, ignore_errors=True)
    return ratio


def ensure_shop(target_events: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """A simulated shop of about `target_events` events under `workdir`, simulated once and then reused.

    Returns:
        path, customers, events (the actual count) and the seconds the simulation took (0 when cached).
    """
    from features.sim import SimConfig, simulate

    n_customers = max(1, round(target_events / _events_per_customer(workdir, seed)))
    path = workdir / f"shop-{n_customers}c-seed{seed}-{_simulator_version()}"
    done = path / "benchmark.json"
    if done.exists():
        return dict(json.loads(done.read_text()), simulate_seconds=0.0)
    shutil.rmtree(path, ignore_errors=True)
    started = time.perf_counter()
    summary = simulate(SimConfig(n_customers=n_customers, seed=seed), path, progress=False)
    info = {
        "path": str(path),
        "target_events": target_events,
        "customers": n_customers,
        "events": summary.events,
    }
    done.write_text(json.dumps(info))
    return dict(info, simulate_seconds=round(time.perf_counter() - started, 1))


# --- Measuring one run in a fresh process -----------------------------------------------------------------


def run_engine(engine: str, events: Path, decisions: Path | None, out: Path) -> dict[str, Any]:
    """One run of one engine, in this process (the child side of `measure`)."""
    if engine == "pandas":
        started = time.perf_counter()
        manifest = build_features(events, out, BuildConfig(), decisions=decisions, progress=False)
        seconds = time.perf_counter() - started
        return {
            "n_events": int(manifest.data["input"]["n_events"]),
            "rows": manifest.data["rows"],
            "seconds": round(seconds, 3),
            "n_buckets": manifest.data["n_buckets"],
            "workers": min(os.cpu_count() or 1, int(manifest.data["n_buckets"])),
        }
    if engine == "duckdb":
        return build_reference(events, out, BuildConfig(), decisions=decisions)
    raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")


def _one_run(
    engine: str, shop: Path, out: Path, repeat: int, quiet_wait: float, nice: int = 0
) -> dict[str, Any]:
    """Waits for a quiet machine, then measures one run of one engine in a fresh process."""
    quiet = wait_for_quiet(quiet_wait, QUIET_THRESHOLD)
    got = measure(_child_command(engine, shop, out), poll_s=POLL_S, nice=nice)
    res = got.pop("result")
    return {
        "repeat": repeat,
        **got,
        **quiet,
        "seconds": res["seconds"],
        "events_per_second": res["n_events"] / res["seconds"],
        "rows": res["rows"],
        **{k: res[k] for k in ("n_buckets", "workers", "duckdb_settings") if k in res},
    }


def _child_command(engine: str, shop: Path, out: Path) -> list[str]:
    """This module's child side for one run (started in the repository: absolute paths)."""
    shop, out = shop.resolve(), out.resolve()
    decisions = shop / "decisions.parquet"
    cmd = module_command("feature_job", "--child", engine, "--events", str(shop / "events"))
    if decisions.exists():
        cmd += ["--decisions", str(decisions)]
    return [*cmd, "--child-out", str(out)]


# --- Command line ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, summary=True)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="events per shop")
    add_repeats(p, 3, "runs per engine and size")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON")
    p.add_argument(
        "--workdir", type=Path, default=None, help="simulated shops and outputs (default: a temp dir)"
    )
    add_seed(p)
    add_quiet_wait(p, 300.0)
    p.add_argument(
        "--max-other-share",
        type=float,
        default=0.15,
        help="a run during which other processes used more of the CPU than this is repeated",
    )
    p.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run before keeping it")
    add_nice(p, "run the measured processes in their own session at this niceness (negative needs root)")
    p.add_argument("--no-verify", action="store_true", help="skip the agreement check at the smallest size")
    add_markdown(p, "update the feature-job section of this file")
    add_from_json(p)
    # The child side of one measured run.
    p.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--decisions", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p


def measure_size(
    target: int, workdir: Path, args: argparse.Namespace, *, verify: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Every run of both engines on the shop of about `target` events, alternating engines, a disturbed
    run repeated up to `--retries` times; with `verify`, the two outputs compared row by row.

    Returns:
        The size's entry of the results, and the DuckDB settings its runs reported.
    """
    shop = ensure_shop(target, workdir, args.seed)
    print(f"shop: {shop['events']:,} events, {shop['customers']:,} customers ({shop['path']})", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    duckdb_settings: dict[str, Any] | None = None
    outs = {e: workdir / f"out-{target}-{e}" for e in ENGINES}
    disturbed: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
    for repeat in range(args.repeats):
        for engine in ENGINES:  # alternating, so that drift of the machine hits both
            for attempt in range(args.retries + 1):
                run = _one_run(engine, Path(shop["path"]), outs[engine], repeat, args.quiet_wait, args.nice)
                if "duckdb_settings" in run:
                    duckdb_settings = run["duckdb_settings"]
                ok = run["other_cpu_share"] <= args.max_other_share
                print(
                    f"  {engine:6s} run {repeat + 1}: {run['seconds']:.2f} s, "
                    f"{run['events_per_second']:,.0f} events/s, peak {run['peak_mb']:,.0f} MB "
                    f"(other processes: {run['load_before']:.0%} of the CPU before, "
                    f"{run['other_cpu_share']:.0%} during)" + ("" if ok else ": disturbed"),
                    flush=True,
                )
                if ok or attempt == args.retries:
                    run["disturbed"] = not ok
                    runs[engine].append(run)
                    break
                disturbed[engine].append(run)
    size = {
        "target_events": target,
        "events": shop["events"],
        "customers": shop["customers"],
        "engines": {
            e: {
                "rows_out": sum(runs[e][-1]["rows"].values()),
                "runs": runs[e],
                "summary": summarize(runs[e]),
                "discarded_disturbed_runs": disturbed[e],
            }
            for e in ENGINES
        },
    }
    if verify:
        agreement = compare_outputs(outs["pandas"], outs["duckdb"])
        agreement["events"] = shop["events"]
        size["agreement"] = agreement
        verdict = "agrees" if agreement["agrees"] else "DIFFERS: " + "; ".join(agreement["differs"])
        print(f"  duckdb vs pandas at {shop['events']:,} events: {verdict}", flush=True)
    for out in outs.values():
        shutil.rmtree(out, ignore_errors=True)
    return size, duckdb_settings


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark (or, with `--child`, one measured run)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.child:
        print(json.dumps(run_engine(args.child, args.events, args.decisions, args.child_out)))
        return 0
    if args.from_json:
        # Only render: the section keeps the command that measured the numbers, as stored in the JSON.
        earlier: dict[str, Any] = json.loads(args.from_json.read_text())
        print(render_table(earlier))
        if args.markdown:
            update_markdown(args.markdown, render_markdown(earlier))
            print(f"\nwrote the feature-job section of {args.markdown}")
        return 0

    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="journey-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if workdir.resolve().is_relative_to(REPO):
        raise SystemExit(f"--workdir {workdir} is inside the repository: data never goes there")
    results: dict[str, Any] = {
        "benchmark": "feature_job",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": command_line("feature_job", argv),
        "machine": machine_info(MEASURED_PATH),
        "repeats": args.repeats,
        "bucket_events": BuildConfig().bucket_events,
        "max_other_share": args.max_other_share,
        "nice": args.nice,
        "retries": args.retries,
        "workdir": str(workdir),
        "sizes": [],
    }
    smallest = min(args.sizes)
    for target in sorted(args.sizes):
        size, settings = measure_size(target, workdir, args, verify=target == smallest and not args.no_verify)
        if settings is not None:
            results["duckdb_settings"] = settings
        if "agreement" in size:
            results["agreement"] = size["agreement"]
        results["sizes"].append(size)

    write_json(args.out / "feature_job.json", results)
    print()
    print(render_table(results))
    if args.markdown:
        update_markdown(args.markdown, render_markdown(results))
        print(f"\nwrote the feature-job section of {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
