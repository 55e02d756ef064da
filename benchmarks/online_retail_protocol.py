"""The protocol of the UCI Online Retail benchmark (`benchmarks.online_retail`): its settings, the
label horizons and cutoffs, the tasks the verdicts judge, and what one run reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks._harness import REPO, RESULTS, markers
from training.results import EvaluationResult

DEFAULT_DATA = REPO.parent / "shared" / "data" / "online_retail" / "online_retail_2010-12_to_2011-09.csv.gz"
DEFAULT_WORK = Path("/tmp/uci-bench")
DEFAULT_RESULTS = RESULTS / "online_retail.json"
DEFAULT_TEST_START = "2011-08-15"
DEFAULT_HORIZON = 30
DEFAULT_EVERY = 7
DEFAULT_EPOCHS = 10
DEFAULT_N_BOOT = 500
SEQUENCE = "sequence"
# The registered composite (`training.composite`): per head, the scorer that won on validation.
SERVED = "composite"
MODELS = (SEQUENCE, SERVED)
MARKER_START, MARKER_END = markers("online_retail")
SHORT_HORIZON = 7  # decision stage and the short purchase horizon, in days
K = 10


@dataclass(frozen=True)
class Task:
    """One task of the verdict lines: its name and the metric that decides it (higher is better)."""

    name: str
    metric: str


def table_metrics(horizon: int = DEFAULT_HORIZON) -> list[str]:
    """The rows of the BENCHMARKS.md table, in order (the fit seconds row is added apart)."""
    short = min(SHORT_HORIZON, horizon)
    targets = [f"purchase_{short}d"] + ([f"purchase_{horizon}d"] if horizon != short else [])
    targets.append(f"churn_{horizon}d")
    rows = ["stage/macro_f1"]
    for t in targets:
        rows += [f"{t}/roc_auc", f"{t}/ece"]
    for part in ("rec/", "rec/repeat/", "rec/explore/"):
        rows += [f"{part}recall_at_{K}", f"{part}ndcg_at_{K}", f"{part}mrr_at_{K}"]
    rows.append(f"rec/coverage_at_{K}")
    return rows


def tasks(horizon: int = DEFAULT_HORIZON) -> list[Task]:
    """The tasks the verdict lines judge, each by its headline metric."""
    short = min(SHORT_HORIZON, horizon)
    out = [Task("journey stage (macro-F1)", "stage/macro_f1")]
    out.append(Task(f"purchase in {short} days (ROC AUC)", f"purchase_{short}d/roc_auc"))
    if horizon != short:
        out.append(Task(f"purchase in {horizon} days (ROC AUC)", f"purchase_{horizon}d/roc_auc"))
    out.append(Task(f"churn: no activity in {horizon} days (ROC AUC)", f"churn_{horizon}d/roc_auc"))
    out.append(Task(f"next-basket recommendations (NDCG@{K})", f"rec/ndcg_at_{K}"))
    out.append(Task(f"  repeat items (NDCG@{K})", f"rec/repeat/ndcg_at_{K}"))
    out.append(Task(f"  explore items (NDCG@{K})", f"rec/explore/ndcg_at_{K}"))
    return out


def label_overrides(horizon: int) -> dict[str, Any]:
    """Dotted `BuildConfig` overrides that make the labels follow the horizon.

    Churn and next items look `horizon` days ahead; the purchase horizons are 7 days and `horizon`; the
    decision stage keeps 7 days unless the horizon is shorter. No cart-abandonment label: invoice lines hold
    no carts, so that head would have no labelled row.
    """
    if horizon < 1:
        raise ValueError(f"the horizon must be at least one day, got {horizon}")
    short = min(SHORT_HORIZON, horizon)
    return {
        "labels.churn_days": horizon,
        "labels.next_items_days": horizon,
        "labels.decision_days": short,
        "labels.purchase_horizons": sorted({short, horizon}),
        "labels.cart_abandon_hours": None,
    }


def aligned_first_cutoff(
    first_ts: pd.Timestamp, test_start: pd.Timestamp, every_days: int, warmup_days: int
) -> pd.Timestamp:
    """The earliest cutoff after the warm-up from which steps of `every_days` land on `test_start`.

    Raises:
        ValueError: the test start comes before the end of the warm-up.
    """
    earliest = (first_ts + pd.Timedelta(days=warmup_days)).ceil("D")
    if test_start < earliest:
        raise ValueError(
            f"--test-start {test_start.date()} is before the first possible cutoff {earliest.date()} "
            f"(first event {first_ts.date()} + {warmup_days} days of warm-up)"
        )
    steps = (test_start - earliest) // pd.Timedelta(days=every_days)
    return test_start - steps * pd.Timedelta(days=every_days)


@dataclass(frozen=True)
class Settings:
    """What one benchmark run does; every field is a command-line argument.

    Attributes:
        data: the Online Retail export (CSV or CSV.gz, the UCI columns).
        test_start: the first test cutoff (ISO date): the "cutoff date".
        horizon: label horizon in days (churn, next items, the longer purchase horizon).
        every: days between cutoffs.
        work: folder of the ingested events, the features, and (by default) the MLflow store.
        epochs: most epochs of the sequence model (early stopping may stop sooner).
        patience: epochs without validation improvement before stopping.
        train_rows: training rows of the sequence model, sampled (0: all).
        n_boot: bootstrap resamples of the intervals.
        baselines: `training.baselines.BaselineConfig` overrides.
        model: `predictor.model.ModelConfig` overrides.
        experiment: MLflow experiment.
    """

    data: Path = DEFAULT_DATA
    test_start: str = DEFAULT_TEST_START
    horizon: int = DEFAULT_HORIZON
    every: int = DEFAULT_EVERY
    work: Path = DEFAULT_WORK
    epochs: int = DEFAULT_EPOCHS
    patience: int = 2
    train_rows: int = 0
    n_boot: int = DEFAULT_N_BOOT
    baselines: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    experiment: str = "online_retail"

    def fit(self) -> dict[str, Any]:
        """The `FitConfig` fields of the run."""
        return {"max_epochs": self.epochs, "patience": self.patience, "max_train_rows": self.train_rows}


@dataclass
class BenchmarkResult:
    """Everything the section and the results file report.

    Attributes:
        settings: what was run.
        command: the command line, as typed.
        date: the day of the run (ISO).
        ingest: the ingest summary (`ValidationSummary.to_dict`) plus the input's SHA-256.
        manifest: the features build's manifest.
        split: split -> rows, customers and cutoffs.
        diagnostics: facts about the data the numbers rest on (label rates, sequence lengths, items).
        results: one evaluation per scorer, the sequence model first.
        seconds: fit seconds per scorer.
        wall_seconds: the whole run (ingest to evaluation).
        run_id: the MLflow run.
        environment: the code's git commit and whether features/ or training/ differ from it, the load
            average before and after, and the epochs the sequence model ran (from MLflow).
    """

    settings: Settings
    command: str
    date: str
    ingest: dict[str, Any]
    manifest: dict[str, Any]
    split: dict[str, dict[str, Any]]
    diagnostics: dict[str, Any]
    results: list[EvaluationResult]
    seconds: dict[str, float]
    wall_seconds: float
    run_id: str | None = None
    environment: dict[str, Any] = field(default_factory=dict)

    def result(self, name: str) -> EvaluationResult:
        return next(r for r in self.results if r.name == name)

    def has(self, name: str) -> bool:
        return any(r.name == name for r in self.results)

    def composite_sources(self) -> str:
        """Which scorer the composite serves each head with (chosen on validation), in words."""
        sources = self.environment.get("composite") or {}
        return ", ".join(f"{head} `{source}`" for head, source in sources.items()) or "not recorded"
