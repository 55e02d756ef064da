"""Data in: `journey simulate`, `journey ingest` and `journey features build`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer

from journey.commands import parse_overrides


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
    from features.sim import SimConfig, format_summary
    from features.sim import simulate as run

    config = SimConfig(n_customers=customers, days=days, n_items=items, seed=seed, start=start,
                       control_share=control_share)  # fmt: skip
    typer.echo(format_summary(run(config, out, progress=progress)))


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
    from features.ingest import SOURCES, format_summary
    from features.ingest import ingest as run
    from features.sources import ColumnMapping

    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    if tz is not None:
        ZoneInfo(tz)  # an unknown zone fails now, not after reading the file
    column_mapping = None
    if mapping is not None:
        column_mapping = ColumnMapping.from_yaml(mapping).with_pairs(map_ or [])
    elif map_:
        column_mapping = ColumnMapping.from_pairs(map_)
    summary = run(source, path, out, mapping=column_mapping, max_reject_ratio=max_reject_ratio, tz=tz)
    typer.echo(format_summary(summary))


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
    from features.build import build_features, format_manifest
    from features.snapshots import BuildConfig

    if engine not in ("pandas", "spark"):
        raise ValueError(f"--engine must be pandas or spark, not {engine!r}")
    cfg = BuildConfig.from_yaml(config, parse_overrides(set_))
    manifest = build_features(events, out, cfg, decisions=decisions,
                              engine="spark" if engine == "spark" else "pandas",
                              spark_master=spark_master, progress=progress)  # fmt: skip
    typer.echo(format_manifest(manifest))
