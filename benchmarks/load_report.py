"""The load benchmark's Markdown: the section of BENCHMARKS.md between its markers, every figure taken
from a run's results (so `--from-json` renders an earlier run the same way)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.load_client import highest_rate
from benchmarks.load_protocol import (
    BATCH_TARGET,
    END,
    HISTORY_LEN,
    INLINE_EVENTS,
    N_ITEMS_ANSWERED,
    P99_TARGET_MS,
    START,
    TARGET_RATE,
)
from benchmarks.load_targets import Verdict, journey_rows, key_figures, ms, rate, verdicts, workers_label


def verdict_word(met: bool | None) -> str:
    return {True: "**met**", False: "**NOT met**", None: "**not determined**"}[met]


def verdict_line(v: Verdict) -> str:
    return f"- {v.target}: {verdict_word(v.met)} ({v.figure})."


def _max_of(sweeps: dict[str, list[dict[str, Any]]], key: str) -> float:
    values = [r[key] for rows in sweeps.values() for r in rows if r.get(key) is not None]
    return max(values) if values else 0.0


def latency_table(sweeps: dict[str, list[dict[str, Any]]]) -> str:
    """One line per (server, path, workers; rate)."""
    lines = [
        "| server, path, workers | rate (req/s) | requests | errors | p50 ms | p95 ms | p99 ms | max ms "
        "| generator lag p99 ms | server CPU (cores) | server CPU ms per request | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, rows in sweeps.items():
        for r in rows:
            kinds = ", ".join(f"{k}: {v}" for k, v in sorted(r["error_kinds"].items()))
            errors = f"{r['errors']:,}" + (f" ({kinds})" if kinds else "")
            cores, per, other = (
                r.get("server_cpu_cores"),
                r.get("server_cpu_ms_per_request"),
                r.get("other_cpu_share"),
            )
            lines.append(
                f"| {name} | {r['rate']:,.0f} | {r['expected']:,} | {errors} | {ms(r['latency_p50_ms'])} "
                f"| {ms(r['latency_p95_ms'])} | {ms(r['latency_p99_ms'])} | {ms(r['latency_max_ms'])} "
                f"| {ms(r['lag_p99_ms'])} | {'–' if cores is None else f'{cores:.2f}'} | {ms(per)} "
                f"| {'–' if other is None else f'{other:.0%}'} |"
            )
    return "\n".join(lines)


def render_markdown(results: dict[str, Any]) -> str:
    """The section of BENCHMARKS.md between its markers."""
    m, prep, sweeps = results["machine"], results["prepared"], results["sweeps"]
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
        "keep-alive connections) runs on the same cores as the server, in its own process; it used at "
        f"most {_max_of(sweeps, 'generator_cpu_cores'):.2f} of a core. "
        + (
            f"Servers, generator and in-process measurements ran at niceness {results['nice']}, each in "
            "its own session, so that other sessions' work on this shared machine did not take the cores "
            "mid-run; the share of all cores that other processes still used is in the table (other CPU)."
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
        _servers_paragraph(results),
        "",
        "### Against the targets",
        "",
        *(verdict_line(v) for v in verdicts(results)),
    ]
    for name, rows in sweeps.items():
        lines.append(
            f"- {name}: highest rate held without errors {rate(highest_rate(rows))}; "
            f"with p99 <= {P99_TARGET_MS:g} ms too: {rate(highest_rate(rows, P99_TARGET_MS))}"
            + (f" (rates tried: {', '.join(format(r['rate'], 'g') for r in rows)})" if rows else "")
            + "."
        )
    lines += ["", "### Latency under load", "", latency_table(sweeps), ""]
    for w, row in sorted((results.get("http_floor") or {}).items()):
        lines.append(
            f"The framework alone with {workers_label(int(w))} (`GET /v1/model`: key check, middleware, "
            f"thread pool, JSON; no scoring) at {row['rate']:g} requests/s: p50 {ms(row['latency_p50_ms'])} "
            f"ms, p99 {ms(row['latency_p99_ms'])} ms, {row['errors']} errors, server "
            f"{row['server_cpu_ms_per_request']:.2f} ms CPU per request."
        )
        lines.append("")
    skipped = results.get("skipped", {})
    if skipped:
        lines.append(
            "Not run (a lower rate of the same sweep was not held): "
            + "; ".join(f"{k}: {', '.join(f'{r:g}' for r in v)}" for k, v in skipped.items())
            + "."
        )
        lines.append("")
    lines += _dominates(results)
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


def _servers_paragraph(results: dict[str, Any]) -> str:
    prep = results["prepared"]
    servers = results.get("servers") or [{"workers": 1, "torch_threads": results.get("torch_threads", 1)}]
    each = "; ".join(
        f"`--workers {s['workers']}`, `torch_threads={s['torch_threads']}`"
        + ("" if s.get("ran", True) else f" (not run: {s.get('reason')})")
        for s in servers
    )
    mlflow = results.get("mlflow_server") or {}
    return (
        f"**Servers.** `journey serve` with each worker count: {each} (threads per worker: "
        f"`--torch-threads {results.get('torch_threads_setting', 'auto')}`, `auto` being max(1, cores // "
        f"workers)); a fresh copy of one SQLite store for each, with the histories of "
        f"{prep['stored_customers']:,} customers ({prep['stored_events']:,} events, at most {HISTORY_LEN} "
        f"kept each). Every request: `now` {results['now']}, channels `email`, {N_ITEMS_ANSWERED} items; "
        "each records a decision. Stored path: customer_id only, one customer after another from the "
        f"store; inline path: customer_id and their last {INLINE_EVENTS} events, customers the store does "
        "not know. MLflow: `mlflow models serve -m models:/journey-scorer@champion --env-manager local` "
        f"(`MLFLOW_MODELS_WORKERS={mlflow.get('workers', 1)}`, `OMP_NUM_THREADS="
        f"{mlflow.get('torch_threads', 1)}`), `/invocations` with the inline path's events as "
        "`dataframe_split` and the same `now` and `k`; it has no store, rules or decisions. Open loop at "
        f"each rate: {results['warmup_s']:g} s warm-up, then {results['duration_s']:g} s measured "
        f"({results['repeats']} repeat(s)); latency from the scheduled send time, errors = non-2xx, "
        f"timeouts ({results['timeout_s']:g} s) and requests never sent. Server CPU ms per request: the "
        "server's processes' CPU over the run divided by the requests it answered."
    )


def _dominates(results: dict[str, Any]) -> list[str]:
    """Why the figures are what they are, from this run's own numbers (one worker, stored path)."""
    rows = journey_rows(results, "stored", 1)
    top = highest_rate(rows)
    row = next((r for r in rows if r["rate"] == top), None)
    floor, threads = results.get("floor", {}), str(results.get("floor_threads", 1))
    service = floor.get("service_stored", {}).get(threads, {}).get("median_ms")
    if not row or not row.get("server_cpu_ms_per_request") or service is None:
        return []
    cpu_ms = row["server_cpu_ms_per_request"]
    cores = results["machine"]["cpu_count_logical"]
    return [
        f"**CPU per request.** At {row['rate']:g} requests/s on the stored path (one worker) the server "
        f"spent {cpu_ms:.2f} ms of CPU per request, against {ms(service)} ms for the route's work in this "
        f"process (`Service.score` with parsing and the answer model, cache warm; its areas below). At "
        f"that CPU per request {TARGET_RATE:g} requests/s takes {cpu_ms * TARGET_RATE / 1000:.2f} of the "
        f"{cores} cores, which the load generator shares; one worker runs Python on one core at a time "
        "(the GIL), so a worker saturates near 1,000 / (CPU ms per request) requests/s.",
        "",
    ]


