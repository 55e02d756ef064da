"""The load benchmark's own arithmetic: percentiles, the open-loop schedule, what counts as a held rate,
the list options, the verdicts on the targets, the grouping of a profile by area, and the Markdown it
writes (no servers)."""

from __future__ import annotations

import cProfile
import json
import pstats
import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.load_batch import audience_command, parse_audience_output
from benchmarks.load_client import held, highest_rate, median_row, percentile, summarize
from benchmarks.load_generator import send_times
from benchmarks.load_profile import (
    OTHER,
    WAITING,
    AllThreads,
    area_of,
    group_by_area,
    module_path,
    profile_summary,
)
from benchmarks.load_protocol import (
    END,
    START,
    parse_list,
    positive_float,
    positive_int,
    sweep_info,
    sweep_name,
)
from benchmarks.load_protocol import threads_for as threads
from benchmarks.load_report import render_markdown
from benchmarks.load_servers import failure_line, has_option, journey_serve_command
from benchmarks.load_targets import key_figures, mlflow_verdict, p99_verdict, throughput_verdict, verdicts
from benchmarks.serving_load import parse_args

VALIDATION = "request validation (pydantic, schemas, event validator)"
STORE = "the store (serving.store, sqlite3, redis)"
DECISIONS = "decisions and rules (serving, features.policy)"
ENCODER = "encoder (features.encoder, vocabulary)"
MODEL = "model forward (predictor, torch)"
PANDAS = "pandas and pyarrow"

# ---------------------------------------------------------------------------------------------------------
# Percentiles, the schedule, held rates


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


def _row(rate: float, p99: float, errors: int = 0, cpu_ms: float = 4.0) -> dict[str, Any]:
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
        "server_cpu_cores": rate * cpu_ms / 1000,
        "server_cpu_ms_per_request": cpu_ms,
        "generator_cpu_cores": 0.05,
        "other_cpu_share": 0.01,
    }


def test_highest_rate_stops_at_the_first_rate_not_held() -> None:
    rows = [_row(50, 4.0), _row(100, 6.0), _row(200, 12.0), _row(400, 900.0, errors=30)]
    assert highest_rate(rows) == 200
    assert highest_rate(rows, p99_limit_ms=10.0) == 100
    # A higher rate that happens to pass after a failed one does not count.
    assert highest_rate([_row(50, 4.0, errors=1), _row(100, 4.0)]) is None


def test_median_row_takes_median_percentiles_and_cpu_and_sums_errors() -> None:
    row = median_row([_row(200, 8.0, cpu_ms=3.0), _row(200, 12.0, errors=2, cpu_ms=5.0), _row(200, 9.0)])
    assert row["latency_p99_ms"] == 9.0
    assert row["server_cpu_ms_per_request"] == 4.0  # median of 3, 5, 4
    assert row["errors"] == 2
    assert row["error_kinds"] == {"timeout": 2}
    assert row["expected"] == 300
    assert row["repeats"] == 3


# ---------------------------------------------------------------------------------------------------------
# Options: lists, worker counts, threads per worker, the serve command


def test_list_options_take_commas_spaces_or_both_in_order_without_repeats() -> None:
    assert parse_list(["1,2"], positive_int, "--workers") == [1, 2]
    assert parse_list(["2", "1,2", " 4 ,"], positive_int, "--workers") == [2, 1, 4]
    assert parse_list(["50,100", "200"], positive_float, "--rates") == [50.0, 100.0, 200.0]
    with pytest.raises(ValueError, match="--workers: '0'"):
        parse_list(["1,0"], positive_int, "--workers")
    with pytest.raises(ValueError, match="--workers: 'two'"):
        parse_list(["two"], positive_int, "--workers")
    with pytest.raises(ValueError, match="--rates: '-5'"):
        parse_list(["-5"], positive_float, "--rates")
    with pytest.raises(ValueError, match="no values"):
        parse_list([","], positive_int, "--workers")


