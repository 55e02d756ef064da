"""The load benchmark's targets and a verdict on each: met, not met, or not determined (not measured, or
the rates tried cannot tell), always with the figure or the reason it was judged on, so a verdict never
reads better than its evidence.

- p99 <= 10 ms at 200 requests/s on `POST /v1/score`, stored-history path, 0 errors: one verdict per
  worker count;
- the highest rate `journey serve` holds (stored path, best worker count) at least 5x the highest rate
  `mlflow models serve` holds on the same model;
- `POST /v1/score/batch` and `journey score-audience` at least 5,000 customers/s each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from benchmarks.load_client import held, highest_rate
from benchmarks.load_protocol import (
    BATCH_TARGET,
    JOURNEY,
    MLFLOW,
    MLFLOW_FACTOR,
    P99_TARGET_MS,
    TARGET_RATE,
    sweep_name,
)


@dataclass(frozen=True)
class Verdict:
    """One target against one run: `met` None when it was not measured or the run cannot tell."""

    target: str
    met: bool | None
    figure: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ms(x: float | None) -> str:
    return "–" if x is None else (f"{x:,.1f}" if x >= 100 else f"{x:.2f}")


def rate(x: float | None) -> str:
    return "none" if x is None else f"{x:,.0f} requests/s"


def workers_label(workers: int) -> str:
    return f"{workers} worker{'s' if workers != 1 else ''}"


def p99_verdict(rows: Sequence[dict[str, Any]], label: str, not_run: str | None = None) -> Verdict:
    """p99 <= P99_TARGET_MS at TARGET_RATE with 0 errors, on one sweep (`rows`, lowest rate first)."""
    target = f"p99 <= {P99_TARGET_MS:g} ms at {TARGET_RATE:g} requests/s with 0 errors, {label}"
    if not_run:
        return Verdict(target, None, not_run)
    at = next((r for r in rows if r["rate"] == TARGET_RATE), None)
    if at is None:
        if rows and not held(rows[-1]):
            return Verdict(
                target,
                False,
                f"not reached: the server already fell behind at {rows[-1]['rate']:g} requests/s and "
                f"held at most {rate(highest_rate(rows))}",
            )
        return Verdict(target, None, f"{TARGET_RATE:g} requests/s not among the rates run")
    p99 = at["latency_p99_ms"]
    met = held(at) and p99 is not None and p99 <= P99_TARGET_MS
    figure = f"p99 {ms(p99)} ms, {at['errors']:,} errors"
    if at["errors"] == 0 and not held(at):
        figure += f" but the generator fell behind its schedule (lag p99 {ms(at.get('lag_p99_ms'))} ms)"
    return Verdict(target, met, figure)


def mlflow_verdict(
    journey_rows: Sequence[dict[str, Any]],
    journey_label: str,
    mlflow_rows: Sequence[dict[str, Any]],
    not_run: str | None = None,
) -> Verdict:
    """journey serve's highest held rate >= MLFLOW_FACTOR x mlflow models serve's, judged only as far as
    the rates tried allow: a server that held none of its rates holds less than the lowest; one that held
    every rate tried may hold more than the highest."""
    target = f"highest rate held >= {MLFLOW_FACTOR:g}x what `{MLFLOW}` holds on the same model"
    if not_run:
        return Verdict(target, None, not_run)
    if not journey_rows or not mlflow_rows:
        return Verdict(target, None, "a sweep is missing")
    j, m = highest_rate(journey_rows), highest_rate(mlflow_rows)
    j_capped = j is not None and j == max(r["rate"] for r in journey_rows) and all(map(held, journey_rows))
    m_capped = m is not None and m == max(r["rate"] for r in mlflow_rows) and all(map(held, mlflow_rows))
    m_lowest = min(r["rate"] for r in mlflow_rows)
    said = f"{JOURNEY} ({journey_label}) held {rate(j)}, {MLFLOW} {rate(m)}"
    if j is None:
        return Verdict(target, False, f"{said}: {JOURNEY} held none of its rates")
    if m is None:
        # mlflow holds less than its lowest rate: the ratio is above j / lowest.
        ratio = j / m_lowest
        if ratio >= MLFLOW_FACTOR:
            return Verdict(target, True, f"{said} (below {m_lowest:g}): more than {ratio:.1f}x")
        return Verdict(
            target,
            None,
            f"{said} (below {m_lowest:g}): more than {ratio:.1f}x, cannot tell whether "
            f"{MLFLOW_FACTOR:g}x; run lower --mlflow-rates",
        )
    ratio = j / m
    if ratio >= MLFLOW_FACTOR and m_capped:
        return Verdict(target, None, f"{said}: {ratio:.1f}x, but {MLFLOW} held every rate tried")
    if ratio < MLFLOW_FACTOR and j_capped:
        return Verdict(target, None, f"{said}: {ratio:.1f}x, but {JOURNEY} held every rate tried")
    return Verdict(target, ratio >= MLFLOW_FACTOR, f"{said}: {ratio:.1f}x")


def throughput_verdict(
    label: str, customers_per_s: float | None, errors: int = 0, not_run: str | None = None
) -> Verdict:
    """At least BATCH_TARGET customers/s, with no failed call."""
    target = f"{label} >= {BATCH_TARGET:,.0f} customers/s"
    if not_run or customers_per_s is None:
        return Verdict(target, None, not_run or "no figure")
    figure = f"{customers_per_s:,.0f} customers/s" + (f", {errors} failed call(s)" if errors else "")
    return Verdict(target, customers_per_s >= BATCH_TARGET and errors == 0, figure)


def journey_rows(results: dict[str, Any], path: str, workers: int) -> list[dict[str, Any]]:
    """A journey serve sweep's rows; runs before `--workers` named the one-worker sweep without a count."""
    sweeps = results.get("sweeps", {})
    rows = sweeps.get(sweep_name(JOURNEY, path, workers))
    if rows is None and workers == 1:
        rows = sweeps.get(sweep_name(JOURNEY, path))
    return list(rows or [])


