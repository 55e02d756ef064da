"""The service: `journey serve`, `journey score-audience` and `journey decisions export`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from journey.commands import parse_overrides

if TYPE_CHECKING:
    from serving.settings import ServeSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's


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
        raise ValueError(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    overrides = parse_overrides(set_)
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

    settings = ServeSettings.load(config, overrides)
    require_keys(settings)
    try:
        encoded = json.dumps(overrides)
    except TypeError as err:
        raise ValueError(f"--set values must be plain YAML values: {err}") from err
    try:
        opened = open_store(settings.store_url, max_events=settings.history_len)
        opened.close()
    except Exception as err:  # the store's own errors (sqlite3, redis) are the user's to fix: one line
        raise ValueError(f"cannot open the online store {settings.store_url!r}: {err}") from err
    # Worker processes are fresh interpreters that inherit this environment (uvicorn spawns them).
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())
    else:
        os.environ.pop(CONFIG_ENV, None)
    os.environ[OVERRIDES_ENV] = encoded
    return settings


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
    from rich.progress import Progress

    from serving.audience import export_audience
    from serving.settings import ServeSettings

    overrides = parse_overrides(set_)
    if alias:
        overrides["model_alias"] = alias
    settings = ServeSettings.load(config, overrides)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("scoring customers", total=None)
        summary, version = export_audience(
            settings, events, out, now=now, segment=segment, chunk=chunk, n_items=items, record=record,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )  # fmt: skip
    typer.echo(
        f"{summary.customers:,} customers scored in {summary.seconds:.1f} s "
        f"({summary.customers_per_second:,.0f}/s) by {settings.model_name} version {version} -> {out}"
    )
    actions = sorted(summary.actions.items(), key=lambda x: -x[1])
    typer.echo("actions: " + ", ".join(f"{a} {n:,}" for a, n in actions))


def decisions_export(
    out: Annotated[Path, typer.Option(help="Parquet (or .csv) file to write.")],
    store: Annotated[str, typer.Option(help="Online store URL.")] = "sqlite:///online/journey.db",
) -> None:
    """Write the decisions with their outcomes: the decision log `journey features build --decisions` and
    the off-policy evaluation read."""
    from serving.decision_log import export_decision_log

    typer.echo(f"{export_decision_log(store, out):,} decisions -> {out}")