_FLOOR_LABELS = (
    ("encode", "encoder (`features.encoder.encode`, one customer's stored events)"),
    ("forward", "the bare network forward (`predictor.model`)"),
    (
        "predict",
        f"the predictor's answer (`predictor.score`, k={N_ITEMS_ANSWERED}: forward, top items, "
        "probabilities)",
    ),
    ("service_stored", "the route's work in process, stored path: parse, `Service.score`, answer model"),
    (
        "service_inline",
        "the route's work in process, inline path: parse, inline events, `Service.score`, answer",
    ),
)


def _floor_lines(results: dict[str, Any]) -> str:
    f = results.get("floor") or {}
    rows = [
        "### The floor (in the benchmark process, no server running, one customer)",
        "",
        "| step | torch threads | median ms | p99 ms |",
        "|---|---:|---:|---:|",
    ]
    if not f:
        reason = (results.get("not_run") or {}).get("in_process", "no figures")
        rows.append(f"| every step | – | not measured: {reason} | – |")
    for name, label in _FLOOR_LABELS:
        for threads, m in sorted(f.get(name, {}).items()):
            rows.append(f"| {label} | {threads} | {ms(m['median_ms'])} | {ms(m['p99_ms'])} |")
        reason = (f.get("not_measured") or {}).get(name)
        if reason:
            rows.append(f"| {label} | – | not measured: {reason} | – |")
    return "\n".join(rows)


