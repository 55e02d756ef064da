"""The demo: the main job end to end on the built-in simulator: simulate, build features, train the model
and the baselines, evaluate, register and promote through the gate, then the campaign report.

The gate decides: a model that fails it (below a floor, below the best baseline of its run by more than the
tolerance, a head without labelled rows) is not registered, or not promoted, and the demo says which head
and why instead of serving it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow

from features.build import build_features, format_manifest, load_rows
from features.sim import SimConfig, format_summary, simulate
from features.snapshots import BuildConfig
from predictor.registry import tracking_uri
from reports.campaign import format_headline
from reports.campaign.report import campaign_report
from reports.journey_map import fetch_journey_map
from reports.run import RUN_REPORTERS
from training.config import FitSettings, TrainConfig
from training.promote import promote
from training.registry import champion_version
from training.train import comparison_markdown, train

DEMO_METRICS = (
    "stage/macro_f1",
    "stage_true/macro_f1",
    "purchase_7d/roc_auc",
    "purchase_7d/ece",
    "churn_30d/roc_auc",
    "rec/recall_at_10",
    "rec/ndcg_at_10",
    "policy/learned/snips",
    "policy/learned/true_value",
    "policy/logging/true_value",
)


@dataclass
class DemoOutcome:
    """What the demo's model became.

    Attributes:
        version: its registered version (None: the gate refused it at training, nothing was registered).
        promoted: it became the champion.
        champion: the champion at the end (None: no model to serve).
        reasons: why the gate refused it, one line each.
    """

    version: str | None
    promoted: bool
    champion: str | None
    reasons: list[str]

    @property
    def ok(self) -> bool:
        return self.promoted


def run_demo(
    out: Path,
    *,
    customers: int = 20_000,
    seed: int = 0,
    train_rows: int = 40_000,
    epochs: int = 4,
    echo: Callable[[str], None] = print,
) -> DemoOutcome:
    """Simulates a shop, builds features, trains, evaluates, registers and promotes through the gate,
    printing each step; says which head failed and why when the gate refuses the model."""
    shop = out / "shop"
    features = out / "features"
    echo(f"== 1/5 simulating a shop of {customers:,} customers -> {shop}")
    # A stable 5 % control group in the shop's logging policy, so the campaign report can measure lift.
    summary = simulate(SimConfig(n_customers=customers, seed=seed, control_share=0.05), shop)
    echo(format_summary(summary))

    echo(f"\n== 2/5 building features -> {features}")
    manifest = build_features(shop / "events", features, BuildConfig(), decisions=shop / "decisions.parquet")
    echo(format_manifest(manifest))

    test = load_rows(features, "test", columns=["stage", "purchase_7d", "churn_30d", "logged_action"])
    frame = test.to_pandas()
    echo("\nTest split, hindsight stage mix:")
    echo(frame["stage"].value_counts(normalize=True).round(3).to_string())
    echo(
        f"purchase within 7 days: {frame['purchase_7d'].mean():.3f}; churn within 30 days: "
        f"{frame['churn_30d'].mean():.3f}; "
        f"rows with a logged decision: {frame['logged_action'].notna().mean():.3f}"
    )
    echo(f"Features in {features}/rows, manifest in {features}/manifest.json.")

    echo("\n== 3/5 training the sequence model and the baselines (MLflow run, registered as journey-scorer)")
    config = TrainConfig(
        features=str(features),
        shop=str(shop),
        fit=FitSettings(max_train_rows=train_rows, max_epochs=epochs),
        n_boot=100,
    )
    result = train(config, reporters=RUN_REPORTERS)
    echo(comparison_markdown(result.results, DEMO_METRICS))
    if result.run_id is None:
        raise RuntimeError("the training run has no id: nothing was logged to MLflow")
    reasons = list(result.gate_failures)
    if result.version is None:
        echo(
            f"NOT registered: the model of run {result.run_id} failed the gate (floors, and the best "
            "baseline of the same run on the same test rows; configs/train.yaml, section gate):"
        )
        echo("\n".join(f"  - {r}" for r in reasons))
    else:
        echo(f"passed the gate; registered journey-scorer version {result.version} (alias challenger), "
             f"run {result.run_id}")  # fmt: skip
    page = fetch_journey_map(result.run_id, out)
    echo(f"journey map (stage mix, flows, touchpoints, friction; logged with the run): {page}")

    echo(
        "\n== 4/5 promoting: the gate compares the candidate with its floors, the baselines of its run and "
        "the current champion, all on the same test data"
    )
    promoted = False
    if result.version is None:
        echo("skipped: nothing was registered")
    else:
        decision = promote(features, str(result.version))
        echo(decision.summary())
        promoted = decision.promoted
        reasons = list(decision.failures)

    echo("\n== 5/5 campaign results of the shop's decision log: rates and lift against the control group")
    campaign = campaign_report(shop, out / "campaign", n_boot=300, seed=seed)
    echo(format_headline(campaign.results))
    echo(f"campaign report: {campaign.files.html}")
    experiment = mlflow.get_experiment_by_name(config.experiment)
    echo(
        "\nOpen the MLflow UI on the project's store:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking_uri()} --port 5000\n"
        f"then http://127.0.0.1:5000/#/experiments/{experiment.experiment_id if experiment else ''}"
        f"/runs/{result.run_id} (the run)\n"
        "and http://127.0.0.1:5000/#/models/journey-scorer (versions and aliases)."
    )
    champion = champion_version()
    if promoted:
        echo(
            f"\nServe the champion (version {champion}) to e-mail platforms (README, 'The scoring "
            "service'):\n"
            "  JOURNEY_API_KEYS=demo-key .venv/bin/journey serve --port 8000   # then http://127.0.0.1:8000/docs"
        )
    else:
        where = "at training: not registered" if result.version is None else "at promotion"
        echo(f"\nThe demo's model was REFUSED by the gate ({where}), so it is not served:")
        echo("\n".join(f"  - {r}" for r in reasons))
        echo(
            f"The champion is still version {champion} (from an earlier run)."
            if champion
            else "There is no champion: `journey serve` has no model to serve."
        )
        echo(
            "To walk through serving with this model anyway (never in production), register and promote it "
            "by force, which both commands log loudly:\n"
            f"  .venv/bin/journey train --features {features} --shop {shop} "
            f"--set fit.max_train_rows={train_rows} --set fit.max_epochs={epochs} --force-register\n"
            f"  .venv/bin/journey promote --features {features} --candidate challenger --force"
        )
    return DemoOutcome(result.version, promoted, champion, reasons)
