"""The UCI Online Retail benchmark: its settings and Markdown handling, and (marked `data` and `slow`) the
whole pipeline on the real export in ../shared/data with a tiny training budget."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.online_retail import main, run_benchmark
from benchmarks.online_retail_protocol import (
    MARKER_END,
    MARKER_START,
    SEQUENCE,
    SERVED,
    Settings,
    aligned_first_cutoff,
    label_overrides,
    table_metrics,
    tasks,
)
from benchmarks.online_retail_report import (
    comparison_frame,
    markdown,
    save_results,
    update_markdown,
    verdict,
)
from training.baselines import BaselineConfig
from training.data import propensity_targets

ONLINE_RETAIL = Path("online_retail") / "online_retail_2010-12_to_2011-09.csv.gz"


def test_first_cutoff_lands_the_test_cutoffs_on_the_test_start() -> None:
    first = pd.Timestamp("2010-12-01 08:26", tz="UTC")
    test_start = pd.Timestamp("2011-08-15", tz="UTC")
    start = aligned_first_cutoff(first, test_start, every_days=7, warmup_days=28)
    assert start >= (first + pd.Timedelta(days=28)).ceil("D")
    assert start - pd.Timedelta(days=7) < (first + pd.Timedelta(days=28)).ceil("D")
    assert (test_start - start).days % 7 == 0
    with pytest.raises(ValueError, match="before the first possible cutoff"):
        aligned_first_cutoff(first, pd.Timestamp("2010-12-15", tz="UTC"), 7, 28)


def test_labels_follow_the_horizon() -> None:
    assert label_overrides(30) == {
        "labels.churn_days": 30,
        "labels.next_items_days": 30,
        "labels.decision_days": 7,
        "labels.purchase_horizons": [7, 30],
        "labels.cart_abandon_hours": None,
    }
    short = label_overrides(5)
    assert short["labels.decision_days"] == 5
    assert short["labels.purchase_horizons"] == [5]
    # Training reads the label columns the build's label config names, so any horizon trains.
    labels = {key.removeprefix("labels."): value for key, value in label_overrides(14).items()}
    assert propensity_targets(labels) == ("purchase_7d", "purchase_14d", "churn_14d")
    labels = {key.removeprefix("labels."): value for key, value in short.items()}
    assert propensity_targets(labels) == ("purchase_5d", "churn_5d")


def test_main_fails_cleanly_without_its_data_file(tmp_path: Path) -> None:
    code = main(["--horizon", "14", "--data", str(tmp_path / "missing.csv.gz"), "--work", str(tmp_path)])
    assert code == 2
    assert not (tmp_path / "events").exists()


def test_update_markdown_keeps_other_sections(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    other = "<!-- other:start -->\nkeep me\n<!-- other:end -->"
    path.write_text(f"# Benchmarks\n\n{other}\n")
    update_markdown(path, f"{MARKER_START}\nfirst\n{MARKER_END}")
    update_markdown(path, f"{MARKER_START}\nsecond\n{MARKER_END}")
    text = path.read_text()
    assert other in text
    assert "second" in text
    assert "first" not in text
    assert text.count(MARKER_START) == 1
    assert text.index(other) < text.index(MARKER_START)  # appended at the end the first time


@pytest.mark.data
@pytest.mark.slow
def test_pipeline_on_the_real_export(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = shared_data / ONLINE_RETAIL
    if not data.is_file():
        pytest.skip(f"no Online Retail export at {data}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    settings = Settings(
        data=data,
        work=tmp_path / "work",
        epochs=1,
        train_rows=1_500,
        n_boot=0,
        baselines={"lgbm_max_rounds": 20, "knn_neighbours": 20},
        model={"d_model": 16, "n_layers": 1, "n_heads": 2},
    )
    bench = run_benchmark(settings, command="pytest")

    # The ingest summary and the split are reported.
    assert bench.ingest["rows_read"] == bench.ingest["rows_accepted"] + bench.ingest["rows_rejected"] + sum(
        bench.ingest["skipped"].values()
    )
    assert bench.ingest["rows_accepted"] > 200_000
    assert bench.split["test"]["cutoffs"][0] == "2011-08-15"
    assert all(bench.split[s]["rows"] > 0 for s in ("train", "valid", "test"))

    # One column per scorer, one row per table metric plus the fit seconds.
    scorers = [SEQUENCE, SERVED, *BaselineConfig().baselines]
    frame = comparison_frame(bench, table_metrics(settings.horizon))
    assert list(frame.columns) == scorers
    assert list(frame.index) == [*table_metrics(settings.horizon), "fit seconds"]
    assert (frame[SEQUENCE] != "").all()  # the model has every head
    assert (frame[SERVED] != "").all()  # and so has the composite
    rec = [m for m in frame.index if m.startswith("rec/")]
    for name in ("popularity", "own_history", "item_knn"):
        assert (frame.loc[rec, name] != "").all()
    scores = [m for m in frame.index if not m.startswith("rec/") and m != "fit seconds"]
    assert (frame.loc[scores, "lightgbm_aggregates"] != "").all()
    assert (frame.loc["fit seconds"] != "").all()

    # Every task gets a verdict line, and the section is well formed.
    for task in tasks(settings.horizon):
        for model in (SEQUENCE, SERVED):
            v = verdict(bench, task, model=model)
            assert v["best"] is not None
            assert v["best_baseline"] in scorers[2:]
            assert "sequence" in v  # the model's own value, beside the baseline's
    section = markdown(bench)
    assert section.startswith(MARKER_START)
    assert section.endswith(MARKER_END)
    assert "| metric | " + " | ".join(scorers) + " |" in section
    # A verdict line per task for the network, and one for the composite, with the heads' sources.
    assert section.count("\n- **") == 2 * len(tasks(settings.horizon))
    assert bench.composite_sources() != "not recorded"
    assert bench.composite_sources() in section

    json_path, md_path = save_results(bench, tmp_path / "results" / "online_retail.json")
    record = json.loads(json_path.read_text())
    assert set(record["metrics"]) == set(scorers)
    assert record["environment"]["load_before"] >= 0
    # Two invoices on one day are one order: never more buyers with m order days than with m invoices.
    assert (
        0 < record["diagnostics"]["buyers_with_min_days"] <= record["diagnostics"]["buyers_with_min_invoices"]
    )
    assert md_path.read_text().count("|") > 100
