"""The results of the feature-job benchmark: medians over the runs, the table and the BENCHMARKS.md
section (rendered from the results alone, so `--from-json` renders an earlier run the same way)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks._harness import markers, update_section
from benchmarks.feature_job_reference import DUCKDB_THREADS
from features.snapshots import BuildConfig

ENGINES = ("pandas", "duckdb")
POLL_S = 0.02
TARGET_EVENTS_PER_SECOND = 1_000_000
MARKER_START, MARKER_END = markers("feature_job")


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
