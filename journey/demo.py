"""The demo: the main job end to end on the built-in simulator: simulate, build features, train the model
and the baselines, evaluate, register and promote (the service of a later issue will serve it)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import mlflow

from features.build import BuildConfig, build_features, format_manifest, load_rows
from features.simulate import SimConfig, format_summary, simulate
from training.campaign import campaign_results, format_headline, load_decision_log, log_report, write_report
from training.journey_map import fetch_journey_map
from training.registry import tracking_uri
from training.train import TrainConfig, comparison_markdown, promote, train

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


def run_demo(
    out: Path,
    *,
    customers: int = 20_000,
    seed: int = 0,
    train_rows: int = 40_000,
    epochs: int = 4,
    echo: Callable[[str], None] = print,
) -> None:
    """Simulates a shop, builds features, trains, evaluates, registers and promotes, printing each step."""
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
        fit={"max_train_rows": train_rows, "max_epochs": epochs},
        n_boot=100,
    )
    result = train(config)
    echo(comparison_markdown(result.results, DEMO_METRICS))
    echo(f"registered journey-scorer version {result.version} (alias challenger), run {result.run_id}")
    if result.run_id is None:
        raise RuntimeError("the training run has no id: nothing was logged to MLflow")
    page = fetch_journey_map(result.run_id, out)
    echo(f"journey map (stage mix, flows, touchpoints, friction; logged with the run): {page}")

    echo(
        "\n== 4/5 promoting: the gate compares the candidate with the current champion on the same test data"
    )
    decision = promote(features, str(result.version))
    echo(decision.summary())

    echo("\n== 5/5 campaign results of the shop's decision log: rates and lift against the control group")
    log = load_decision_log(shop)
    results = campaign_results(log, n_boot=300, seed=seed)
    files = write_report(
        results, out / "campaign", notes=["Outcomes from the shop's events (its outcome window)."]
    )
    log_report(out / "campaign", params={"decisions": str(shop)})
    echo(format_headline(results))
    echo(f"campaign report: {files.html}")
    experiment = mlflow.get_experiment_by_name(config.experiment)
    echo(
        "\nOpen the MLflow UI on the project's store:\n"
        f"  .venv/bin/mlflow ui --backend-store-uri {tracking_uri()} --port 5000\n"
        f"then http://127.0.0.1:5000/#/experiments/{experiment.experiment_id if experiment else ''}"
        f"/runs/{result.run_id} (the run)\n"
        "and http://127.0.0.1:5000/#/models/journey-scorer (versions and aliases)."
    )
    echo(
        "\nServe the champion to e-mail platforms (README, 'The scoring service'):\n"
        "  JOURNEY_API_KEYS=demo-key .venv/bin/journey serve --port 8000   # then http://127.0.0.1:8000/docs"
    )