def _batch_lines(results: dict[str, Any]) -> str:
    b = results.get("batch") or {}
    rows = [
        "### Batch scoring and the audience export",
        "",
        "| how | customers per call | calls | customers/s | seconds per call (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for w, m in sorted((b.get("http_by_workers") or {}).items()):
        rows.append(
            f"| `POST /v1/score/batch` (stored path, decisions recorded), {workers_label(int(w))} "
            f"| {m['customers_per_request']:,} | {m['calls']} | {m['customers_per_s']:,.0f} "
            f"| {m['median_s']:.3f} |"
        )
    labels = {
        "service": "`Service.score` in process (stored path, decisions recorded)",
        "predict": "the predictor alone on the same customers' encoded rows (the floor)",
    }
    for key, label in labels.items():
        for threads, m in sorted((b.get(key) or {}).get("by_threads", {}).items()):
            rows.append(
                f"| {label}, torch threads {threads} | {m['customers_per_request']:,} | {m['calls']} "
                f"| {m['customers_per_s']:,.0f} | {m['median_s']:.3f} |"
            )
    audience = results.get("audience") or {}
    not_run = results.get("not_run") or {}
    for what, key in (("batch scoring in process", "in_process"), ("`journey score-audience`", "audience")):
        if key in not_run:
            rows.append(f"| {what}: not measured ({not_run[key]}) | – | – | – | – |")
    for i, r in enumerate(audience.get("runs", []), 1):
        rows.append(
            f"| `journey score-audience`, run {i} (the CLI's clock; whole process {r['process_s']:.1f} s) "
            f"| {r['customers']:,} | 1 | {r['customers_per_s']:,.0f} | {r['seconds']:.3f} |"
        )
    if audience.get("runs"):
        rows += [
            "",
            f"`journey {' '.join(audience['command'])}` over the first {audience['customers']:,} customers "
            f"of the shop (by id), each run into a fresh, empty store, torch's default threads; median "
            f"{audience['customers_per_s']:,.0f} customers/s against {BATCH_TARGET:,.0f}.",
        ]
    return "\n".join(rows)


def _profile_lines(results: dict[str, Any]) -> list[str]:
    prof = results.get("profile") or {}
    if not prof:
        return []
    floor, threads = results.get("floor", {}), str(results.get("floor_threads", 1))
    unprofiled = {p: floor.get(f"service_{p}", {}).get(threads, {}).get("median_ms") for p in prof}
    names = list(dict.fromkeys(a for p in prof.values() for a in p["areas"]))
    out = [
        "### CPU per request by area (cProfile of the route's work in process, one customer per call)",
        "",
        "Own time of every profiled function in every thread of the service (the model's forward may run "
        "in the micro-batcher's), grouped by the module family its file belongs to; C functions that name "
        "no library (`isinstance`, `len`) are charged to their callers' areas; time blocked on a lock or "
        "asleep is waiting, not CPU, and stays out of the shares. cProfile inflates every time: read the "
        "shares, beside the unprofiled medians of the floor table ("
        + ", ".join(f"{p} path {ms(v)} ms" for p, v in unprofiled.items())
        + ").",
        "",
        "| area | " + " | ".join(f"{p}: ms per call (profiled) | share" for p in prof) + " |",
        "|---|" + "---:|---:|" * len(prof),
    ]
    for name in names:
        cells = []
        for summary in prof.values():
            a = summary["areas"].get(name)
            cells += ["–", "–"] if a is None else [f"{a['ms_per_call']:.3f}", f"{a['share']:.0%}"]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    busy = [c for s in prof.values() for c in (f"{s.get('busy_ms_per_call', s['ms_per_call']):.3f}", "100%")]
    waiting = [c for s in prof.values() for c in (f"{s.get('waiting_ms_per_call', 0.0):.3f}", "–")]
    out += [
        "| all areas (every thread) | " + " | ".join(busy) + " |",
        "| waiting (not in the shares) | " + " | ".join(waiting) + " |",
        "",
    ]
    for path, p in prof.items():
        out += [
            f"Top functions by own time, {path} path ({p['calls']} calls, {p.get('threads', 1)} thread(s) "
            "profiled):",
            "",
            "| function | own ms per call | cumulative ms per call |",
            "|---|---:|---:|",
        ]
        out += [f"| `{fn['function']}` | {fn['own_ms']:.3f} | {fn['cum_ms']:.3f} |" for fn in p["top"]]
        out.append("")
    return out[:-1]


def _baseline_lines(results: dict[str, Any]) -> str:
    """Before/after: the key figures of an earlier run beside this one's."""
    before, after = results["baseline"], key_figures(results)
    lowest, lowest_before = after.get("lowest_rate", 25.0), before["figures"].get("lowest_rate", 25.0)
    at = f"{lowest:g}" if lowest == lowest_before else f"{lowest_before:g} before, {lowest:g} after"
    rows = [
        f"### Before and after ({before.get('label', 'earlier run')})",
        "",
        f"Before: the run of {before.get('date')}, its figures kept in `benchmarks/results/"
        "serving_load.json` under `baseline`; both with one worker. The two runs were on different days "
        "of a shared virtual machine whose speed varies from day to day (the same network, by the same "
        "code, can take several times as long on another day), so these rows are not like for like; the "
        "comparisons within one run (MLflow's server, the framework alone, the floor) are.",
        "",
        "| figure | before | after |",
        "|---|---:|---:|",
    ]
    share: Callable[[Any], str] = lambda x: f"{x:.0%}"  # noqa: E731
    count: Callable[[Any], str] = lambda x: f"{x:,.0f}"  # noqa: E731
    for key, label, fmt in (
        ("held_stored", "highest rate held, stored path (requests/s)", count),
        ("held_inline", "highest rate held, inline path (requests/s)", count),
        ("p99_lowest_stored_ms", f"p99 ms at the lowest rate ({at} requests/s), stored path", ms),
        ("p99_lowest_inline_ms", f"p99 ms at the lowest rate ({at} requests/s), inline path", ms),
        ("encode_ms", "encoder on one customer, median ms", ms),
        ("service_stored_ms", "the route's work in process, stored path, median ms", ms),
        ("service_inline_ms", "the route's work in process, inline path, median ms", ms),
        ("batch_customers_per_s", "`POST /v1/score/batch`, customers/s", count),
        ("audience_customers_per_s", "`journey score-audience`, customers/s", count),
        ("max_other_cpu_share", "other processes' share of the CPU during a load run, at most", share),
    ):
        a, b = before["figures"].get(key), after.get(key)
        rows.append(f"| {label} | {'–' if a is None else fmt(a)} | {'–' if b is None else fmt(b)} |")
    return "\n".join(rows)
