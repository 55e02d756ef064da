"""The model's life: `journey train`, `journey evaluate` and `journey promote`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from journey.commands import parse_overrides

if TYPE_CHECKING:
    from training.train import TrainResult


def train(
    config: Annotated[Path | None, typer.Option(help="YAML train config.")] = None,
    features: Annotated[Path | None, typer.Option(help="Features build (overrides the config).")] = None,
    shop: Annotated[
        Path | None, typer.Option(help="Simulated shop, for true stages and policy values.")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. fit.max_epochs=3 (repeatable)."),
    ] = None,
    force_register: Annotated[
        bool, typer.Option(help="Register the model even if it fails the gate (tagged as forced).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Train the sequence model and the baselines, evaluate on the test window, log to MLflow, and register
    the model if it passes the gate (configs/train.yaml, section gate).

    Runs as PyTorch DDP under `torchrun --nproc_per_node N`; only rank 0 logs and registers. Exit status 3:
    the model was trained and logged but failed the gate, so nothing was registered (the alias challenger
    did not move).
    """
    from reports.run import RUN_REPORTERS
    from training.config import TrainConfig
    from training.train import comparison_markdown
    from training.train import train as run

    overrides = parse_overrides(set_)
    if features:
        overrides["features"] = str(features)
    if shop:
        overrides["shop"] = str(shop)
    cfg = TrainConfig.load(config, overrides)  # every setting checked before anything starts
    if force_register:
        typer.secho("WARNING: --force-register registers the model even if it fails the gate.",
                    fg=typer.colors.YELLOW, err=True, bold=True)  # fmt: skip
    result = run(cfg, progress=progress, force_register=force_register, reporters=RUN_REPORTERS)
    if result.run_id:
        typer.echo(comparison_markdown(result.results))
        _say_registered(result)


def _say_registered(result: TrainResult) -> None:
    """What the gate decided; exit status 3 when it refused the model."""
    if result.forced:
        reasons = "\n".join(f"  - {f}" for f in result.gate_failures)
        typer.secho(
            f"\nFORCED: run {result.run_id}; registered journey-scorer version {result.version} (alias "
            f"challenger) although it failed the gate:\n{reasons}",
            fg=typer.colors.YELLOW, err=True, bold=True,
        )  # fmt: skip
    elif result.refused:
        typer.secho(
            f"\nNOT registered: the model of run {result.run_id} failed the gate "
            f"({len(result.gate_failures)} check(s)); the alias challenger did not move:\n"
            + "\n".join(f"  - {f}" for f in result.gate_failures)
            + "\nThe run keeps every metric and the tags gate / gate_reasons. "
            + (
                "A head without labelled training rows is never registered, not even with --force-register: "
                "change the label setting named above and rebuild the features."
                if result.untrained
                else "Change the gate in the config's gate section, or --force-register to register it "
                "anyway."
            ),
            fg=typer.colors.RED, err=True,
        )  # fmt: skip
        raise typer.Exit(code=3)
    elif result.version:
        typer.echo(
            f"\nrun {result.run_id}; passed the gate; registered journey-scorer version {result.version} "
            "(alias challenger)"
        )
    else:
        typer.echo(f"\nrun {result.run_id}; not registered (register: false)")


def evaluate(
    features: Annotated[Path, typer.Option(help="Features build whose test window is evaluated.")],
    model: Annotated[str, typer.Option(help="Registered version or alias of journey-scorer.")] = "champion",
    shop: Annotated[
        Path | None, typer.Option(help="Simulated shop, for true stages and policy values.")
    ] = None,
    baselines: Annotated[
        bool, typer.Option(help="Fit the baselines on the build and show them beside.")
    ] = True,
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 200,
) -> None:
    """Evaluate a registered model (and the baselines) on the test window with the same code."""
    from training.train import comparison_markdown, evaluate_registered

    results = evaluate_registered(features, model, shop=shop, baselines=baselines, n_boot=n_boot)
    typer.echo(comparison_markdown(results))


def promote(
    features: Annotated[
        Path,
        typer.Option(
            help="Features build whose test window candidate, champion and baselines are scored on."
        ),
    ],
    candidate: Annotated[str, typer.Option(help="Version number or alias of the candidate.")] = "challenger",
    config: Annotated[
        Path | None,
        typer.Option(help="YAML train config whose gate section is used (default: the defaults)."),
    ] = None,
    floor: Annotated[
        list[str] | None,
        typer.Option(
            help="A gate floor, metric=value, e.g. roc_auc=0.6 or stage/macro_f1=majority (repeatable)."
        ),
    ] = None,
    baseline_tolerance: Annotated[
        float | None, typer.Option(help="How far below the best baseline of its run a gate metric may be.")
    ] = None,
    tolerance: Annotated[
        float | None, typer.Option(help="How far below the champion a gate metric may be.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Promote even if the gate fails (logged as forced).")] = False,
) -> None:
    """Move the alias `champion` to the candidate only if it passes the gate: every gate metric known (no
    head without labelled rows), above its floor, not below the best baseline of its own run or the
    champion by more than the tolerances, all on the same test rows.

    Exit status 3: refused. Promoting the version that is already the champion changes nothing (status 0).
    """
    from training.config import TrainConfig
    from training.promote import promote as run
    from training.registry import parse_floors

    gate = (
        TrainConfig.load(config)
        .gate_config()
        .with_overrides(
            floors=parse_floors(floor), baseline_tolerance=baseline_tolerance, champion_tolerance=tolerance
        )
    )
    if force:
        typer.secho("WARNING: --force promotes the candidate even if it fails the gate.",
                    fg=typer.colors.YELLOW, err=True, bold=True)  # fmt: skip
    decision = run(features, candidate, force=force, gate_config=gate)
    if decision.forced:
        typer.secho(decision.summary(), fg=typer.colors.YELLOW, bold=True)
    else:
        typer.echo(decision.summary())
    if not decision.promoted and not decision.already_champion:
        raise typer.Exit(code=3)
