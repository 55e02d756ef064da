"""The sequence model beside every baseline on UCI Online Retail, from one training run.

    .venv/bin/python -m benchmarks.online_retail [--data PATH.csv.gz] [--test-start 2011-08-15] \
        [--horizon 30] [--every 7] [--work /tmp/uci-bench] [--epochs N] [--markdown BENCHMARKS.md]

Protocol (issue 4, item 6: results on real data):

1. ingest the export (`features.ingest.ingest`, source `online_retail`: invoice lines -> purchases,
   C-invoices -> refunds, guest lines and non-product stock codes skipped) into the work folder;
2. build features with a cutoff every `--every` days, placed so that the first test cutoff falls on
   `--test-start` (the "cutoff date"); the label horizon follows `--horizon` (churn, next items and the
   longer purchase horizon; decision and the 7-day purchase horizon stay at 7 days unless the horizon is
   shorter); validation cutoffs are the last two whose label windows end before the test starts
   (`features.build.plan_splits`); there is no decision log, so no policy metrics (Hillstrom covers
   next-best-action);
3. one `training.train.train` run: the sequence model and every baseline (popularity, own purchase
   history, item co-occurrence k-NN, LightGBM on aggregates), evaluated by the same code on the test
   window with bootstrap intervals, logged to MLflow (not registered);
4. a Markdown section (the command, the data, the split, one table with every scorer side by side, and
   per task which scorer wins and whether the sequence model beats the best baseline), and the full results
   as JSON and Markdown.

Everything the run writes goes to `--work` (default /tmp/uci-bench), the MLflow store included unless
MLFLOW_TRACKING_URI is set, except the results files (`--results`) and the `--markdown` section.
The protocol's settings live in `benchmarks.online_retail_protocol`, the facts reported beside the
figures in `benchmarks.online_retail_diagnostics`, the section in `benchmarks.online_retail_report`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._harness import add_markdown, add_work, command_line, load_average, make_parser
from benchmarks.online_retail_diagnostics import code_version, describe_build, epochs_run, order_counts
from benchmarks.online_retail_protocol import (
    DEFAULT_DATA,
    DEFAULT_EPOCHS,
    DEFAULT_EVERY,
    DEFAULT_HORIZON,
    DEFAULT_N_BOOT,
    DEFAULT_RESULTS,
    DEFAULT_TEST_START,
    DEFAULT_WORK,
    SEQUENCE,
    SERVED,
    BenchmarkResult,
    Settings,
    aligned_first_cutoff,
    label_overrides,
)
from benchmarks.online_retail_report import markdown, save_results, update_markdown
from features.build import build_features
from features.ingest import EVENTS_FILE, format_summary, ingest
from features.snapshots import BuildConfig
from training.budget import threads
from training.config import TrainConfig
from training.train import train

log = logging.getLogger("benchmarks.online_retail")


def run_benchmark(settings: Settings, *, command: str = "", progress: bool = False) -> BenchmarkResult:
    """Ingests, builds, trains and evaluates; see the module doc.

    Args:
        settings: the run's settings.
        command: the command line to report.
        progress: show progress bars.

    Raises:
        ValueError: a horizon below one day, or a test start that leaves no room for the split.
        FileNotFoundError: no data file.
    """
    started = time.perf_counter()
    load_before = load_average()
    code = code_version()  # before training: the code that runs, even if commits land meanwhile
    work = Path(settings.work)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{(work / 'mlflow' / 'mlflow.db').resolve()}")

    summary = ingest("online_retail", settings.data, work / "events")
    log.info("%s", format_summary(summary))
    ingest_record = json.loads((work / "events" / "summary.json").read_text())
    if summary.ts_min is None:
        raise ValueError(f"{settings.data}: no event was accepted")

    defaults = BuildConfig()
    first_cutoff = aligned_first_cutoff(
        pd.Timestamp(summary.ts_min).tz_convert("UTC"),
        pd.Timestamp(settings.test_start, tz="UTC"),
        settings.every,
        defaults.warmup_days,
    )
    overrides: dict[str, Any] = {
        "test_start": settings.test_start,
        "first_cutoff": first_cutoff.date().isoformat(),
        "cutoff_every_days": settings.every,
        **label_overrides(settings.horizon),
    }
    features = work / "features"
    manifest = build_features(
        work / "events" / EVENTS_FILE, features, BuildConfig.from_yaml(None, overrides), progress=progress
    )
    split, diagnostics = describe_build(features, manifest.data, settings.horizon)
    diagnostics.update(order_counts(work / "events" / EVENTS_FILE, manifest.data))

    config = TrainConfig(
        features=str(features),
        experiment=settings.experiment,
        register=False,
        n_boot=settings.n_boot,
        fit=settings.fit(),
        model=dict(settings.model),
        baselines=dict(settings.baselines),
    )
    trained = train(config, progress=progress)
    # the network first, the composite next, then the baselines
    results = sorted(trained.results, key=lambda r: (r.name != SEQUENCE, r.name != SERVED))
    return BenchmarkResult(
        settings=settings,
        command=command,
        date=dt.date.today().isoformat(),
        ingest=ingest_record,
        manifest=manifest.data,
        split=split,
        diagnostics=diagnostics,
        results=results,
        seconds=dict(trained.seconds),
        wall_seconds=time.perf_counter() - started,
        run_id=trained.run_id,
        environment={
            **code,
            "load_before": round(load_before, 2),
            "load_after": round(load_average(), 2),
            **epochs_run(trained.run_id),
            "composite": trained.composite_sources,
            "seconds_per_epoch": trained.seconds_per_epoch,
            "threads": threads(config.fit.threads),
        },
    )


# --------------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, summary=True)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Online Retail export (CSV or CSV.gz)")
    p.add_argument("--test-start", default=DEFAULT_TEST_START, help="first test cutoff (ISO date)")
    p.add_argument("--horizon", type=int, default=DEFAULT_HORIZON, help="label horizon in days")
    p.add_argument("--every", type=int, default=DEFAULT_EVERY, help="days between cutoffs")
    add_work(p, DEFAULT_WORK)
    p.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="most epochs of the sequence model")
    p.add_argument("--patience", type=int, default=2, help="early-stopping patience in epochs")
    p.add_argument("--train-rows", type=int, default=0, help="training rows of the sequence model (0: all)")
    p.add_argument("--n-boot", type=int, default=DEFAULT_N_BOOT, help="bootstrap resamples")
    p.add_argument(
        "--results", type=Path, default=DEFAULT_RESULTS, help="full results (JSON, and .md beside)"
    )
    add_markdown(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the section, writes the results and optionally the Markdown section."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings(
        data=args.data,
        test_start=args.test_start,
        horizon=args.horizon,
        every=args.every,
        work=args.work,
        epochs=args.epochs,
        patience=args.patience,
        train_rows=args.train_rows,
        n_boot=args.n_boot,
    )
    command = command_line("online_retail", argv)
    try:
        bench = run_benchmark(settings, command=command)
    except (ValueError, FileNotFoundError) as err:
        print(f"online_retail: {err}", file=sys.stderr)
        return 2
    section = markdown(bench)
    print(section)
    json_path, md_path = save_results(bench, args.results)
    print(f"\nwrote {json_path} and {md_path}", file=sys.stderr)
    if args.markdown:
        update_markdown(args.markdown, section)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
