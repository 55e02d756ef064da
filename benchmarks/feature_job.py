"""Feature-job benchmark: `build_features` (pandas engine) beside the same job as one DuckDB query.

Simulates shops of about the requested numbers of events (cached in a work folder outside the repository),
then runs each engine several times, each run in a fresh process, and reports the median wall time, events
per second and peak memory (resident memory summed over the process and its children, polled every
20 ms). At the smallest size the two outputs are compared row by row, so the reference is known to do the
same work (`compare_outputs`).

    .venv/bin/python benchmarks/feature_job.py --sizes 1000000 10000000 --repeats 3 \\
        --markdown BENCHMARKS.md

The DuckDB query lives in `feature_job.sql`; `build_reference` is its Python glue: the split plan (the same
`plan_splits` as the pandas job) and a few constants of the encoder go in as literals.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO))

from benchmarks.sections import update_section  # noqa: E402
from features.build import (  # noqa: E402
    SPLITS,
    BuildConfig,
    SplitPlan,
    _decision_aligned_start,
    build_features,
    input_files,
    load_rows,
    plan_splits,
)
from features.encoder import AGGREGATE_NAMES, DT_EDGES_S, NEVER_DAYS, TOKEN_FIELDS, VALUE_EDGES  # noqa: E402
from features.schema import ACTIONS, CHANNELS, EVENT_TYPES  # noqa: E402
from features.vocab import FIRST  # noqa: E402

QUERY_FILE = Path(__file__).with_name("feature_job.sql")
ENGINES = ("pandas", "duckdb")
DUCKDB_THREADS = 2
POLL_S = 0.02
PILOT_CUSTOMERS = 2_000
# Other processes' share of the CPU under which a run may start (see `wait_for_quiet`).
QUIET_THRESHOLD = 0.1
TARGET_EVENTS_PER_SECOND = 1_000_000
MARKER_START = "<!-- feature_job:start -->"
MARKER_END = "<!-- feature_job:end -->"

# Columns compared exactly, and those compared within a float tolerance.
EXACT_COLUMNS: tuple[str, ...] = (
    "split",
    "seq_len",
    *(f"tok_{name}" for name in TOKEN_FIELDS),
    "purchase_7d",
    "purchase_30d",
    "churn_30d",
    "stage",
    "next_items",
    "decision_id",
    "logged_action",
    "outcome_purchase",
    "outcome_unsubscribe",
)
FLOAT_COLUMNS: tuple[str, ...] = (*AGGREGATE_NAMES, "logged_propensity", "outcome_revenue")
RTOL = 1e-9
ATOL = 1e-9


# --- The reference: the feature job as one DuckDB query ------------------------------------------------


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_files(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"


def _bucket_expr(column: str, edges: Sequence[float], op: str) -> str:
    """`FIRST + 1 + (number of edges e with column <op> e)`: the encoder's searchsorted as SQL."""
    terms = " + ".join(f"({column} {op} {e!r})::INTEGER" for e in edges)
    return f"{FIRST + 1} + {terms}"


def check_reference_config(config: BuildConfig) -> None:
    """Raises `NotImplementedError` for settings the query does not follow (it names columns by them).

    The query hard-codes the encoder's aggregate windows (7, 28 and 90 days) and the label column names
    `purchase_7d`, `purchase_30d` and `churn_30d`, as the default configuration has them.
    """
    labels = config.labels
    if tuple(labels.purchase_horizons) != (7, 30) or labels.churn_days != 30:
        raise NotImplementedError(
            "the DuckDB reference writes purchase_7d, purchase_30d and churn_30d only: "
            f"got purchase_horizons={labels.purchase_horizons}, churn_days={labels.churn_days}"
        )