def test_threads_per_worker_split_the_cores_unless_set() -> None:
    assert threads(1, 2) == 1  # one core left for the worker's Python threads
    assert threads(2, 2) == 1
    assert threads(3, 2) == 1  # never 0
    assert threads(1, 4) == 3
    assert threads(2, 16) == 7
    assert threads(2, 2, "3") == 3
    with pytest.raises(ValueError, match="at least 1"):
        threads(1, 2, "0")


def test_the_command_line_parses_the_lists_and_refuses_bad_ones(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(["--workers", "1,2", "--rates", "50,100", "200", "--work", "/tmp/x"])
    assert args.workers == [1, 2]
    assert args.rates == [50.0, 100.0, 200.0]
    assert args.mlflow_rates == [10.0, 25.0, 50.0, 100.0, 200.0]
    defaults = parse_args([])
    assert defaults.workers == [1, 2]
    assert defaults.rates == [50.0, 100.0, 200.0, 300.0, 400.0]
    assert defaults.torch_threads == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--workers", "0"])
    assert "--workers: '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--torch-threads", "many"])


def test_the_workers_option_is_found_whole_in_the_help_text() -> None:
    assert has_option("│ --port  INTEGER  Port.\n│ --workers  INTEGER  uvicorn workers.", "--workers")
    assert not has_option("│ --port  INTEGER  Port.", "--workers")
    assert not has_option("│ --workers-max  INTEGER", "--workers")
    assert not has_option("│ --max--workers INTEGER", "--workers")


def test_the_serve_command_passes_workers_only_where_the_cli_has_the_option() -> None:
    with_option = journey_serve_command(Path("/venv/bin"), 8123, "sqlite:///s.db", 2, 1, True)
    assert with_option[:2] == ["/venv/bin/journey", "serve"]
    assert with_option[with_option.index("--workers") + 1] == "2"
    assert "torch_threads=1" in with_option
    without = journey_serve_command(Path("/venv/bin"), 8123, "sqlite:///s.db", 1, 2, False)
    assert "--workers" not in without
    assert "torch_threads=2" in without


def test_a_failed_commands_reason_is_its_error_line() -> None:
    rich = (
        "│ ❱ 255 │   from serving.scoring import predict_customers │\n"
        "╰──────────────────────────────────────────────╯\n"
        "ImportError: cannot import name 'predict_customers' from 'serving.scoring' \n"
        "(/work/main/serving/scoring.py)\n"
    )
    assert failure_line(rich) == (
        "ImportError: cannot import name 'predict_customers' from 'serving.scoring' "
        "(/work/main/serving/scoring.py)"
    )
    assert failure_line("starting\nerror: no API keys configured\n") == "error: no API keys configured"
    assert failure_line("INFO started\nKilled\n") == "Killed"
    assert failure_line("") == "no output"


def test_sweep_names_and_their_server_path_and_workers() -> None:
    assert sweep_name("journey serve", "stored", 1) == "journey serve, stored, 1 worker"
    assert sweep_name("journey serve", "inline", 2) == "journey serve, inline, 2 workers"
    assert sweep_name("mlflow models serve", "inline") == "mlflow models serve, inline"
    assert sweep_info("journey serve, inline, 2 workers")["workers"] == 2
    assert sweep_info("journey serve, stored") == {"server": "journey serve", "path": "stored", "workers": 1}


# ---------------------------------------------------------------------------------------------------------
# Verdicts


def test_p99_verdict_met_only_at_200_per_second_with_no_errors_and_p99_within_10_ms() -> None:
    met = p99_verdict([_row(100, 5.0), _row(200, 9.5)], "stored path, 1 worker")
    assert met.met is True
    assert met.figure == "p99 9.50 ms, 0 errors"
    assert met.target == "p99 <= 10 ms at 200 requests/s with 0 errors, stored path, 1 worker"
    slow = p99_verdict([_row(100, 5.0), _row(200, 14.0)], "x")
    assert slow.met is False
    assert slow.figure == "p99 14.00 ms, 0 errors"
    errors = p99_verdict([_row(200, 4.0, errors=3)], "x")
    assert errors.met is False
    assert errors.figure == "p99 4.00 ms, 3 errors"
    late = p99_verdict([{**_row(200, 4.0), "lag_p99_ms": 80.0}], "x")
    assert late.met is False
    assert "generator fell behind its schedule (lag p99 80.00 ms)" in late.figure


