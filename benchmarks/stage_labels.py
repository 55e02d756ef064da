"""The hindsight stage labels against the simulator's latent stage, and the models trained on them.

    .venv/bin/python -m benchmarks.stage_labels --customers 20000 --markdown BENCHMARKS.md

Simulates a shop (seeded; `features.sim` writes the latent stage of every customer-day), builds its
features with the stage rules of `features/labels.py` (weekly cutoffs), and reports how often the label of a
customer-cutoff agrees with the latent stage at the start of the cutoff's day (lapsed -> at_risk), with the
full confusion matrix. Then it fits the sequence model (`training.sequence.SequenceScorer`) and the
LightGBM baseline (`lightgbm_aggregates`) on the training window with early stopping on the validation
window, the same pieces `journey train` runs, and scores both on the test window against the latent stage
(`stage_true/...` of `training.evaluate`), with a paired bootstrap interval of the difference.

Outputs go to a work folder outside the repository (the shop is cached there; the features are rebuilt
whenever their label settings differ from the current ones).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks._harness import add_markdown, add_seed, add_work, command_line, make_parser, write_section
from features.schema import STAGES
from features.sim import LATENT_STAGES, LATENT_TO_STAGE

SECTION = "stage_labels"
# Targets of the issue ("Decisions a marketer can trust", part 1).
TARGET_AGREEMENT = 0.75
TARGET_MACRO_F1 = 0.6


@dataclass
class LabelAgreement:
    """The hindsight label of every row of a features build beside the simulator's latent stage.

    Attributes:
        latent: (n,) the latent stage at the start of the cutoff's day (`LATENT_STAGES`, lapsed included).
        label: (n,) the hindsight stage label (`STAGES`).
        split: (n,) train, valid or test.
    """

    latent: np.ndarray
    label: np.ndarray
    split: np.ndarray

    @property
    def truth(self) -> np.ndarray:
        """The latent stage in the label's taxonomy (lapsed -> at_risk)."""
        return np.array([LATENT_TO_STAGE[s] for s in self.latent], dtype=object)

    @property
    def agreement(self) -> float:
        """Share of rows whose label is the latent stage (lapsed -> at_risk)."""
        return float(np.mean(self.truth == self.label)) if len(self.label) else float("nan")

    def agreement_in(self, split: str) -> float:
        rows = self.split == split
        return float(np.mean(self.truth[rows] == self.label[rows])) if rows.any() else float("nan")

    def confusion(self) -> pd.DataFrame:
        """Counts: rows latent stage (lapsed on its own row), columns label."""
        table = pd.crosstab(pd.Series(self.latent, name="latent"), pd.Series(self.label, name="label"))
        return table.reindex(index=list(LATENT_STAGES), columns=list(STAGES), fill_value=0)

    def share_labelled(self, truth: str, label: str) -> float:
        """Share of the rows whose latent stage (lapsed -> at_risk) is `truth` that are labelled `label`."""
        rows = self.truth == truth
        return float(np.mean(self.label[rows] == label)) if rows.any() else float("nan")

    def label_counts(self) -> dict[str, int]:
        values, counts = np.unique(self.label, return_counts=True)
        return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def label_agreement(shop: Path, features: Path) -> LabelAgreement:
    """Joins a features build made from a simulated shop to the shop's latent stages.

    The latent stage of a row is the stage at the start of its cutoff's day, as in
    `training.sim_truth.load_sim_truth`; here lapsed stays apart, for the confusion matrix.
    """
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    rows = ds.dataset(Path(features) / "rows").to_table(columns=["customer_id", "cutoff", "split", "stage"])
    frame = rows.to_pandas()
    keys = pd.DataFrame(
        {
            "customer_id": frame["customer_id"].astype(str).to_numpy(),
            "day": pd.to_datetime(frame["cutoff"], utc=True).dt.tz_localize(None).dt.normalize().to_numpy(),
        }
    )
    days = sorted({d.date() for d in pd.to_datetime(keys["day"].unique())})
    truth = pq.read_table(Path(shop) / "truth" / "stages.parquet", filters=[("day", "in", days)]).to_pandas()
    truth["customer_id"] = truth["customer_id"].astype(str)
    truth["day"] = pd.to_datetime(truth["day"])
    merged = keys.merge(truth, on=["customer_id", "day"], how="left", validate="many_to_one")
    if merged["stage"].isna().any():
        missing = int(merged["stage"].isna().sum())
        raise ValueError(f"{missing} rows of {features} have no latent stage in {shop}")
    return LabelAgreement(
        latent=merged["stage"].astype(str).to_numpy(dtype=object),
        label=frame["stage"].astype(str).to_numpy(dtype=object),
        split=frame["split"].astype(str).to_numpy(dtype=object),
    )