def render_query(
    event_files: Sequence[Path],
    decision_files: Sequence[Path],
    plan: SplitPlan,
    config: BuildConfig,
) -> tuple[str, str]:
    """Fills `feature_job.sql` with the inputs, the plan and the settings.

    Returns:
        (setup statements, the query): run the first, then the second inside a COPY.
    """
    check_reference_config(config)
    labels = config.labels
    plan_rows = ", ".join(
        f"({int(c.value // 1_000_000)}::BIGINT, {_sql_str(s)})" for s in SPLITS for c in plan.cutoffs[s]
    )
    enums = ", ".join(
        f"({_sql_str(field)}, {_sql_str(token)}, {i + FIRST})"
        for field, tokens in (("event_type", EVENT_TYPES), ("channel", CHANNELS), ("message_type", ACTIONS))
        for i, token in enumerate(tokens)
    )
    decisions = (
        f"read_parquet({_sql_files(decision_files)})"
        if decision_files
        else "(SELECT NULL::VARCHAR AS customer_id, NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS decision_id, "
        "NULL::VARCHAR AS action, NULL::DOUBLE AS propensity WHERE false)"
    )
    # Every row meets its customer's events up to the end of its furthest label window.
    pairs_days = max(labels.horizon_days, labels.decision_window_days + labels.outcome_days)
    values = {
        "events": _sql_files(event_files),
        "event_types": ", ".join(_sql_str(e) for e in EVENT_TYPES),
        "decisions": decisions,
        "plan": plan_rows,
        "enums": enums,
        "dt_bucket": _bucket_expr("r.dt_s", [int(e) for e in DT_EDGES_S], ">="),
        "value_bucket": _bucket_expr("abs(r.value)", [float(e) for e in VALUE_EDGES], ">"),
        "vocab_end_ms": str(int(plan.valid_start.value // 1_000_000)),
        "item_min_count": str(config.item_min_count),
        "max_items": str(config.max_items),
        "never_days": f"{float(NEVER_DAYS)!r}::DOUBLE",
        "max_len": str(config.encoder.max_len),
        "active_within_days": str(config.active_within_days),
        "decision_window_days": str(labels.decision_window_days),
        "pairs_days": str(pairs_days),
        "decision_days": str(labels.decision_days),
        "decision_min_cart_events": str(labels.decision_min_cart_events),
        "churn_days": str(labels.churn_days),
        "post_purchase_days": str(labels.post_purchase_days),
        "feedback_days": str(labels.feedback_days),
        "feedback_max_orders": str(labels.feedback_max_orders),
        "awareness_days": str(labels.awareness_days),
        "consideration_days": str(labels.consideration_days),
        "consideration_min_events": str(labels.consideration_min_events),
        "at_risk_days": str(labels.at_risk_days),
        "at_risk_max_active_days": str(labels.at_risk_max_active_days),
        "quiet_days": str(labels.quiet_days),
        "quiet_max_active_days": str(labels.quiet_max_active_days),
        "loyal_min_orders": str(labels.loyal_min_orders),
        "loyal_days": str(labels.loyal_days),
        "loyal_recent_days": str(labels.loyal_recent_days),
        "outcome_days": str(labels.outcome_days),
        "next_items_days": str(labels.next_items_days),
        "max_next_items": str(labels.max_next_items),
    }
    text = QUERY_FILE.read_text()
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    left = sorted(set(re.findall(r"\{([a-z_]+)\}", text)))
    if left:
        raise ValueError(f"{QUERY_FILE.name}: no value for {', '.join(left)}")
    setup, query = text.split("\n-- query\n")
    return setup, query


def reference_plan(
    first_ts: pd.Timestamp, last_ts: pd.Timestamp, decision_files: Sequence[Path], config: BuildConfig
) -> SplitPlan:
    """The cutoffs `build_features` uses for these inputs: `plan_splits`, after the same alignment.

    With a decision log and no `first_cutoff`, the pandas job puts the cutoffs on the log's main decision
    weekday (`features.build._decision_aligned_start`); the reference follows it so that both label the
    same cutoffs.
    """
    if decision_files and not config.first_cutoff:
        config = replace(config, first_cutoff=_decision_aligned_start(list(decision_files), first_ts, config))
    return plan_splits(first_ts, last_ts, config)


def build_reference(
    events: Path,
    out: Path,
    config: BuildConfig | None = None,
    *,
    decisions: Path | None = None,
    threads: int = DUCKDB_THREADS,
    temp_directory: Path | None = None,
) -> dict[str, Any]:
    """Runs the DuckDB reference of the feature job and writes `out/rows/part-00000.parquet`.

    The rows have the pandas build's columns and types, so `features.build.load_rows(out)` reads both.

    Args:
        events: validated events: a Parquet file or a folder of them.
        out: output folder (its `rows/` is replaced).
        config: build settings (the defaults of `BuildConfig` if None).
        decisions: optional decision log (Parquet).
        threads: DuckDB threads; the memory limit is left at DuckDB's default.
        temp_directory: where DuckDB may spill (default: a folder inside `out`, removed afterwards).

    Returns:
        n_events, rows per split, seconds and the DuckDB settings used.
    """
    import duckdb

    config = config or BuildConfig()
    started = time.perf_counter()
    event_files = input_files(events)
    decision_files = input_files(decisions) if decisions else []
    rows_dir = out / "rows"
    shutil.rmtree(rows_dir, ignore_errors=True)
    rows_dir.mkdir(parents=True, exist_ok=True)
    spill = temp_directory or Path(tempfile.mkdtemp(prefix="duckdb-", dir=out))
    con = duckdb.connect(config={"threads": threads, "temp_directory": str(spill)})
    try:
        con.execute("SET TimeZone = 'UTC'")
        scan = f"read_parquet({_sql_files(event_files)})"
        found = con.execute(f"SELECT count(*), min(epoch_us(ts)), max(epoch_us(ts)) FROM {scan}").fetchone()
        assert found is not None
        n_events, first_us, last_us = found
        if not n_events:
            raise ValueError(f"{events}: no events")
        plan = reference_plan(
            pd.Timestamp(first_us, unit="us", tz="UTC"),
            pd.Timestamp(last_us, unit="us", tz="UTC"),
            decision_files,
            config,
        )
        if any(c != c.floor("D") for cs in plan.cutoffs.values() for c in cs):
            raise ValueError("the reference query needs cutoffs at midnight UTC")
        setup, query = render_query(event_files, decision_files, plan, config)
        con.execute(setup)
        target = rows_dir / "part-00000.parquet"
        con.execute(f"COPY ({query}) TO {_sql_str(str(target))} (FORMAT parquet)")
        counted = con.execute(
            f"SELECT split, count(*) FROM read_parquet({_sql_str(str(target))}) GROUP BY split"
        ).fetchall()
        settings = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('threads', 'memory_limit', "
                "'preserve_insertion_order')"
            ).fetchall()
        )
    finally:
        con.close()
        if temp_directory is None:
            shutil.rmtree(spill, ignore_errors=True)
    rows = dict.fromkeys(SPLITS, 0)
    rows.update({str(s): int(n) for s, n in counted})
    return {
        "n_events": int(n_events),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
        "cutoffs": plan.to_json(),
        "duckdb_version": duckdb.__version__,
        "duckdb_settings": settings,
    }


# --- Agreement: does the reference produce the pandas build's rows? --------------------------------------


def _list_equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    """Row-wise equality of two list columns (same rows, same order)."""
    la, lb = a.combine_chunks(), b.combine_chunks()
    offsets_a = la.offsets.to_numpy() - la.offsets[0].as_py()
    offsets_b = lb.offsets.to_numpy() - lb.offsets[0].as_py()
    len_a, len_b = np.diff(offsets_a), np.diff(offsets_b)
    same = len_a == len_b
    flat_a = la.flatten().to_numpy(zero_copy_only=False)
    flat_b = lb.flatten().to_numpy(zero_copy_only=False)
    # Compare element by element only where the lengths agree; a row differs if any element does.
    row_a = np.repeat(np.arange(len(len_a)), len_a)
    keep_a = same[row_a]
    keep_b = same[np.repeat(np.arange(len(len_b)), len_b)]
    differs = flat_a[keep_a] != flat_b[keep_b]
    bad = np.zeros(len(len_a), dtype=bool)
    bad[row_a[keep_a][differs]] = True
    return same & ~bad


def _column_equal(name: str, a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_list(a.type) or pa.types.is_list(b.type):
        return _list_equal(a, b)
    if name in FLOAT_COLUMNS:
        x = a.to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
    x, y = a.to_pandas(), b.to_pandas()
    return ((x == y) | (x.isna() & y.isna())).to_numpy(dtype=bool)


def compare_outputs(pandas_out: Path, reference_out: Path, examples: int = 3) -> dict[str, Any]:
    """Checks that the DuckDB reference wrote the rows the pandas build wrote.

    Compares the number of rows per split, the (customer, cutoff) keys, and every row of every column:
    exactly for tokens, sequence lengths, labels and decisions; within `RTOL`/`ATOL` for aggregates and
    other floats.

    Returns:
        `agrees` (bool), rows per split of each engine, and per column the number of differing rows with
        a few examples; `differs` lists what differs, in words.
    """
    left = load_rows(pandas_out)
    right = load_rows(reference_out)
    report: dict[str, Any] = {
        "rows": {
            s: [int(pc.sum(pc.equal(t.column("split"), s)).as_py() or 0) for t in (left, right)]
            for s in SPLITS
        },
        "rows_compared": 0,
        "columns": {},
        "differs": [],
    }
    missing = sorted(set(left.column_names) ^ set(right.column_names))
    if missing:
        report["differs"].append(f"columns in one output only: {', '.join(missing)}")
    for name in left.column_names:
        if name in right.column_names and left.schema.field(name).type != right.schema.field(name).type:
            report["differs"].append(
                f"type of {name}: {left.schema.field(name).type} (pandas) vs "
                f"{right.schema.field(name).type} (duckdb)"
            )
    for split, (n_left, n_right) in report["rows"].items():
        if n_left != n_right:
            report["differs"].append(f"{split}: {n_left} rows (pandas) vs {n_right} (duckdb)")

    keys = ["customer_id", "cutoff"]
    lk = left.select(keys).to_pandas().assign(_l=np.arange(left.num_rows))
    rk = right.select(keys).to_pandas().assign(_r=np.arange(right.num_rows))
    both = lk.merge(rk, on=keys, how="outer", indicator=True)
    only = both["_merge"].value_counts()
    if only.get("left_only", 0) or only.get("right_only", 0):
        report["differs"].append(
            f"keys: {only.get('left_only', 0)} (customer, cutoff) rows only in pandas, "
            f"{only.get('right_only', 0)} only in duckdb"
        )
    matched = both[both["_merge"] == "both"]
    left_m = left.take(pa.array(matched["_l"].to_numpy(dtype=np.int64)))
    right_m = right.take(pa.array(matched["_r"].to_numpy(dtype=np.int64)))
    report["rows_compared"] = len(matched)
    for name in (*EXACT_COLUMNS, *FLOAT_COLUMNS):
        if name not in left_m.column_names or name not in right_m.column_names:
            continue
        equal = _column_equal(name, left_m.column(name), right_m.column(name))
        n_bad = int((~equal).sum())
        entry: dict[str, Any] = {"differing_rows": n_bad}
        if n_bad:
            bad = np.flatnonzero(~equal)[:examples]
            entry["examples"] = [
                {
                    "customer_id": left_m.column("customer_id")[int(i)].as_py(),
                    "cutoff": str(left_m.column("cutoff")[int(i)].as_py()),
                    "pandas": left_m.column(name)[int(i)].as_py(),
                    "duckdb": right_m.column(name)[int(i)].as_py(),
                }
                for i in bad
            ]
            report["differs"].append(f"{name}: {n_bad} of {len(equal)} rows differ")
        report["columns"][name] = entry
    report["agrees"] = not report["differs"]
    return report


# --- Data: simulated shops of about the requested size, cached ------------------------------------------


def _simulator_version() -> str:
    """A digest of the simulator's source: cached shops of an older simulator are not reused."""
    import features.simulate

    return hashlib.sha256(Path(features.simulate.__file__).read_bytes()).hexdigest()[:10]


def _events_per_customer(workdir: Path, seed: int) -> float:
    """Events per customer of the simulator, from a small pilot shop (cached in `workdir`)."""
    from features.simulate import SimConfig, simulate

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
    from features.simulate import SimConfig, simulate

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


def _tree_rss(proc: psutil.Process) -> tuple[int, int]:
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


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children and their waited-for descendants."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait_s: float, threshold: float = QUIET_THRESHOLD) -> dict[str, float]:
    """Waits (up to `max_wait_s`) until other processes use less than `threshold` of the machine's CPU.

    Timings on a shared 2-core machine mean little while something else runs; the load seen before the
    run is recorded beside it either way.
    """
    started = time.perf_counter()
    load = psutil.cpu_percent(interval=1.0) / 100
    while load > threshold and time.perf_counter() - started < max_wait_s:
        time.sleep(4.0)
        load = psutil.cpu_percent(interval=1.0) / 100
    return {"waited_s": round(time.perf_counter() - started, 1), "load_before": round(load, 3)}


def _prioritise(nice: int) -> Callable[[], None]:
    """What the measured process runs before it starts: its own session at niceness `nice`.

    Linux's autogroup scheduling shares the CPU between sessions before niceness counts inside one, so
    the new session's group gets the niceness too (where the kernel has autogroups).
    """

    def run() -> None:
        os.setsid()
        os.nice(nice)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as fh:
            fh.write(str(nice))

    return run


def measure(command: list[str], poll_s: float = POLL_S, nice: int = 0) -> dict[str, Any]:
    """Runs a command, polling the resident memory of its process tree; returns wall time and peaks.

    Also returns the share of the machine's CPU that other processes used meanwhile (`other_cpu_share`:
    busy CPU seconds of the whole machine minus the command's own, over wall time times cores), and the
    command's own report (JSON on the last line of its stdout) under `result`. A non-zero `nice` runs
    the command in its own session at that niceness (negative values need root): on a shared machine it
    keeps other processes from taking the cores in the middle of a run.
    """
    busy0, own0 = _busy_cpu_seconds(), _children_cpu_seconds()
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            command, stdout=out, stderr=err, text=True, preexec_fn=_prioritise(nice) if nice else None
        )
        watched = psutil.Process(proc.pid)
        peak_root = peak = 0
        while proc.poll() is None:
            root, tree = _tree_rss(watched)
            peak_root, peak = max(peak_root, root), max(peak, tree)
            time.sleep(poll_s)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    own = _children_cpu_seconds() - own0
    other = max(0.0, _busy_cpu_seconds() - busy0 - own)
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
    quiet = wait_for_quiet(quiet_wait)
    got = measure(_child_command(engine, shop, out), nice=nice)
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
    decisions = shop / "decisions.parquet"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", engine, "--events", str(shop / "events")]
    if decisions.exists():
        cmd += ["--decisions", str(decisions)]
    return [*cmd, "--child-out", str(out)]


# --- Results ---------------------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of seconds, events per second and peak memory over repeated runs."""
    seconds = [r["seconds"] for r in runs]
    eps = [r["events_per_second"] for r in runs]
    peak = [r["peak_mb"] for r in runs]
    return {
        "runs": len(runs),
        "median_seconds": round(statistics.median(seconds), 3),
        "min_seconds": min(seconds),
        "max_seconds": max(seconds),
        "median_events_per_second": round(statistics.median(eps)),
        "min_events_per_second": round(min(eps)),
        "max_events_per_second": round(max(eps)),
        "median_peak_mb": round(statistics.median(peak), 1),
        "min_peak_mb": min(peak),
        "max_peak_mb": max(peak),
        "median_process_seconds": round(statistics.median(r["process_seconds"] for r in runs), 3),
        "max_other_cpu_share": max(r.get("other_cpu_share", 0.0) for r in runs),
        "disturbed_runs_kept": sum(bool(r.get("disturbed")) for r in runs),
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import duckdb

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count_logical": psutil.cpu_count(logical=True),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "versions": {
            "pandas": pd.__version__,
            "numpy": np.__version__,
            "pyarrow": pa.__version__,
            "duckdb": duckdb.__version__,
            "psutil": psutil.__version__,
        },
    }