def test_p99_verdict_names_where_the_sweep_stopped_or_why_it_was_not_measured() -> None:
    stopped = p99_verdict([_row(50, 6.0), _row(100, 900.0, errors=20)], "x")
    assert stopped.met is False
    assert stopped.figure == (
        "not reached: the server already fell behind at 100 requests/s and held at most 50 requests/s"
    )
    assert p99_verdict([_row(50, 6.0)], "x").met is None  # every rate held, 200 not among them
    absent = p99_verdict([], "stored path, 2 workers", not_run="no --workers option")
    assert absent.met is None
    assert absent.figure == "no --workers option"


def test_mlflow_verdict_compares_the_highest_rates_held() -> None:
    journey = [_row(50, 3.0), _row(100, 4.0), _row(200, 5.0), _row(300, 8.0), _row(400, 900.0, errors=9)]
    mlflow = [_row(10, 30.0), _row(25, 35.0), _row(50, 40.0), _row(100, 5000.0, errors=40)]
    v = mlflow_verdict(journey, "stored path, 2 workers", mlflow)
    assert v.met is True  # 300 / 50 = 6
    assert v.figure.endswith(": 6.0x")
    assert "journey serve (stored path, 2 workers) held 300 requests/s, mlflow models serve 50" in v.figure
    short = mlflow_verdict([*journey[:3], _row(300, 900.0, errors=9)], "x", mlflow)
    assert short.met is False  # 200 / 50 = 4
    assert short.figure.endswith(": 4.0x")


def test_mlflow_verdict_says_when_the_rates_tried_cannot_tell() -> None:
    journey = [_row(50, 3.0), _row(100, 4.0), _row(200, 900.0, errors=9)]
    # mlflow held none of 10, 25: it holds less than 10, so 100 is more than 10x.
    assert mlflow_verdict(journey, "x", [_row(10, 5000.0, errors=9)]).met is True
    # ... but less than 25 does not say whether 100 is 5x.
    unknown = mlflow_verdict(journey, "x", [_row(25, 5000.0, errors=9)])
    assert unknown.met is None
    assert "more than 4.0x" in unknown.figure
    # mlflow held every rate tried: its ceiling is unknown, so 100 / 10 = 10x proves nothing.
    capped = mlflow_verdict(journey, "x", [_row(10, 30.0)])
    assert capped.met is None
    assert "held every rate tried" in capped.figure
    # journey held none of its rates: not met.
    assert mlflow_verdict([_row(50, 900.0, errors=9)], "x", [_row(10, 30.0)]).met is False
    assert mlflow_verdict(journey, "x", [], not_run="--skip-mlflow").figure == "--skip-mlflow"


def test_throughput_verdict_needs_5000_customers_per_second_and_no_failed_call() -> None:
    assert throughput_verdict("batch", 6_200.0).met is True
    assert throughput_verdict("batch", 6_200.0).figure == "6,200 customers/s"
    assert throughput_verdict("batch", 4_999.0).met is False
    assert throughput_verdict("batch", 6_200.0, errors=1).met is False
    assert throughput_verdict("audience", None, not_run="--audience-customers 0").met is None


# ---------------------------------------------------------------------------------------------------------
# The profile by area


def test_module_paths_are_relative_to_site_packages_the_repository_or_the_standard_library() -> None:
    root = Path("/repo")
    site = "/repo/.venv/lib/python3.11/site-packages/pandas/core/frame.py"
    assert module_path(site, root) == "pandas/core/frame.py"
    assert module_path("/repo/serving/service.py", root) == "serving/service.py"
    assert module_path("/usr/lib/python3.11/json/decoder.py", root) == "json/decoder.py"
    assert module_path("~", root) == "~"


