"""The demo: the main job end to end on the built-in simulator (later issues add train, register, serve)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from features.build import BuildConfig, build_features, format_manifest, load_rows
from features.simulate import SimConfig, format_summary, simulate


def run_demo(
    out: Path, *, customers: int = 20_000, seed: int = 0, echo: Callable[[str], None] = print
) -> None:
    """Simulates a shop of `customers`, builds its features, and prints a summary of each step."""
    shop = out / "shop"
    features = out / "features"
    echo(f"== 1/2 simulating a shop of {customers:,} customers -> {shop}")
    summary = simulate(SimConfig(n_customers=customers, seed=seed), shop)
    echo(format_summary(summary))

    echo(f"\n== 2/2 building features -> {features}")
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
    echo(f"\nDone. Features in {features}/rows, manifest in {features}/manifest.json.")
