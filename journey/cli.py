"""`journey`: one Typer app, each command a few lines over library functions the notebooks call too."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

if TYPE_CHECKING:
    from serving.settings import ServeSettings

app = typer.Typer(help="Journey engine: customer journey stages, next best action, recommendations.")
features_app = typer.Typer(help="Feature jobs: events -> model-ready sequences and labels.")
app.add_typer(features_app, name="features")
decisions_app = typer.Typer(help="The service's decision log.")
app.add_typer(decisions_app, name="decisions")


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug messages.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    customers: Annotated[int, typer.Option(help="Number of customers.")] = 20_000,
    days: Annotated[int, typer.Option(help="Simulated days.")] = 182,
    items: Annotated[int, typer.Option(help="Catalogue size.")] = 5_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same shop.")] = 0,
    start: Annotated[str, typer.Option(help="First simulated day (ISO date).")] = "2026-01-05",
    control_share: Annotated[
        float, typer.Option(help="Share of customers in the control group (always no_send).")
    ] = 0.0,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Simulate a shop: events, catalogue, decision log and the ground truth."""
    from features.simulate import SimConfig, format_summary
    from features.simulate import simulate as run

    try:
        config = SimConfig(
            n_customers=customers,
            days=days,
            n_items=items,
            seed=seed,
            start=start,
            control_share=control_share,
        )
    except ValueError as err:
        raise _fail(str(err)) from err
    summary = run(config, out, progress=progress)
    typer.echo(format_summary(summary))


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="retailrocket, rees46, online_retail or generic.")],
    path: Annotated[Path, typer.Argument(help="The source file (CSV, CSV.gz or Parquet).")],
    out: Annotated[Path, typer.Option(help="Output folder: events.parquet, rejects.csv, summary.json.")],
    mapping: Annotated[Path | None, typer.Option(help="YAML column mapping (generic source).")] = None,
    map_: Annotated[
        list[str] | None,
        typer.Option("--map", help="field=column pairs for the generic source (repeatable)."),
    ] = None,
    max_reject_ratio: Annotated[
        float, typer.Option(help="Fail when more rows than this are rejected.")
    ] = 0.05,
    tz: Annotated[str | None, typer.Option(help="Time zone of naive timestamps (default UTC).")] = None,
) -> None:
    """Validate a real export against the event contract and write it as Parquet."""
    from features.adapters import ColumnMapping
    from features.ingest import SOURCES, format_summary
    from features.ingest import ingest as run
    from features.validate import RejectRatioExceeded

    if source not in SOURCES:
        raise _fail(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    try:
        column_mapping = None
        if mapping is not None:
            column_mapping = ColumnMapping.from_yaml(mapping).with_pairs(map_ or [])
        elif map_:
            column_mapping = ColumnMapping.from_pairs(map_)
        summary = run(source, path, out, mapping=column_mapping, max_reject_ratio=max_reject_ratio, tz=tz)
    except RejectRatioExceeded as exc:
        raise _fail(str(exc)) from exc
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(format_summary(summary))


def _parse_overrides(pairs: list[str] | None) -> dict[str, object]:
    overrides: dict[str, object] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise _fail(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@features_app.command("build")
def features_build(
    events: Annotated[Path, typer.Argument(help="Validated events: a Parquet file or folder.")],
    out: Annotated[Path, typer.Option(help="Output folder (rows/, vocab.json, manifest.json).")],
    decisions: Annotated[
        Path | None, typer.Option(help="Decision log (Parquet) for logged-send labels.")
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML build config.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a setting, e.g. encoder.max_len=30 (repeatable)."),
    ] = None,
    engine: Annotated[str, typer.Option(help="pandas (one machine) or spark.")] = "pandas",
    spark_master: Annotated[str, typer.Option(help="Spark master URL for --engine spark.")] = "local[2]",
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Build per-customer sequences, aggregates and hindsight labels at each cutoff, split by time."""
    from features.build import BuildConfig, build_features, format_manifest

    if engine not in ("pandas", "spark"):
        raise _fail(f"--engine must be pandas or spark, not {engine!r}")
    try:
        cfg = BuildConfig.from_yaml(config, _parse_overrides(set_))
        manifest = build_features(
            events,
            out,
            cfg,
            decisions=decisions,
            engine="spark" if engine == "spark" else "pandas",
            spark_master=spark_master,
            progress=progress,
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    typer.echo(format_manifest(manifest))


@app.command()
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
    from training.train import TrainConfig, comparison_markdown
    from training.train import train as run

    overrides = _parse_overrides(set_)
    if features:
        overrides["features"] = str(features)
    if shop:
        overrides["shop"] = str(shop)
    if force_register:
        typer.secho("WARNING: --force-register registers the model even if it fails the gate.",
                    fg=typer.colors.YELLOW, err=True, bold=True)  # fmt: skip
    try:
        cfg = TrainConfig.load(config, overrides)
        result = run(cfg, progress=progress, force_register=force_register)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if not result.run_id:
        return
    typer.echo(comparison_markdown(result.results))
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
            + "\nThe run keeps every metric and the tags gate / gate_reasons. Change the gate in the "
            "config's gate section, or --force-register to register it anyway.",
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


@app.command()
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

    from predictor.registry import MODEL_NAME, configure, load_registered
    from training.data import FeatureBuild
    from training.train import TrainConfig, comparison_markdown, evaluate_scorers, fit_baselines

    configure()
    build = FeatureBuild.open(features)
    by = {"version": model} if model.isdigit() else {"alias": model}
    pyfunc = load_registered(MODEL_NAME, **by).pyfunc

    class Registered:
        name = f"registered_{model}"

        def predict(self, data, k=50):
            return pyfunc.predict_features(data, k=k)

    cfg = TrainConfig(features=str(features), shop=str(shop) if shop else None, n_boot=n_boot)
    scorers: dict[str, object] = {Registered.name: Registered()}
    if baselines:
        scorers.update(fit_baselines(cfg, build.split("train"), build.split("valid"), {}))
    results = evaluate_scorers(scorers, build, build.split("test"), cfg)
    typer.echo(comparison_markdown(results))


@app.command()
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
    from training.registry import parse_floors
    from training.train import TrainConfig
    from training.train import promote as run

    try:
        gate = (
            TrainConfig.load(config)
            .gate_config()
            .with_overrides(
                floors=parse_floors(floor),
                baseline_tolerance=baseline_tolerance,
                champion_tolerance=tolerance,
            )
        )
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if force:
        typer.secho("WARNING: --force promotes the candidate even if it fails the gate.",
                    fg=typer.colors.YELLOW, err=True, bold=True)  # fmt: skip
    try:
        decision = run(features, candidate, force=force, gate_config=gate)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if decision.forced:
        typer.secho(decision.summary(), fg=typer.colors.YELLOW, bold=True)
    else:
        typer.echo(decision.summary())
    if not decision.promoted and not decision.already_champion:
        raise typer.Exit(code=3)


LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    config: Annotated[
        Path | None,
        typer.Option(help="YAML serve settings (configs/serve.yaml).", envvar="JOURNEY_CONFIG"),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")
    ] = None,
    store: Annotated[
        str | None, typer.Option(help="Online store URL (sqlite:///... or redis://...).")
    ] = None,
    alias: Annotated[str | None, typer.Option(help="Registry alias to serve.")] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Server processes (default: the `workers` setting, 1); each loads the model."),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the scoring API (journey-scorer@champion) with uvicorn. API keys: JOURNEY_API_KEYS.

    Every process, one or `--workers N`, builds the app with `serving.app:app_from_environment` from the
    same layers, checked here first: the file (JOURNEY_CONFIG), the `--set` overrides and options
    (passed on as JOURNEY_OVERRIDES), then the JOURNEY_* variables. Torch threads per worker:
    `torch_threads`, else max(1, cores // workers).
    """
    if log_level not in LOG_LEVELS:
        raise _fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    overrides = _parse_overrides(set_)
    if store:
        overrides["store_url"] = store
    if alias:
        overrides["model_alias"] = alias
    if workers is not None:
        overrides["workers"] = workers
    settings = _serve_settings(config, overrides)
    import uvicorn

    typer.echo(
        f"serving {settings.model_name}@{settings.model_alias} on http://{host}:{port} (docs at /docs): "
        f"{settings.workers} worker(s), {settings.threads_per_worker()} torch thread(s) each"
    )
    uvicorn.run(
        "serving.app:app_from_environment",
        factory=True,
        workers=settings.workers,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
    )


def _serve_settings(config: Path | None, overrides: dict[str, object]) -> ServeSettings:
    """The settings `journey serve` will run with, checked in this process so that a mistake is one line
    here rather than a traceback in every worker; then handed to the workers through the environment.

    The online store is opened once here: a wrong URL or an unreachable Redis fails now, and a new SQLite
    file gets its schema and WAL mode from one process instead of N racing workers.
    """
    import json
    import os

    from serving.app import CONFIG_ENV, OVERRIDES_ENV, require_keys
    from serving.settings import ServeSettings
    from serving.store import open_store

    try:
        settings = ServeSettings.load(config, overrides)
        require_keys(settings)
        encoded = json.dumps(overrides)
    except (OSError, ValueError, TypeError, yaml.YAMLError) as err:
        raise _fail(" ".join(str(err).split())) from err  # YAML's errors span lines
    try:
        opened = open_store(settings.store_url, max_events=settings.history_len)
        opened.close()
    except Exception as err:  # the store's own errors (sqlite3, redis) are the user's to fix: one line
        raise _fail(f"cannot open the online store {settings.store_url!r}: {err}") from err
    # Worker processes are fresh interpreters that inherit this environment (uvicorn spawns them).
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    else:
        os.environ.pop(CONFIG_ENV, None)
    os.environ[OVERRIDES_ENV] = encoded
    return settings


@decisions_app.command("export")
def decisions_export(
    out: Annotated[Path, typer.Option(help="Parquet (or .csv) file to write.")],
    store: Annotated[str, typer.Option(help="Online store URL.")] = "sqlite:///online/journey.db",
) -> None:
    """Write the decisions with their outcomes: the decision log `journey features build --decisions` and
    the off-policy evaluation read."""
    from serving.store import open_store

    try:
        opened = open_store(store)
    except ValueError as err:
        raise _fail(str(err)) from err
    try:
        frame = opened.export_decisions()
    finally:
        opened.close()
    # Microsecond times, as the event contract and the simulator's decision log store them.
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    typer.echo(f"{len(frame):,} decisions -> {out}")


@app.command("score-audience")
def score_audience(
    events: Annotated[
        Path, typer.Option(help="Parquet events dataset (the event contract), e.g. a shop's events/.")
    ],
    out: Annotated[Path, typer.Option(help="File to write: .parquet or .csv.")],
    now: Annotated[str | None, typer.Option(help="Scoring time (ISO); default now.")] = None,
    segment: Annotated[
        Path | None, typer.Option(help="Only these customers: CSV or Parquet with a customer_id column.")
    ] = None,
    items: Annotated[int, typer.Option(help="Recommended items per customer.")] = 5,
    chunk: Annotated[int, typer.Option(help="Customers per vectorised pass.")] = 5_000,
    record: Annotated[
        bool, typer.Option(help="Record the decisions in the online store (ids in the file).")
    ] = True,
    config: Annotated[Path | None, typer.Option(help="YAML serve settings (rules, policy, store).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: key=value.")] = None,
    alias: Annotated[str | None, typer.Option(help="Registry alias of the model.")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress.")] = True,
) -> None:
    """Score every customer (or a segment) to a file an e-mail platform imports: stage, next best action,
    top items, propensities and decision ids."""
    from datetime import UTC, datetime

    import pandas as pd
    from rich.progress import Progress

    from serving.audience import read_segment
    from serving.audience import score_audience as run
    from serving.model import ModelManager
    from serving.service import Service
    from serving.settings import ServeSettings
    from serving.store import open_store
    from training.registry import configure

    overrides = _parse_overrides(set_)
    if alias:
        overrides["model_alias"] = alias
    try:
        settings = ServeSettings.load(config, overrides)
        when = pd.Timestamp(now).to_pydatetime() if now else datetime.now(UTC)
        when = when.replace(tzinfo=UTC) if when.tzinfo is None else when
        ids = read_segment(segment) if segment else None
    except ValueError as err:
        raise _fail(str(err)) from err
    configure()
    manager = ModelManager(settings.model_name, settings.model_alias)
    result = manager.reload()
    if result["error"]:
        raise _fail(result["error"])
    store = open_store(settings.store_url, max_events=settings.history_len)
    service = Service(settings, store, manager)
    try:
        with Progress(disable=not progress) as bar:
            task = bar.add_task("scoring customers", total=None)

            def advance(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            summary = run(service, events, out, now=when, segment=ids, chunk=chunk, n_items=items,
                          record=record, progress=advance)  # fmt: skip
    except ValueError as err:
        raise _fail(str(err)) from err
    finally:
        store.close()
    typer.echo(
        f"{summary.customers:,} customers scored in {summary.seconds:.1f} s "
        f"({summary.customers_per_second:,.0f}/s) by {settings.model_name} version {result['version']} "
        f"-> {out}"
    )
    typer.echo(
        "actions: " + ", ".join(f"{a} {n:,}" for a, n in sorted(summary.actions.items(), key=lambda x: -x[1]))
    )


@app.command()
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


@app.command()
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
    from training.campaign import (
        campaign_results,
        format_headline,
        load_decision_log,
        log_report,
        write_report,
    )

    try:
        log = load_decision_log(decisions, events, window_days=window_days)
        results = campaign_results(log, n_boot=n_boot, seed=seed)
    except ValueError as err:
        raise _fail(str(err)) from err
    window = log.attrs.get("window_days")
    notes = (
        [] if window is None else [f"Outcomes from the events: a purchase within {window:g} days converts."]
    )
    if log.attrs.get("stage_source") != "log":
        notes.append(f"Stage: {log.attrs.get('stage_source')} (the decision log has no stage of its own).")
    files = write_report(results, out, notes=notes)
    typer.echo(format_headline(results))
    typer.echo(f"report       {files.html}")
    if mlflow_:
        run_id = log_report(out, params={"decisions": str(decisions), "window_days": window})
        typer.echo(f"mlflow       run {run_id} (experiment journey-campaigns)")


@app.command("map")
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
    from training.journey_map import registered_journey_map

    try:
        journey, paths = registered_journey_map(
            features,
            model,
            out,
            events=events,
            segments=None if segments == "none" else segments,
            max_customers=max_customers,
            k=k,
        )
    except (FileNotFoundError, ValueError) as err:
        raise _fail(str(err)) from err
    typer.echo("\n".join(journey.headlines))
    typer.echo(f"journey map  {paths.html}")


if __name__ == "__main__":  # pragma: no cover
    app()
