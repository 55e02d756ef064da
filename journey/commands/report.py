"""What happened: `journey report` (campaigns), `journey map` (journeys) and `journey demo` (all of it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def report(
    decisions: Annotated[
        Path,
        typer.Option(help="Decision log: `journey decisions export` output, or a simulated shop (folder)."),
    ],
    out: Annotated[Path, typer.Option(help="Folder for campaign_report.html, its plots and CSVs.")],
    events: Annotated[
        Path | None, typer.Option(help="Events to derive the outcomes from (a shop's events/ by default).")
    ] = None,
    window_days: Annotated[
        float | None,
        typer.Option(help="A purchase within this many days converts [7; a shop's own outcome_days]."),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples of customers.")] = 1000,
    seed: Annotated[int, typer.Option(help="Random seed of the resamples.")] = 0,
    mlflow_: Annotated[
        bool, typer.Option("--mlflow/--no-mlflow", help="Log the report to MLflow (journey-campaigns).")
    ] = True,
) -> None:
    """Campaign results per action, stage and week, and the lift against the control group."""
    from reports.campaign import format_headline
    from reports.campaign.report import campaign_report

    made = campaign_report(decisions, out, events=events, window_days=window_days, n_boot=n_boot, seed=seed,
                           log_to_mlflow=mlflow_)  # fmt: skip
    typer.echo(format_headline(made.results))
    typer.echo(f"report       {made.files.html}")
    if made.run_id:
        typer.echo(f"mlflow       run {made.run_id} (experiment journey-campaigns)")


def map_(
    features: Annotated[Path, typer.Option(help="Features build: its customers at every cutoff.")],
    out: Annotated[Path, typer.Option(help="Folder for journey_map.html, its PNGs and CSVs.")],
    model: Annotated[str, typer.Option(help="Registered version or alias of journey-scorer.")] = "champion",
    events: Annotated[
        Path | None, typer.Option(help="Events for the touchpoints (default: the build's input).")
    ] = None,
    segments: Annotated[
        str,
        typer.Option(
            help="acquisition_channel, value_tier, none, or a CSV/Parquet file of customer_id,segment."
        ),
    ] = "acquisition_channel",
    max_customers: Annotated[
        int | None, typer.Option(help="Map a seeded sample of this many customers (default: all).")
    ] = None,
    k: Annotated[int, typer.Option(help="Steps (cutoffs) within which a stage should reach the next.")] = 4,
) -> None:
    """Journey map: stage mix over time, flows, touchpoints and friction, whole base and per segment."""
    from reports.journey_map import registered_journey_map

    journey, paths = registered_journey_map(features, model, out, events=events,
                                            segments=None if segments == "none" else segments,
                                            max_customers=max_customers, k=k)  # fmt: skip
    typer.echo("\n".join(journey.headlines))
    typer.echo(f"journey map  {paths.html}")


def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its shop and features.")] = Path(
        "demo_output"
    ),
    customers: Annotated[int, typer.Option(help="Customers of the simulated shop.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    strict: Annotated[
        bool, typer.Option(help="Exit with status 3 when the gate refuses the demo's model.")
    ] = False,
) -> None:
    """Simulate a shop, build its features, train, register and promote its model through the gate, and
    report its campaigns. The demo succeeds when every step ran, whatever the gate decided: a refusal is
    the gate doing its job, and the output says which head failed and why. `--strict` exits with status 3
    when the demo's model is not the champion at the end (for pipelines that need a served model)."""
    from journey.demo import run_demo

    outcome = run_demo(out, customers=customers, seed=seed, echo=typer.echo)
    if strict and not outcome.ok:
        raise typer.Exit(code=3)