def _fmt_int(x: float) -> str:
    return f"{round(x):,}"


def render_table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, one line per size and engine."""
    lines = [
        "| engine | events | customers | rows out | median s | median events/s (min..max) "
        "| peak MB (median, max) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size in results["sizes"]:
        for engine in ENGINES:
            s = size["engines"][engine]["summary"]
            rows = size["engines"][engine]["rows_out"]
            lines.append(
                f"| {engine} | {_fmt_int(size['events'])} | {_fmt_int(size['customers'])} | {_fmt_int(rows)} "
                f"| {s['median_seconds']:.2f} | {_fmt_int(s['median_events_per_second'])} "
                f"({_fmt_int(s['min_events_per_second'])}..{_fmt_int(s['max_events_per_second'])}) "
                f"| {s['median_peak_mb']:,.0f} ({s['max_peak_mb']:,.0f}) |"
            )
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    """The "## Feature job" section of BENCHMARKS.md, between its markers."""
    m = results["machine"]
    agreement = results.get("agreement")
    if agreement is None:
        agree_line = "Agreement with the pandas build was not checked in this run."
    elif agreement["agrees"]:
        agree_line = (
            f"At {_fmt_int(agreement['events'])} events the DuckDB output agrees with the pandas build: same "
            f"rows per split, and all {_fmt_int(agreement['rows_compared'])} rows equal in every column "
            "(tokens, sequence lengths, labels and decisions exactly; aggregates within 1e-9)."
        )
    else:
        agree_line = (
            f"At {_fmt_int(agreement['events'])} events the DuckDB output does **not** fully agree with the "
            "pandas build: " + "; ".join(agreement["differs"]) + "."
        )
    settings = results.get("duckdb_settings", {})
    lines = [
        MARKER_START,
        "## Feature job",
        "",
        f"Measured {results['date']} on {m['platform']}, {m['cpu_count_logical']} logical cores, "
        f"{m['memory_gb']} GiB; Python {m['python']}, pandas {m['versions']['pandas']}, "
        f"pyarrow {m['versions']['pyarrow']}, DuckDB {m['versions']['duckdb']}.",
        "",
        "```",
        results["command"],
        "```",
        "",
        render_table(results),
        "",
        f"Medians over {results['repeats']} runs per engine and size, each in a fresh process, engines "
        "alternating. Seconds: the job itself, from reading events to writing rows (no interpreter "
        "start-up); events/s = events / those seconds. Peak MB: resident memory of the process and its "
        f"workers, summed, polled every {int(POLL_S * 1000)} ms (pages shared after fork count once per "
        "process, so this overstates a little).",
        "",
        f"pandas: `build_features` with the default `BuildConfig` (buckets of about "
        f"{_fmt_int(results.get('bucket_events', BuildConfig().bucket_events))} events, one worker per core) "
        "and the decision log. DuckDB: `benchmarks/feature_job.sql`, the same rows and columns from one "
        f"query, threads={settings.get('threads', DUCKDB_THREADS)}, memory_limit at its default "
        f"({settings.get('memory_limit', 'unknown')}).",
        "",
        *_target_lines(results),
        "",
        agree_line,
        MARKER_END,
    ]
    return "\n".join(lines)


def _target_lines(results: dict[str, Any]) -> list[str]:
    """The figures against DESIGN.md's target, buckets, and how busy the machine was otherwise."""
    sizes = results["sizes"]
    pandas = [(s["events"], s["engines"]["pandas"]) for s in sizes]
    eps = ", ".join(
        f"{_fmt_int(p['summary']['median_events_per_second'])} events/s at {_fmt_int(n)} events"
        for n, p in pandas
    )
    met = all(p["summary"]["median_events_per_second"] >= TARGET_EVENTS_PER_SECOND for _, p in pandas)
    lines = [
        f"Target (DESIGN.md): at least {_fmt_int(TARGET_EVENTS_PER_SECOND)} events/s and peak memory that "
        f"does not grow with the events. pandas: {eps}: target {'met' if met else '**not met**'}."
    ]
    if len(pandas) > 1:
        (n0, p0), (n1, p1) = pandas[0], pandas[-1]
        buckets = "; ".join(
            f"{_fmt_int(n)} events in {p['runs'][-1]['n_buckets']} buckets of about "
            f"{_fmt_int(n / p['runs'][-1]['n_buckets'])}"
            for n, p in pandas
            if p["runs"] and "n_buckets" in p["runs"][-1]
        )
        main = [statistics.median(r["peak_main_process_mb"] for r in p["runs"]) for p in (p0, p1)]
        lines.append(
            f"Peak memory of the pandas job: {p0['summary']['median_peak_mb']:,.0f} MB at {_fmt_int(n0)} "
            f"events, {p1['summary']['median_peak_mb']:,.0f} MB at {_fmt_int(n1)} "
            f"(x{p1['summary']['median_peak_mb'] / p0['summary']['median_peak_mb']:.2f} for "
            f"x{n1 / n0:.1f} the events), of which the main process {main[0]:,.0f} MB and {main[1]:,.0f} MB. "
            f"The workers hold one bucket of customers each at a time: {buckets}."
        )
    other = max(s["engines"][e]["summary"]["max_other_cpu_share"] for s in sizes for e in ENGINES)
    redone = sum(len(s["engines"][e].get("discarded_disturbed_runs", [])) for s in sizes for e in ENGINES)
    kept = sum(s["engines"][e]["summary"].get("disturbed_runs_kept", 0) for s in sizes for e in ENGINES)
    kept_note = f", {kept} kept after {results.get('retries', 3)} retries" if kept else ""
    lines.append(
        "The machine is shared: each run first waits a while for it to be quiet (`--quiet-wait`), and a run "
        "during which other processes "
        f"used more than {results.get('max_other_share', 0.15):.0%} of the CPU is repeated "
        f"({redone} repeated{kept_note}); in the runs kept, other processes used at most {other:.0%} "
        "(`other_cpu_share` per run in the JSON)"
        + (
            f"; the measured processes ran in their own session at niceness {results['nice']}."
            if results.get("nice")
            else "."
        )
    )
    return [" ".join(lines)]


