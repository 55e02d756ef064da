"""The load benchmark's own arithmetic: percentiles, the open-loop schedule, what counts as a held rate,
and the Markdown it writes (no servers)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.serving_load import (
    END,
    START,
    held,
    highest_rate,
    median_row,
    percentile,
    render_markdown,
    send_times,
    summarize,
    targets,
)


@pytest.mark.parametrize("q", [0, 25, 50, 90, 95, 99, 100])
def test_percentile_matches_numpys_linear_interpolation(q: float) -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0, 7.5]
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_of_one_value_and_its_errors() -> None:
    assert percentile([3.0], 99) == 3.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="q must be"):
        percentile([1.0], 101)


def test_send_times_are_evenly_spaced_whatever_the_answers() -> None:
    times = send_times(200, 2.0)
    assert len(times) == 400
    assert times[0] == 0.0
    assert times[1] == pytest.approx(0.005)
    assert times[-1] == pytest.approx(399 / 200)
    assert len(send_times(0.5, 3.0)) == 2  # at 0 s and 2 s
    with pytest.raises(ValueError, match="positive"):
        send_times(0, 1.0)


def _samples(latencies_ms: list[float], statuses: list[str], rate: float = 100.0) -> list[Any]:
    """Records as the generator writes them: scheduled, started, finished (seconds), status."""
    out = []
    for i, (lat, status) in enumerate(zip(latencies_ms, statuses, strict=True)):
        at = 10.0 + i / rate
        out.append((at, at + 0.0005, at + lat / 1000, status))
    return out


def test_summarize_counts_latency_from_the_scheduled_time_and_only_2xx_in_percentiles() -> None:
    lat = [1.0, 2.0, 3.0, 4.0, 100.0]
    row = summarize(_samples(lat, ["200", "200", "200", "200", "503"]), rate=100.0, duration_s=0.05)
    assert row["expected"] == 5
    assert row["sent"] == 5
    assert row["ok"] == 4
    assert row["errors"] == 1
    assert row["error_kinds"] == {"503": 1}
    assert row["latency_p50_ms"] == pytest.approx(2.5)
    assert row["latency_max_ms"] == pytest.approx(4.0)
    assert row["lag_p99_ms"] == pytest.approx(0.5)


def test_requests_never_sent_are_errors() -> None:
    row = summarize(_samples([1.0, 1.0], ["200", "200"]), rate=100.0, duration_s=0.04)
    assert row["expected"] == 4
    assert row["errors"] == 2
    assert not held(row)


def test_a_rate_is_held_only_without_errors_and_with_the_generator_on_schedule() -> None:
    ok = summarize(_samples([1.0] * 4, ["200"] * 4), rate=100.0, duration_s=0.04)
    assert held(ok)
    assert not held({**ok, "errors": 1})
    assert not held({**ok, "lag_p99_ms": 80.0})


def _row(rate: float, p99: float, errors: int = 0) -> dict[str, Any]:
    return {
        "rate": rate,
        "expected": 100,
        "sent": 100,
        "ok": 100 - errors,
        "errors": errors,
        "error_kinds": {"timeout": errors} if errors else {},
        "latency_p50_ms": p99 / 3,
        "latency_p95_ms": p99 / 2,
        "latency_p99_ms": p99,
        "latency_max_ms": p99 * 2,
        "lag_p99_ms": 1.0,
        "lag_max_ms": 2.0,
        "achieved_rps": rate,
    }


def test_highest_rate_stops_at_the_first_rate_not_held() -> None:
    rows = [_row(50, 4.0), _row(100, 6.0), _row(200, 12.0), _row(400, 900.0, errors=30)]
    assert highest_rate(rows) == 200
    assert highest_rate(rows, p99_limit_ms=10.0) == 100
    # A higher rate that happens to pass after a failed one does not count.
    assert highest_rate([_row(50, 4.0, errors=1), _row(100, 4.0)]) is None


def test_median_row_takes_median_percentiles_and_sums_errors() -> None:
    row = median_row([_row(200, 8.0), _row(200, 12.0, errors=2), _row(200, 9.0)])
    assert row["latency_p99_ms"] == 9.0
    assert row["errors"] == 2
    assert row["error_kinds"] == {"timeout": 2}
    assert row["expected"] == 300
    assert row["repeats"] == 3


def _results() -> dict[str, Any]:
    batch = {"customers_per_request": 1000, "calls": 4, "customers_per_s": 6200.0, "median_s": 0.16}
    floor = {"median_ms": 2.5, "p99_ms": 3.0, "runs": 10}
    return {
        "command": ".venv/bin/python benchmarks/serving_load.py --work /tmp/x",
        "date": "2026-01-01 00:00 UTC",
        "elapsed_s": 480.0,
        "machine": {
            "cpu_count_logical": 2,
            "processor": "cpu",
            "memory_gb": 8.0,
            "python": "3.11",
            "versions": {"torch": "2", "mlflow": "3"},
        },
        "prepared": {
            "catalogue_size": 100_000,
            "items_fitted": 30_000,
            "items_appended": 70_000,
            "shop_items": 100_000,
            "customers": 20_000,
            "events": 1_300_000,
            "model": "transformer",
            "epochs": 2,
            "train_rows": 8000,
            "version": "1",
            "stored_customers": 4000,
            "stored_events": 250_000,
        },
        "now": "2026-07-06T12:00:00+00:00",
        "torch_threads": 1,
        "duration_s": 10.0,
        "warmup_s": 2.0,
        "repeats": 1,
        "timeout_s": 5.0,
        "sweeps": {
            "journey serve, stored": [_row(100, 5.0), _row(200, 9.5)],
            "journey serve, inline": [_row(100, 8.0), _row(200, 14.0)],
            "mlflow models serve, inline": [_row(100, 30.0, errors=5)],
        },
        "skipped": {"mlflow models serve, inline": [200.0]},
        "floor": {"predict": {"1": floor}, "encode": {"1": floor, "2": floor}},
        "batch": {"http": {**batch, "errors": 0, "by_threads": {"1": batch}}},
        "profile": {},
    }


def test_targets_read_the_200_per_second_rows_and_the_batch_rate() -> None:
    t = targets(_results())
    assert t["p99_at_200_stored_met"]
    assert t["p99_at_200_stored_ms"] == 9.5
    assert not t["p99_at_200_inline_met"]
    assert t["p99_at_200_inline_ms"] == 14.0
    assert t["batch_met"]
    assert t["batch_customers_per_s"] == 6200.0


def test_markdown_states_each_verdict_plainly_between_the_markers() -> None:
    md = render_markdown(_results())
    assert md.startswith(START)
    assert md.rstrip().endswith(END)
    assert "stored-history path **met** (p99 9.50 ms)" in md
    assert "inline path **NOT met** (p99 14.00 ms)" in md
    assert ">= 5,000 customers/s: **met** (6,200 customers/s" in md
    assert "mlflow models serve, inline: highest rate held without errors none" in md
    assert "| journey serve, stored | 200 | 100 | 0 |" in md
    assert "The model ranks 100,000 items: 30,000 fitted" in md
    assert "mlflow models serve, inline: 200" in md  # the rates not run are named


def test_a_target_rate_never_reached_is_named_with_where_the_sweep_stopped() -> None:
    results = _results()
    results["sweeps"]["journey serve, stored"] = [_row(25, 20.0), _row(50, 25.0), _row(75, 5000.0, errors=9)]
    md = render_markdown(results)
    assert "stored-history path **NOT met** (not reached: the server already fell behind at 75" in md
    assert "held at most 50 requests/s" in md