def ensure_data(work: Path, customers: int, seed: int) -> tuple[Path, Path]:
    """The simulated shop (cached) and its features, rebuilt when the label settings changed."""
    from features.build import build_features
    from features.sim import SimConfig, simulate
    from features.snapshots import BuildConfig

    shop, features = work / "shop", work / "features"
    summary = shop / "simulation.json"
    wanted = {"n_customers": customers, "seed": seed}
    if summary.exists():
        config = json.loads(summary.read_text()).get("config", {})
        if any(config.get(k) != v for k, v in wanted.items()):
            raise SystemExit(f"{shop} holds another shop ({config}); pass another --work")
    else:
        simulate(SimConfig(n_customers=customers, seed=seed), shop, progress=False)
    build_config = BuildConfig()
    manifest = features / "manifest.json"
    current = json.loads(json.dumps(asdict(build_config.labels)))
    if not manifest.exists() or json.loads(manifest.read_text())["config"]["labels"] != current:
        build_features(
            shop / "events", features, build_config, decisions=shop / "decisions.parquet", progress=False
        )
    return shop, features


@dataclass
class Fitted:
    """The two scorers' test results and their validation macro-F1 against the latent stage."""

    results: list[Any]
    valid_macro_f1: dict[str, float]
    seconds: dict[str, float]


def fit_and_score(
    shop: Path, features: Path, args: argparse.Namespace, model: dict[str, Any], fit: dict[str, Any]
) -> Fitted:
    """Fits the sequence model and LightGBM on the training window, scores both on the test window."""
    from training.baselines import all_baselines
    from training.config import TrainConfig
    from training.data import FeatureBuild
    from training.metrics import macro_f1
    from training.sequence import SequenceScorer, model_config_for
    from training.sim_truth import load_sim_truth
    from training.train import evaluate_scorers

    config = TrainConfig(features=str(features), shop=str(shop), model=model, fit=fit, ks=(10,),
                         n_boot=args.n_boot, register=False)  # fmt: skip
    build = FeatureBuild.open(features)
    train_data, valid, test = build.split("train"), build.split("valid"), build.split("test")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    sequence = SequenceScorer(model_config_for(build, **model), config.fit_config(), progress=False).fit(
        train_data, valid
    )
    seconds["sequence"] = time.perf_counter() - started
    scorers: dict[str, Any] = {"sequence": sequence}
    for baseline in all_baselines({"baselines": ("lightgbm_aggregates",), "num_threads": args.threads}):
        started = time.perf_counter()
        scorers[baseline.name] = baseline.fit(train_data, valid)
        seconds[baseline.name] = time.perf_counter() - started
    valid_truth = load_sim_truth(shop, features, "valid", valid).stage
    known = valid_truth >= 0
    valid_f1 = {}
    for name, scorer in scorers.items():
        proba = np.asarray(scorer.predict(valid, k=10).stage_proba)
        valid_f1[name] = macro_f1(valid_truth[known], proba[known].argmax(axis=1), n_classes=len(STAGES))
    return Fitted(evaluate_scorers(scorers, build, test, config), valid_f1, seconds)