def update_markdown(path: Path, section: str) -> None:
    """Writes `section` between the feature-job markers of `path`, keeping the other benchmarks' sections."""
    update_section(path, section, MARKER_START, MARKER_END)


# --- Command line ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], help="events per shop")
    p.add_argument("--repeats", type=int, default=3, help="runs per engine and size")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="folder of the JSON")
    p.add_argument(
        "--workdir", type=Path, default=None, help="simulated shops and outputs (default: a temp dir)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=300.0,
        help="before each run, wait up to this many seconds for other processes to leave the CPU idle",
    )
    p.add_argument(
        "--max-other-share",
        type=float,
        default=0.15,
        help="a run during which other processes used more of the CPU than this is repeated",
    )
    p.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run before keeping it")
    p.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the measured processes in their own session at this niceness (negative needs root)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the agreement check at the smallest size")
    p.add_argument("--markdown", type=Path, default=None, help="update the feature-job section of this file")
    p.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="render the results of an earlier run instead of measuring",
    )
    # The child side of one measured run.
    p.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--events", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--decisions", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    return p


def _command_line(argv: Sequence[str]) -> str:
    script = Path(__file__).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else script
    return shlex.join([".venv/bin/python", str(shown), *argv])


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
        "command": _command_line(argv),
        "machine": machine_info(),
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
        shop = ensure_shop(target, workdir, args.seed)
        print(
            f"shop: {shop['events']:,} events, {shop['customers']:,} customers ({shop['path']})", flush=True
        )
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        outs = {e: workdir / f"out-{target}-{e}" for e in ENGINES}
        disturbed: dict[str, list[dict[str, Any]]] = {e: [] for e in ENGINES}
        for repeat in range(args.repeats):
            for engine in ENGINES:  # alternating, so that drift of the machine hits both
                for attempt in range(args.retries + 1):
                    run = _one_run(
                        engine, Path(shop["path"]), outs[engine], repeat, args.quiet_wait, args.nice
                    )
                    if "duckdb_settings" in run:
                        results["duckdb_settings"] = run["duckdb_settings"]
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
        if target == smallest and not args.no_verify:
            agreement = compare_outputs(outs["pandas"], outs["duckdb"])
            agreement["events"] = shop["events"]
            size["agreement"] = agreement
            results["agreement"] = agreement
            verdict = "agrees" if agreement["agrees"] else "DIFFERS: " + "; ".join(agreement["differs"])
            print(f"  duckdb vs pandas at {shop['events']:,} events: {verdict}", flush=True)
        results["sizes"].append(size)
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "feature_job.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print()
    print(render_table(results))
    if args.markdown:
        update_markdown(args.markdown, render_markdown(results))
        print(f"\nwrote the feature-job section of {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
