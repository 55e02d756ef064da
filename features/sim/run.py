"""A whole simulation: the catalogue, the chunks one after another, the files and the summary."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from features.schema import Action
from features.sim.catalog import _Catalog, _make_catalog
from features.sim.clicks import simulate_clicks
from features.sim.config import SimConfig
from features.sim.day import _ChunkSim
from features.sim.world import _N_STAGES, LATENT_STAGES, _Tables
from features.sim.writer import _item_ids


@dataclass
class SimSummary:
    """What a simulation made, and the realism figures it reached.

    Rates: `open_rate`, `click_rate` and `unsubscribe_rate` are per send; `conversion_no_send` is the share
    of no_send decisions followed by a purchase within the outcome window; `stage_mix` is the share of
    customer-days per latent stage.
    """

    out: str
    customers: int
    items: int
    events: int
    events_per_customer: float
    parts: int
    decisions: int
    sends: int
    opens: int
    clicks: int
    unsubscribes: int
    purchases: int
    conversions: int
    conversion_no_send: float
    open_rate: float
    click_rate: float
    unsubscribe_rate: float
    stage_mix: dict[str, float]
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_summary(summary: SimSummary) -> str:
    """Renders a summary as a few lines of text for the command line."""
    mix = ", ".join(f"{stage} {share:.1%}" for stage, share in summary.stage_mix.items())
    return "\n".join(
        [
            f"simulated {summary.customers:,} customers, {summary.items:,} items in {summary.seconds:.1f} s"
            f" -> {summary.out}",
            f"events       {summary.events:,} ({summary.events_per_customer:.1f} per customer)"
            f" in {summary.parts} part(s); purchases {summary.purchases:,}",
            f"decisions    {summary.decisions:,}; sends {summary.sends:,};"
            f" conversions {summary.conversions:,}"
            f" (no_send converts {summary.conversion_no_send:.1%} in the outcome window)",
            f"e-mail       open {summary.open_rate:.1%}, click {summary.click_rate:.1%},"
            f" unsubscribe {summary.unsubscribe_rate:.2%} per send",
            f"stage mix    {mix}",
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# The whole run
# ----------------------------------------------------------------------------------------------------------


def simulate(config: SimConfig, out: Path, *, progress: bool = True) -> SimSummary:
    """Simulates the shop and writes events, catalogue, decisions and the truth under `out`.

    Layout: `events/part-NNNNN.parquet` (one per chunk of `chunk_size` customers; each customer in one
    part; sorted by customer_id then ts), `catalog.parquet`, `decisions.parquet`, `truth/stages.parquet`,
    `truth/decisions.parquet`, `simulation.json`. Existing files of these names are replaced.

    Args:
        config: what to simulate.
        out: output folder (created).
        progress: show a progress bar on stderr.

    Returns:
        What was made, with the realism figures (also written to `simulation.json`).
    """
    t0 = time.perf_counter()
    out = Path(out)
    events_dir = out / "events"
    truth_dir = out / "truth"
    events_dir.mkdir(parents=True, exist_ok=True)
    truth_dir.mkdir(parents=True, exist_ok=True)
    for old in events_dir.glob("part-*.parquet"):
        old.unlink()

    root = np.random.SeedSequence(config.seed)
    catalog_seed, chunks_seed = root.spawn(2)
    catalog = _make_catalog(config, np.random.default_rng(catalog_seed))
    tables = _Tables.build(config.outcome_days)
    pq.write_table(
        pa.table(
            {
                "item_id": _item_ids(config.n_items),
                "category": pa.array([catalog.names[c] for c in catalog.category], type=pa.string()),
                "price": pa.array(catalog.price, type=pa.float64()),
                "popularity": pa.array(catalog.popularity, type=pa.float64()),
            }
        ),
        out / "catalog.parquet",
    )

    if config.click_only:
        return _click_only(config, catalog, chunks_seed, out, t0)

    n_chunks = -(-config.n_customers // config.chunk_size)
    chunk_seeds = chunks_seed.spawn(n_chunks)
    totals: dict[str, int] = dict.fromkeys(
        (
            "events",
            "decisions",
            "conversions",
            "no_send",
            "no_send_converted",
            "sends",
            "opens",
            "clicks",
            "unsubscribes",
            "purchases",
        ),
        0,
    )
    stage_days = np.zeros(_N_STAGES, dtype=np.int64)
    writers: dict[str, pq.ParquetWriter] = {}

    bar = Progress(
        TextColumn("[bold]simulate[/bold] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    )
    try:
        with bar:
            task = bar.add_task("days", total=n_chunks * config.days)
            for i in range(n_chunks):
                first = i * config.chunk_size
                n = min(config.chunk_size, config.n_customers - first)
                bar.update(task, description=f"chunk {i + 1}/{n_chunks} ({n:,} customers)")
                sim = _ChunkSim(config, catalog, tables, first, n, np.random.default_rng(chunk_seeds[i]))
                res = sim.run(lambda: bar.advance(task))
                bar.update(
                    task, description=f"chunk {i + 1}/{n_chunks}: writing {res.events.num_rows:,} events"
                )
                pq.write_table(res.events, events_dir / f"part-{i:05d}.parquet")
                for name, table in (
                    ("decisions.parquet", res.decisions),
                    ("truth/decisions.parquet", res.truth_decisions),
                    ("truth/stages.parquet", res.stages),
                ):
                    if name not in writers:
                        writers[name] = pq.ParquetWriter(out / name, table.schema)
                    writers[name].write_table(table)
                totals["events"] += res.events.num_rows
                totals["decisions"] += res.decisions.num_rows
                conv = res.truth_decisions.column("converted").to_numpy()
                no_send = (
                    res.truth_decisions.column("action").to_numpy(zero_copy_only=False)
                    == Action.NO_SEND.value
                )
                totals["conversions"] += int(conv.sum())
                totals["no_send"] += int(no_send.sum())
                totals["no_send_converted"] += int(conv[no_send].sum())
                for key, value in res.counts.items():
                    totals[key] += value
                stage_days += res.stage_days
                del sim, res
    finally:
        for w in writers.values():
            w.close()

    sends = max(totals["sends"], 1)
    summary = SimSummary(
        out=str(out),
        customers=config.n_customers,
        items=config.n_items,
        events=totals["events"],
        events_per_customer=totals["events"] / config.n_customers,
        parts=n_chunks,
        decisions=totals["decisions"],
        sends=totals["sends"],
        opens=totals["opens"],
        clicks=totals["clicks"],
        unsubscribes=totals["unsubscribes"],
        purchases=totals["purchases"],
        conversions=totals["conversions"],
        conversion_no_send=totals["no_send_converted"] / max(totals["no_send"], 1),
        open_rate=totals["opens"] / sends,
        click_rate=totals["clicks"] / sends,
        unsubscribe_rate=totals["unsubscribes"] / sends,
        stage_mix={
            s: float(c / max(stage_days.sum(), 1)) for s, c in zip(LATENT_STAGES, stage_days, strict=True)
        },
        seconds=round(time.perf_counter() - t0, 2),
        config=dataclasses.asdict(config),
    )
    (out / "simulation.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary


def _click_only(
    config: SimConfig, catalog: _Catalog, seed: np.random.SeedSequence, out: Path, t0: float
) -> SimSummary:
    """The click-only shop (`features.sim.clicks`): events and the transitions; no decisions, no stages."""
    for stale in ("decisions.parquet", "truth/decisions.parquet", "truth/stages.parquet"):
        (out / stale).unlink(missing_ok=True)
    events = simulate_clicks(config, catalog, seed, out)
    summary = SimSummary(
        out=str(out), customers=config.n_customers, items=config.n_items, events=events,
        events_per_customer=events / config.n_customers, parts=-(-config.n_customers // config.chunk_size),
        decisions=0, sends=0, opens=0, clicks=0, unsubscribes=0, purchases=0, conversions=0,
        conversion_no_send=0.0, open_rate=0.0, click_rate=0.0, unsubscribe_rate=0.0, stage_mix={},
        seconds=round(time.perf_counter() - t0, 2), config=dataclasses.asdict(config),
    )  # fmt: skip
    (out / "simulation.json").write_text(json.dumps(summary.to_dict(), indent=2) + "\n")
    return summary