def fmt(x: float) -> str:
    return f"{x:.4f}" if np.isfinite(x) else "n/a"


def agreement_lines(report: LabelAgreement) -> list[str]:
    confusion = report.confusion()
    total = confusion.to_numpy().sum()
    lines = [
        "| latent \\ label | " + " | ".join(STAGES) + " | rows | labelled as its stage |",
        "|---|" + "---:|" * (len(STAGES) + 2),
    ]
    for latent, row in confusion.iterrows():
        mapped = LATENT_TO_STAGE[str(latent)]
        share = row[mapped] / row.sum() if row.sum() else float("nan")
        cells = [f"**{v:,}**" if s == mapped else f"{v:,}" for s, v in row.items()]
        lines.append(f"| {latent} | " + " | ".join(cells) + f" | {row.sum():,} | {share:.1%} |")
    label_total = confusion.sum(axis=0)
    precision = []
    for s in STAGES:
        latent_rows = [lat for lat in LATENT_STAGES if LATENT_TO_STAGE[lat] == s]
        hits = confusion.loc[latent_rows, s].sum()
        precision.append(f"{hits / label_total[s]:.1%}" if label_total[s] else "n/a")
    lines.append("| **labelled rows** | " + " | ".join(f"{v:,}" for v in label_total) + f" | {total:,} | |")
    lines.append("| **label is the latent stage** | " + " | ".join(precision) + " | | |")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(__doc__)
    parser.add_argument("--customers", type=int, default=20_000)
    add_seed(parser)
    add_work(parser, Path("/tmp/journey-stage-labels"))
    parser.add_argument("--labels-only", action="store_true", help="the label agreement alone, no training")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--train-rows", type=int, default=0, help="0: every training row")
    parser.add_argument(
        "--loss-weights", type=float, nargs=4, default=None, help="stage, propensity, items, action"
    )
    parser.add_argument(
        "--stage-class-power",
        type=float,
        default=None,
        help="weigh each stage in the stage loss by (1 / its share) ** this (training.sequence.FitConfig)",
    )
    parser.add_argument("--encoder", default=None, help="gru or transformer (default: the model's)")
    parser.add_argument("--n-boot", type=int, default=300)
    parser.add_argument("--threads", type=int, default=0, help="torch and LightGBM threads (0: all cores)")
    add_markdown(parser)
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    else:
        args.threads = os.cpu_count() or 1

    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    shop, features = ensure_data(args.work, args.customers, args.seed)
    manifest = json.loads((features / "manifest.json").read_text())
    report = label_agreement(shop, features)
    rows = manifest["rows"]
    command = command_line("stage_labels", argv)
    ok = "meets" if report.agreement >= TARGET_AGREEMENT else "**misses**"
    ok = f"{ok} the target of {TARGET_AGREEMENT:.0%}"
    lines = [
        "## Simulated shop: hindsight stage labels against the latent stage",
        "",
        f"Written by `{command}` on {dt.date.today().isoformat()}: {args.customers:,} simulated customers "
        f"(seed {args.seed}), {manifest['input']['n_events']:,} events, weekly cutoffs; rows train "
        f"{rows['train']:,}, valid {rows['valid']:,}, test {rows['test']:,} (a customer gets a row at a "
        "cutoff when active in the 60 days before it or when a decision was logged for them, which the "
        "simulator does weekly for every customer who has arrived, so lapsed customers are most of the "
        "rows). The stage rules are those of `features/labels.py` with the defaults of "
        "`configs/features.yaml`; the latent stage of a row is the simulator's stage at the start of the "
        "cutoff's day.",
        "",
        f"**Agreement of the labels with the latent stage** (lapsed -> at_risk), all rows: "
        f"**{report.agreement:.1%}** (train {report.agreement_in('train'):.1%}, valid "
        f"{report.agreement_in('valid'):.1%}, test {report.agreement_in('test'):.1%}): it {ok}. "
        "Confusion matrix over all rows (rows: latent stage, lapsed on its "
        "own row; columns: label; bold: the cells that agree):",
        "",
        *agreement_lines(report),
    ]
    if not args.labels_only:
        lines += ["", *model_lines(shop, features, args)]
    lines += ["", f"Whole run: {time.perf_counter() - started:.0f} s."]
    section = "\n".join(lines)
    print(section)
    if args.markdown:
        write_section(args.markdown, SECTION, section)


