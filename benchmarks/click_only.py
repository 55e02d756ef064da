"""Next-view recommendations on a simulated click-only shop: the sequence model against session item-KNN.

    .venv/bin/python -m benchmarks.click_only --markdown BENCHMARKS.md

Simulates a shop that logs product views only (`SimConfig.click_only`: sessions with sequential structure,
see `features.sim.clicks` for the world's latent truth), builds its features in session mode (a row per
session prefix, the target the next view: `features.sessions`), and runs `journey train` once: the
sequence model and the session-mode baselines (popularity, own history, item k-NN, session item-KNN),
fitted on the training window and scored by the same code on the test window (the last 7 days), ranked
against the whole catalogue. Verdicts: the sequence model against session item-KNN on HR@20 and MRR@20,
with paired bootstrap intervals of the difference, over rows (the evaluation's own) and over customers
(rows of one customer, prefixes of one visit among them, resampled together: the honest one, and the
one the verdict reads). Outputs go to a work folder outside the repository and to an MLflow store there.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._harness import (
    RESULTS,
    add_markdown,
    add_seed,
    add_work,
    command_line,
    make_parser,
    write_section,
)

METRICS = ("rec/hit_at_20", "rec/mrr_at_20", "rec/ndcg_at_20", "rec/hit_at_10", "rec/mrr_at_10",
           "rec/repeat/hit_at_20", "rec/explore/hit_at_20", "rec/coverage_at_20", "rec/n_rows")  # fmt: skip
VERDICT_METRICS = (("HR@20", "rec/hit_at_20"), ("MRR@20", "rec/mrr_at_20"))
AGAINST = "session_knn"


def clustered_difference(
    a: np.ndarray, b: np.ndarray, groups: np.ndarray, n_boot: int, seed: int = 0
) -> tuple[float, float, float]:
    """mean(a - b) over rows where both are defined, with a 95 % bootstrap interval that resamples whole
    groups (customers) with replacement: rows of one customer are not independent.

    Returns:
        (difference, lo, hi).
    """
    ok = np.isfinite(a) & np.isfinite(b)
    diff, g = (a - b)[ok], groups[ok]
    _, g = np.unique(g, return_inverse=True)
    n_groups = int(g.max(initial=-1)) + 1
    sums = np.bincount(g, weights=diff, minlength=n_groups)
    counts = np.bincount(g, minlength=n_groups).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)  # (n_boot, groups)
    boot = (draws @ sums) / np.maximum(draws @ counts, 1.0)
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return float(diff.mean()), float(lo), float(hi)


def verdicts(results: list, customers: np.ndarray, n_boot: int) -> tuple[list[str], dict[str, Any]]:
    """One line per verdict metric: the sequence model against session item-KNN."""
    from training.results import compare

    by_name = {r.name: r for r in results}
    seq, knn = by_name.get("sequence"), by_name.get(AGAINST)
    lines: list[str] = []
    figures: dict[str, Any] = {}
    if seq is None or knn is None:
        return ["- no verdict: the run lacks the sequence model or session item-KNN"], figures
    for label, metric in VERDICT_METRICS:
        a, b = seq.metrics[metric], knn.metrics[metric]
        rows = compare(seq, knn, metric, n_boot=n_boot)
        diff, lo, hi = clustered_difference(
            seq.rows[metric].columns[0], knn.rows[metric].columns[0], customers, n_boot
        )
        figures[metric] = {"sequence": a, AGAINST: b, "rows": [rows.lo, rows.hi], "customers": [lo, hi]}
        if lo > 0:
            word = "**the sequence model beats session item-KNN.**"
        elif hi < 0:
            word = "**session item-KNN beats the sequence model.**"
        else:
            word = "**no clear difference** (the interval holds zero)."
        lines.append(
            f"- **{label}** (`{metric}`): sequence {a:.4f} vs session item-KNN {b:.4f} ({diff:+.4f}; "
            f"paired 95 % interval over customers [{lo:+.4f}, {hi:+.4f}], over rows "
            f"[{rows.lo:+.4f}, {rows.hi:+.4f}]): " + word
        )
    return lines, figures


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(__doc__)
    parser.add_argument("--customers", type=int, default=3_000)
    parser.add_argument("--items", type=int, default=1_000)
    parser.add_argument("--categories", type=int, default=20)
    parser.add_argument("--days", type=int, default=63)
    parser.add_argument(
        "--max-rows", type=int, default=20_000, help="rows per split at most (a seeded sample)"
    )
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch and LightGBM threads")
    parser.add_argument("--n-boot", type=int, default=300)
    add_seed(parser)
    add_work(parser, Path("/tmp/journey-click-bench"))
    add_markdown(parser)
    args = parser.parse_args(argv)
    args.command = command_line("click_only", argv)

    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.work / 'mlflow' / 'mlflow.db'}")
    from features.build import build_features
    from features.sim import SimConfig, simulate
    from features.snapshots import BuildConfig
    from training.config import TrainConfig
    from training.data import FeatureBuild
    from training.results import markdown_table, results_table
    from training.train import train

    sim = SimConfig(n_customers=args.customers, n_items=args.items, n_categories=args.categories,
                    days=args.days, seed=args.seed, click_only=True)  # fmt: skip
    build_config = BuildConfig.from_dict({
        "mode": "sessions",
        # A click stream has no carts: no cart-abandonment label (its head would have no labelled row).
        "labels": {"next_item_events": ["product_view"], "cart_abandon_hours": None},
        "sessions": {"max_rows_per_split": args.max_rows, "seed": args.seed},
        "workers": 1,
    })  # fmt: skip
    shop, features = args.work / "shop", args.work / "features"
    stamp = {"sim": sim.__dict__, "build": build_config.to_dict()}
    marker = args.work / "inputs.json"
    if not marker.exists() or json.loads(marker.read_text()) != json.loads(json.dumps(stamp, default=str)):
        simulate(sim, shop, progress=False)
        build_features(shop / "events", features, build_config, progress=False)
        marker.write_text(json.dumps(stamp, default=str))
    manifest = json.loads((features / "manifest.json").read_text())
    summary_data = json.loads((shop / "simulation.json").read_text())

    # The task of a session build is the next item: its loss leads (weights: stage, propensities, items,
    # actions), the other heads' labels at a visit's prefix are not what the build is for.
    fit = {
        "max_epochs": args.epochs,
        "patience": 2,
        "threads": args.threads,
        "loss_weights": (0.1, 0.1, 1.0, 0.0),
    }
    config = TrainConfig(features=str(features), fit=fit, n_boot=args.n_boot, register=False,
                         composite=False, experiment="click-only", ks=(10, 20),
                         baselines={"num_threads": args.threads})  # fmt: skip
    result = train(config, progress=False)
    customers = FeatureBuild.open(features).split("test").customer_id
    lines, figures = verdicts(result.results, customers, args.n_boot)
    table = markdown_table(
        results_table(result.results, [m for m in METRICS if m in result.results[0].metrics])
    )
    seconds = " | ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items())
    per_epoch = result.seconds_per_epoch if result.seconds_per_epoch is not None else float("nan")
    section = "\n".join([
        "## Click-only shop: next view, the sequence model against session item-KNN",
        "",
        f"Written by `{args.command}` on {dt.date.today().isoformat()}: a simulated click-only shop "
        f"(`features.sim.clicks`; {args.customers:,} customers, {args.items:,} items in {args.categories} "
        f"categories, {args.days} days, seed {args.seed}; {summary_data['events']:,} product views and "
        "nothing else), built in session mode (a row per view after the first of a visit, visits split at "
        f"gaps over {build_config.sessions.gap_minutes:g} minutes; at most {args.max_rows:,} rows per "
        f"split): rows train {manifest['rows']['train']:,}, valid {manifest['rows']['valid']:,}, test "
        f"{manifest['rows']['test']:,}. One `journey train` run: the "
        f"sequence model (item loss weight 1, the other heads 0.1, at most {args.epochs} epochs, "
        f"{args.threads} threads) and the session-mode baselines, fitted on the training window and scored "
        "on the test window (the last 7 days) against the whole catalogue. Cells: value [95 % bootstrap "
        f"interval over rows]. Fit time: {seconds} (sequence: {per_epoch:.0f} s per epoch, median; stopped "
        f"on {result.stopped}).",
        "",
        table,
        "",
        "The sequence model against session item-KNN (it beats it when the paired 95 % interval over "
        "customers lies above zero):",
        "",
        *lines,
    ])  # fmt: skip
    print(section)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "click_only.md").write_text(section + "\n")
    (RESULTS / "click_only.json").write_text(
        json.dumps({"command": args.command, "verdicts": figures, "seconds": result.seconds,
                    "metrics": {r.name: {m: r.metrics.get(m) for m in METRICS} for r in result.results}},
                   indent=2, default=str) + "\n"
    )  # fmt: skip
    if args.markdown:
        write_section(args.markdown, "click_only", section)


if __name__ == "__main__":
    main()
