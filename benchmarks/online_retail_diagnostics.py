"""Facts the UCI Online Retail benchmark reports beside its figures: the code that ran, the epochs the
sequence model ran, the split, the label rates and the orders behind the stage rules."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import REPO
from benchmarks.online_retail_protocol import SHORT_HORIZON
from features.build import load_rows
from features.vocab import OOV
from training.results import EvaluationResult


def code_version() -> dict[str, Any]:
    """The git commit of the code and whether features/ or training/ have uncommitted changes."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    dirty = git("status", "--porcelain", "--", "features", "training")
    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "uncommitted": [line[3:] for line in dirty.splitlines()],
    }


def epochs_run(run_id: str | None) -> dict[str, Any]:
    """Epochs the sequence model ran and its best validation loss, from the run's MLflow metrics."""
    if not run_id:
        return {}
    import mlflow

    try:
        history = mlflow.MlflowClient().get_metric_history(run_id, "valid_loss")
    except Exception:  # the run's record is a nicety of the report, never a reason to fail it
        return {}
    if not history:
        return {}
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    best = int(np.argmin(losses))
    return {"epochs_run": len(losses), "best_epoch": best + 1, "best_valid_loss": round(losses[best], 4)}


def describe_build(
    features: Path, manifest: dict[str, Any], horizon: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Rows, customers and cutoffs per split, and the label rates and item facts behind the numbers."""
    short = min(SHORT_HORIZON, horizon)
    labels = sorted({f"purchase_{short}d", f"purchase_{horizon}d", f"churn_{horizon}d"})
    columns = ["customer_id", "split", "seq_len", "stage", "next_items", *labels]
    frame = load_rows(features, columns=columns).to_pandas()
    split: dict[str, dict[str, Any]] = {}
    diagnostics: dict[str, Any] = {"label_rates": {}, "stages": {}, "stage_counts": {}}
    for name, cutoffs in manifest["cutoffs"].items():
        rows = frame[frame["split"] == name]
        split[name] = {
            "rows": len(rows),
            "customers": int(rows["customer_id"].nunique()),
            "cutoffs": list(cutoffs),
        }
        diagnostics["label_rates"][name] = {c: round(float(rows[c].mean()), 4) for c in labels if len(rows)}
        diagnostics["stage_counts"][name] = {str(k): int(v) for k, v in rows["stage"].value_counts().items()}
        diagnostics["stages"][name] = {
            str(k): round(float(v), 4) for k, v in rows["stage"].value_counts(normalize=True).items()
        }
    test = frame[frame["split"] == "test"]
    churn, bought = f"churn_{horizon}d", f"purchase_{horizon}d"
    diagnostics["churn_is_no_purchase"] = (
        round(float((test[churn].astype(bool) != test[bought].astype(bool)).mean()), 4) if len(test) else 0.0
    )
    items = np.concatenate(
        [np.asarray(x, dtype=np.int64) for x in test["next_items"]] or [np.zeros(0, np.int64)]
    )
    lengths = frame["seq_len"].to_numpy()
    diagnostics.update(
        {
            "max_len": int(manifest["config"]["encoder"]["max_len"]),
            "seq_len_mean": round(float(lengths.mean()), 1) if len(lengths) else 0.0,
            "share_full_sequences": round(
                float((lengths >= manifest["config"]["encoder"]["max_len"]).mean()), 4
            )
            if len(lengths)
            else 0.0,
            "catalogue": int(manifest["vocab_sizes"]["item_id"]),
            "test_next_items": len(items),
            "test_next_items_oov_share": round(float((items == OOV).mean()), 4) if len(items) else 0.0,
            "test_rows_with_next_items": int(sum(len(x) > 0 for x in test["next_items"])),
            "rows_per_customer_train": round(split["train"]["rows"] / max(split["train"]["customers"], 1), 2),
        }
    )
    return split, diagnostics


def order_counts(events: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Invoice lines, purchase days and invoices: the stage rules count orders as days with a purchase.

    Returns:
        lines_per_invoice_median; and at the first test cutoff, among customers who bought before it, the
        share with at least `loyal_min_orders` purchase days (what the "loyal" rule counts) and the share
        with that many invoices.
    """
    frame = pd.read_parquet(events, columns=["customer_id", "ts", "event_type", "session_id"])
    bought = frame[frame["event_type"].astype(str) == "purchase"]
    if bought.empty:
        return {}
    cutoff = pd.Timestamp(manifest["cutoffs"]["test"][0], tz="UTC")
    before = bought[bought["ts"] < cutoff]
    minimum = int(manifest["config"]["labels"]["loyal_min_orders"])
    days = (
        before.assign(day=before["ts"].dt.floor("D")).groupby("customer_id", observed=True)["day"].nunique()
    )
    orders = before.groupby("customer_id", observed=True)["session_id"].nunique()
    return {
        "lines_per_invoice_median": float(bought.groupby("session_id", observed=True).size().median()),
        "loyal_min_orders": minimum,
        "buyers_with_min_days": round(float((days >= minimum).mean()), 4) if len(days) else 0.0,
        "buyers_with_min_invoices": round(float((orders >= minimum).mean()), 4) if len(orders) else 0.0,
    }


def macro_f1_without(result: EvaluationResult, left_out: str) -> float:
    """Stage macro-F1 over the classes present, leaving one class out (from the per-class F1)."""
    f1 = [
        v
        for k, v in result.metrics.items()
        if k.startswith("stage/f1/") and k != f"stage/f1/{left_out}" and np.isfinite(v)
    ]
    return float(np.mean(f1)) if f1 else float("nan")