@pytest.mark.parametrize(
    ("path", "func", "area"),
    [
        ("serving/store.py", "events", STORE),
        ("serving/store/sqlite.py", "events", STORE),
        ("serving/service.py", "score", DECISIONS),
        ("serving/decisions.py", "choose", DECISIONS),
        ("features/policy.py", "blocked", DECISIONS),
        ("serving/schemas.py", "check", VALIDATION),
        ("pydantic/main.py", "model_dump", VALIDATION),
        ("features/validate.py", "validate_events", VALIDATION),
        ("features/encoder.py", "encode", ENCODER),
        ("predictor/model.py", "forward", MODEL),
        ("torch/nn/modules/module.py", "_call_impl", MODEL),
        ("/tmp/run/artifacts/model/code/predictor/predictor.py", "forward", MODEL),
        ("json/decoder.py", "raw_decode", "JSON"),
        ("pandas/core/frame.py", "sort_values", PANDAS),
        ("numpy/_core/fromnumeric.py", "sum", "numpy"),
        ("datetime.py", "fromisoformat", OTHER),
        ("~", "<built-in method torch.addmm>", MODEL),
        ("~", "<method 'execute' of 'sqlite3.Connection' objects>", STORE),
        (
            "~",
            "<method 'validate_json' of 'pydantic_core._pydantic_core.SchemaValidator' objects>",
            VALIDATION,
        ),
        ("~", "<built-in method builtins.isinstance>", None),
        ("~", "<method 'acquire' of '_thread.lock' objects>", WAITING),
        ("~", "<built-in method time.sleep>", WAITING),
    ],
)
def test_each_function_lands_in_its_modules_area(path: str, func: str, area: str | None) -> None:
    assert area_of(path, func) == area


def test_group_by_area_charges_anonymous_c_functions_to_their_callers() -> None:
    root = Path("/repo")
    service = ("/repo/serving/service.py", 10, "score")
    frame = ("/repo/.venv/lib/python3.11/site-packages/pandas/core/frame.py", 1, "sort_values")
    length = ("~", 0, "<built-in method builtins.len>")
    stats = {
        service: (1, 1, 0.002, 0.010, {}),
        frame: (2, 2, 0.003, 0.004, {service: (2, 2, 0.003, 0.004)}),
        ("~", 0, "<built-in method torch.addmm>"): (1, 1, 0.004, 0.004, {service: (1, 1, 0.004, 0.004)}),
        # 1 ms of isinstance: 0.6 from pandas, 0.2 from the service, 0.2 from another anonymous builtin.
        ("~", 0, "<built-in method builtins.isinstance>"): (
            5,
            5,
            0.001,
            0.001,
            {frame: (3, 3, 0.0006, 0.0006), service: (1, 1, 0.0002, 0.0002), length: (1, 1, 0.0002, 0.0002)},
        ),
    }
    assert group_by_area(stats, root) == {
        DECISIONS: pytest.approx(0.0022),
        PANDAS: pytest.approx(0.0036),
        MODEL: pytest.approx(0.004),
        OTHER: pytest.approx(0.0002),
    }
    # And 5 ms blocked on a lock: waiting, outside the shares and the top functions.
    lock = ("~", 0, "<method 'acquire' of '_thread.lock' objects>")
    stats[lock] = (1, 1, 0.005, 0.005, {service: (1, 1, 0.005, 0.005)})
    assert group_by_area(stats, root)[WAITING] == pytest.approx(0.005)
    summary = profile_summary(stats, calls=2, wall_s=0.02, top=2, root=root)
    assert summary["ms_per_call"] == 10.0
    assert summary["busy_ms_per_call"] == 5.0
    assert summary["waiting_ms_per_call"] == 2.5
    assert list(summary["areas"]) == [MODEL, PANDAS, DECISIONS, OTHER]  # largest first
    assert summary["areas"][PANDAS] == {"ms_per_call": 1.8, "share": 0.36}
    assert [f["function"] for f in summary["top"]] == [
        "<built-in method torch.addmm>",
        "pandas/core/frame.py:1(sort_values)",
    ]