def best_stored(results: dict[str, Any]) -> tuple[int | None, list[dict[str, Any]]]:
    """The worker count whose stored-path sweep held the highest rate (the fewest workers on a tie)."""
    best: tuple[int | None, list[dict[str, Any]]] = (None, [])
    top = -1.0
    for w in results.get("workers", [1]):
        rows = journey_rows(results, "stored", w)
        held_rate = highest_rate(rows) if rows else None
        if rows and (held_rate or 0.0) > top:
            best, top = (w, rows), held_rate or 0.0
    return best


def verdicts(results: dict[str, Any]) -> list[Verdict]:
    """Every target against a run's results, in the order the report lists them."""
    not_run: dict[str, str] = results.get("not_run", {})
    out = []
    for w in results.get("workers", [1]):
        name = sweep_name(JOURNEY, "stored", w)
        out.append(
            p99_verdict(
                journey_rows(results, "stored", w), f"stored path, {workers_label(w)}", not_run.get(name)
            )
        )
    w_best, rows = best_stored(results)
    mlflow_name = sweep_name(MLFLOW, "inline")
    label = f"stored path, {workers_label(w_best)}" if w_best else "stored path"
    out.append(
        mlflow_verdict(rows, label, results.get("sweeps", {}).get(mlflow_name, []), not_run.get(mlflow_name))
    )
    batch = results.get("batch", {}).get("http_by_workers", {})
    if batch:
        w, b = max(batch.items(), key=lambda kv: kv[1]["customers_per_s"])
        out.append(
            throughput_verdict(
                f"`POST /v1/score/batch` ({workers_label(int(w))})", b["customers_per_s"], b["errors"]
            )
        )
    else:
        out.append(throughput_verdict("`POST /v1/score/batch`", None, not_run=not_run.get("batch")))
    audience = results.get("audience") or {}
    out.append(
        throughput_verdict(
            "`journey score-audience`", audience.get("customers_per_s"), not_run=not_run.get("audience")
        )
    )
    return out


def key_figures(results: dict[str, Any]) -> dict[str, Any]:
    """The figures a later run is compared with (`--baseline`): one worker's sweeps, the floor, batch."""
    floor = results.get("floor", {})
    threads = str(results.get("floor_threads", results.get("torch_threads", 1)))
    lowest = min(results.get("rates") or [25.0])

    def p99_at(path: str, at: float) -> float | None:
        row = next((r for r in journey_rows(results, path, 1) if r["rate"] == at), None)
        return row["latency_p99_ms"] if row and held(row) else None

    batch = results.get("batch", {})
    http = (batch.get("http_by_workers") or {}).get("1") or batch.get("http") or {}
    sweeps = results.get("sweeps", {})
    return {
        "p99_at_200_stored_ms": p99_at("stored", TARGET_RATE),
        "p99_at_200_inline_ms": p99_at("inline", TARGET_RATE),
        "held_stored": highest_rate(journey_rows(results, "stored", 1)),
        "held_inline": highest_rate(journey_rows(results, "inline", 1)),
        "lowest_rate": lowest,
        "p99_lowest_stored_ms": p99_at("stored", lowest),
        "p99_lowest_inline_ms": p99_at("inline", lowest),
        "encode_ms": floor.get("encode", {}).get(threads, {}).get("median_ms"),
        "service_stored_ms": floor.get("service_stored", {}).get(threads, {}).get("median_ms"),
        "service_inline_ms": floor.get("service_inline", {}).get(threads, {}).get("median_ms"),
        "batch_customers_per_s": http.get("customers_per_s"),
        "audience_customers_per_s": (results.get("audience") or {}).get("customers_per_s"),
        "max_other_cpu_share": max(
            (r.get("other_cpu_share") or 0.0 for rows in sweeps.values() for r in rows), default=None
        ),
    }