def model_lines(shop: Path, features: Path, args: argparse.Namespace) -> list[str]:
    from training.results import compare
    from training.sequence import FitConfig

    model: dict[str, Any] = {"encoder": args.encoder} if args.encoder else {}
    fit: dict[str, Any] = {"max_epochs": args.epochs, "patience": args.patience,
                           "max_train_rows": args.train_rows}  # fmt: skip
    if args.loss_weights:
        fit["loss_weights"] = list(args.loss_weights)
    if args.stage_class_power is not None:
        fit["stage_class_power"] = args.stage_class_power
    fitted = fit_and_score(shop, features, args, model, fit)
    by_name = {r.name: r for r in fitted.results}
    seq, lgbm = by_name["sequence"], by_name["lightgbm_aggregates"]
    metric = "stage_true/macro_f1"
    paired = compare(seq, lgbm, metric, n_boot=args.n_boot)
    weights = fit.get("loss_weights", FitConfig().loss_weights)
    power = fit.get("stage_class_power", FitConfig().stage_class_power)
    keys = [metric, "stage_true/accuracy", *[f"stage_true/f1/{s}" for s in STAGES], "stage/macro_f1"]

    def cell(result: Any, key: str) -> str:
        value = result.metrics.get(key, float("nan"))
        lo, hi = result.metrics.get(f"{key}_lo"), result.metrics.get(f"{key}_hi")
        return fmt(value) + (f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "")

    n_test = int(seq.metrics.get("stage_true/n_rows", 0))
    above = paired.lo > 0
    reached = seq.metrics[metric] >= TARGET_MACRO_F1
    verdict = (
        f"the model's latent-stage macro-F1 {'reaches' if reached else '**misses**'} the target "
        f"{TARGET_MACRO_F1} ({seq.metrics[metric] - TARGET_MACRO_F1:+.4f}), and the paired interval of "
        f"model minus LightGBM {'lies above zero' if above else '**does not lie above zero**'}."
    )
    return [
        "The sequence model and the LightGBM baseline trained on these labels (the pieces `journey train` "
        f"runs: {args.train_rows or 'all'} training rows, at most {args.epochs} epochs with patience "
        f"{args.patience} on the validation loss, loss weights stage/propensity/items/action "
        f"{tuple(weights)}, stage loss weighted by (1 / share of the stage) ** {power}, encoder "
        f"{args.encoder or 'default'}; LightGBM with early stopping on "
        "validation), scored against the latent stage on the **test window: all "
        f"{n_test:,} customer-cutoffs of its two cutoffs** (every row has a latent stage). Cells: value "
        f"[95 % bootstrap interval, {args.n_boot} resamples]. Fit time: "
        + " | ".join(f"{k} {v:.0f} s" for k, v in fitted.seconds.items())
        + ".",
        "",
        "| metric | sequence | lightgbm_aggregates |",
        "|---|---|---|",
        *[f"| {k} | {cell(seq, k)} | {cell(lgbm, k)} |" for k in keys],
        f"| stage_true/macro_f1 on the validation window (what settings were chosen on) | "
        f"{fmt(fitted.valid_macro_f1['sequence'])} | {fmt(fitted.valid_macro_f1['lightgbm_aggregates'])} |",
        "",
        f"Model minus LightGBM, latent-stage macro-F1 on the test rows: {paired.point:+.4f}, paired 95 % "
        f"bootstrap interval [{paired.lo:+.4f}, {paired.hi:+.4f}]: {verdict}",
    ]


if __name__ == "__main__":
    main()