def test_the_areas_of_a_real_profile_add_up_to_its_own_time() -> None:
    def work() -> int:
        total = 0
        for i in range(2_000):
            total += len(json.dumps({"i": i})) if isinstance(i, int) else 0
        return total

    prof = cProfile.Profile()
    prof.enable()
    work()
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    areas = group_by_area(stats)
    assert sum(areas.values()) == pytest.approx(sum(v[2] for v in stats.values()))
    assert areas.get("JSON", 0.0) > 0


def test_all_threads_profiles_the_work_another_thread_does_for_the_caller() -> None:
    jobs: queue.Queue[int | None] = queue.Queue()
    done: queue.Queue[int] = queue.Queue()

    def worker() -> None:
        while (n := jobs.get()) is not None:
            done.put(sum(len(json.dumps({"i": i})) for i in range(n)))

    profiler = AllThreads()
    profiler.install()
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    profiler.uninstall()
    profiler.open()
    for _ in range(3):
        jobs.put(2_000)
        done.get()
    profiler.close()
    jobs.put(None)
    thread.join(timeout=10)
    areas = group_by_area(profiler.stats())
    assert profiler.threads == 2
    assert areas.get("JSON", 0.0) > 0  # the worker's json.dumps: only its own profiler saw it
    assert areas.get(WAITING, 0.0) > 0  # the caller blocked on done.get()


# ---------------------------------------------------------------------------------------------------------
# The audience export


def test_the_audience_figure_is_read_from_the_clis_summary_line() -> None:
    out = "20,000 customers scored in 9.8 s (2,030/s) by journey-scorer version 1 -> a.parquet\nactions: ..."
    assert parse_audience_output(out) == (20_000, 9.8)
    with pytest.raises(ValueError, match="customers scored"):
        parse_audience_output("error: no champion")
    command = audience_command(
        Path("/v/bin"), Path("ev"), Path("o.parquet"), Path("s.csv"), "2026-07-06", "sqlite:///x.db", 5000
    )
    assert command[:2] == ["/v/bin/journey", "score-audience"]
    assert command[command.index("--segment") + 1] == "s.csv"
    assert command[-2:] == ["--set", "store_url=sqlite:///x.db"]


# ---------------------------------------------------------------------------------------------------------
# The report


def _results() -> dict[str, Any]:
    batch = {"customers_per_request": 1000, "calls": 4, "customers_per_s": 6200.0, "median_s": 0.16}
    floor = {"median_ms": 2.5, "p99_ms": 3.0, "runs": 10}
    area = {"ms_per_call": 2.0, "share": 0.5}
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
            "model": "gru",
            "epochs": 2,
            "train_rows": 8000,
            "version": "1",
            "stored_customers": 4000,
            "stored_events": 250_000,
        },
        "now": "2026-07-06T12:00:00+00:00",
        "workers": [1, 2],
        "servers": [
            {"workers": 1, "torch_threads": 2, "ran": True},
            {"workers": 2, "torch_threads": 1, "ran": False, "reason": "no --workers option"},
        ],
        "floor_threads": 2,
        "rates": [100.0, 200.0],
        "duration_s": 10.0,
        "warmup_s": 2.0,
        "repeats": 1,
        "timeout_s": 5.0,
        "sweeps": {
            "journey serve, stored, 1 worker": [_row(100, 5.0), _row(200, 9.5)],
            "journey serve, inline, 1 worker": [_row(100, 8.0), _row(200, 14.0)],
            "mlflow models serve, inline": [_row(10, 30.0), _row(25, 5000.0, errors=5)],
        },
        "skipped": {"mlflow models serve, inline": [50.0]},
        "not_run": {
            "journey serve, stored, 2 workers": "no --workers option",
            "journey serve, inline, 2 workers": "no --workers option",
        },
        "floor": {
            "service_stored": {"2": {**floor, "median_ms": 8.0}},
            "encode": {"2": floor, "1": floor},
            "not_measured": {"forward": "no network"},
        },
        "batch": {"http_by_workers": {"1": {**batch, "errors": 0}}},
        "audience": {
            "customers_per_s": 4_100.0,
            "customers": 20_000,
            "chunk": 5000,
            "command": ["score-audience"],
            "runs": [{"customers": 20_000, "seconds": 4.9, "process_s": 12.0, "customers_per_s": 4_100.0}],
        },
        "profile": {
            "stored": {
                "calls": 10,
                "ms_per_call": 4.0,
                "top": [],
                "busy_ms_per_call": 4.0,
                "waiting_ms_per_call": 1.5,
                "areas": {"model forward (predictor, torch)": area, "pandas and pyarrow": area},
            }
        },
    }


def test_verdicts_of_a_run_in_report_order() -> None:
    out = verdicts(_results())
    assert [v.met for v in out] == [True, None, True, True, False]
    assert out[1].figure == "no --workers option"
    assert out[2].figure == (
        "journey serve (stored path, 1 worker) held 200 requests/s, mlflow models serve 10 requests/s: 20.0x"
    )
    assert out[3].target == "`POST /v1/score/batch` (1 worker) >= 5,000 customers/s"
    assert out[4].figure == "4,100 customers/s"


def test_markdown_states_each_verdict_plainly_between_the_markers() -> None:
    md = render_markdown(_results())
    assert md.startswith(START)
    assert md.rstrip().endswith(END)
    assert "stored path, 1 worker: **met** (p99 9.50 ms, 0 errors)." in md
    assert "stored path, 2 workers: **not determined** (no --workers option)." in md
    assert "what `mlflow models serve` holds on the same model: **met** (" in md
    assert "`journey score-audience` >= 5,000 customers/s: **NOT met** (4,100 customers/s)." in md
    assert "mlflow models serve, inline: highest rate held without errors 10 requests/s" in md
    assert "| journey serve, stored, 1 worker | 200 | 100 | 0 |" in md
    assert "| 4.00 |" in md  # server CPU ms per request
    assert "The model ranks 100,000 items: 30,000 fitted" in md
    assert "mlflow models serve, inline: 50" in md  # the rates not run are named
    assert "`--workers 2`, `torch_threads=1` (not run: no --workers option)" in md
    assert "| model forward (predictor, torch) | 2.000 | 50% |" in md
    assert "| waiting (not in the shares) | 1.500 | – |" in md
    assert "stored path 8.00 ms" in md  # the unprofiled median beside the shares
    assert "not measured: no network" in md


def test_a_target_rate_never_reached_is_named_with_where_the_sweep_stopped() -> None:
    results = _results()
    results["sweeps"]["journey serve, stored, 1 worker"] = [
        _row(25, 20.0),
        _row(50, 25.0),
        _row(75, 5000.0, errors=9),
    ]
    md = render_markdown(results)
    assert "stored path, 1 worker: **NOT met** (not reached: the server already fell behind at 75" in md
    assert "held at most 50 requests/s" in md


def test_key_figures_read_a_run_before_workers_under_its_old_sweep_names() -> None:
    old = _results()
    old["sweeps"] = {"journey serve, stored": [_row(25, 20.0), _row(50, 25.0)]}
    old["rates"] = [25.0, 50.0]
    figures = key_figures(old)
    assert figures["held_stored"] == 50
    assert figures["p99_lowest_stored_ms"] == 20.0
    assert figures["batch_customers_per_s"] == 6200.0
    assert figures["audience_customers_per_s"] == 4_100.0


def test_the_baseline_table_names_each_runs_lowest_rate() -> None:
    results = _results()
    before = {
        "held_stored": 50,
        "lowest_rate": 25.0,
        "p99_lowest_stored_ms": 29.45,
        "batch_customers_per_s": 423,
    }
    results["baseline"] = {"label": "before issue 11", "date": "2026-11-22", "figures": before}
    md = render_markdown(results)
    assert "### Before and after (before issue 11)" in md
    assert "| highest rate held, stored path (requests/s) | 50 | 200 |" in md
    assert "| p99 ms at the lowest rate (25 before, 100 after requests/s), stored path | 29.45 | 5.00 |" in md
    assert "| `POST /v1/score/batch`, customers/s | 423 | 6,200 |" in md
