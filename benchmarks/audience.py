"""Audience export throughput: `journey score-audience`'s code (`serving.audience.score_audience`) over a
shop's customers with the registered champion, decisions recorded in a scratch SQLite store.

    .venv/bin/python -m benchmarks.audience --events demo_output/shop/events --now 2026-07-01 \
        --repeats 3 --markdown BENCHMARKS.md

Reports the median customers/s over the repeats (each a fresh store), beside the target of DESIGN.md
(at least 5,000 customers/s on 2 cores), and where the time goes (one profiled pass).
"""

from __future__ import annotations

import cProfile
import datetime as dt
import io
import os
import pstats
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

from benchmarks._harness import (
    REPO,
    RESULTS,
    add_markdown,
    add_repeats,
    command_line,
    machine_info,
    make_parser,
    write_json,
    write_section,
)

if TYPE_CHECKING:
    from predictor.predictor import Predictor

TARGET = 5_000.0
FLOOR_REPEATS = 7


def registry_prefix() -> str:
    """`MLFLOW_TRACKING_URI=... ` when the champion came from another registry than the project's."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return f"MLFLOW_TRACKING_URI={uri} " if uri else ""


def ranking_floor(predictor: Predictor, repeats: int = FLOOR_REPEATS) -> dict[str, float]:
    """The exact catalogue ranking alone, as the predictor's forward runs it: the served table's
    `addmm`, `topk` and the softmax normaliser, on blocks of random queries as large as the forward's row
    chunks, at this process's torch threads. Median over `repeats` of µs per customer, and the customers/s
    it alone would allow: a ceiling for the whole export, before any other work."""
    import time

    import torch

    from predictor.predictor import rows_per_forward

    net = predictor.model
    with torch.inference_mode():
        # The served table as the model builds it for inference: pad and OOV masked, (d, n_items).
        bias = net.item_bias.masked_fill(net.not_an_item, float("-inf"))
        weight: torch.Tensor = net.embed["item_id"].weight  # type: ignore[assignment]  # (n_items, d)
        table = weight.T.contiguous()
        rows = rows_per_forward(int(table.shape[1]))
        queries = torch.randn(rows, int(table.shape[0]), generator=torch.Generator().manual_seed(0))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            scores = torch.addmm(bias, queries, table)
            torch.topk(scores, 10, dim=1)
            torch.logsumexp(scores, dim=1)
            times.append(time.perf_counter() - start)
    per_customer_us = statistics.median(times) / rows * 1e6
    return {"rows": rows, "per_customer_us": per_customer_us, "ceiling": 1e6 / per_customer_us}


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser(__doc__)
    parser.add_argument("--events", type=Path, default=REPO / "demo_output" / "shop" / "events")
    parser.add_argument("--now", default="2026-07-01T00:00:00Z")
    add_repeats(parser, 3)
    parser.add_argument("--chunk", type=int, default=5_000)
    add_markdown(parser)
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    from predictor.registry import configure
    from serving.audience import score_audience
    from serving.model import ModelManager
    from serving.service import Service
    from serving.settings import ServeSettings
    from serving.store import open_store

    configure()
    manager = ModelManager("journey-scorer", "champion")
    result = manager.reload()
    if result["error"] or manager.current is None:
        raise SystemExit(f"no champion to score with: {result['error']} (run make demo first)")
    model = manager.current
    predictor = cast("Predictor", model.predictor)  # the registered champion's network and its config
    now = pd.Timestamp(args.now).to_pydatetime()
    runs = []
    for i in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            store = open_store(f"sqlite:///{tmp}/online.db")
            service = Service(ServeSettings(api_keys=("bench",), seed=i), store, manager)
            summary = score_audience(
                service, args.events, Path(tmp) / "audience.parquet", now=now, chunk=args.chunk
            )
            store.close()
        runs.append(
            {
                "customers": summary.customers,
                "seconds": round(summary.seconds, 2),
                "customers_per_second": round(summary.customers_per_second, 1),
            }
        )
        print(
            f"run {i + 1}: {summary.customers:,} customers in {summary.seconds:.1f} s "
            f"({summary.customers_per_second:,.0f}/s)",
            flush=True,
        )

    # Where the time goes: one more pass, profiled.
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{tmp}/online.db")
        service = Service(ServeSettings(api_keys=("bench",), seed=0), store, manager)
        profile = cProfile.Profile()
        profile.enable()
        score_audience(service, args.events, Path(tmp) / "a.parquet", now=now, chunk=args.chunk)
        profile.disable()
        store.close()
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.sort_stats("cumulative")
    steps = {
        "reading the events (customer_chunks)": "customer_chunks",
        "model (the predictor's forward)": "predictor.py:forward",
        "encoder (features.encoder.encode_columns)": "encoder.py:encode_columns",
        "rules and policy (blocked_matrix, choose)": "blocked_matrix",
        "decisions written (store.commit_decisions)": "commit_decisions",
        "the whole table (Service.score_table)": "score_table",
    }
    total = max(v[3] for v in stats.stats.values())  # type: ignore[attr-defined]
    shares = {}
    for label, needle in steps.items():
        times = [v[3] for k, v in stats.stats.items() if needle in f"{k[0]}:{k[2]}"]  # type: ignore[attr-defined]
        shares[label] = max(times) / total if times else 0.0

    floor = ranking_floor(predictor)
    median = statistics.median(r["customers_per_second"] for r in runs)
    verdict = "met" if median >= TARGET else "**NOT met**"
    machine = machine_info(("torch",))
    lines = [
        "## Audience export (`journey score-audience`)",
        "",
        f"Written by `{registry_prefix()}{command_line('audience', argv)}` on "
        f"{dt.date.today().isoformat()} ({machine['cpu_count_logical']} cores, "
        f"torch {machine['versions']['torch']}, "
        f"{torch.get_num_threads()} intra-op threads): `serving.audience.score_audience`, the code behind "
        f"`journey score-audience`, over every customer of `{args.events}` at {args.now}, with "
        f"`journey-scorer@champion` version {model.version} ({predictor.config.encoder} encoder, "
        f"{model.catalogue_size:,}-item catalogue), decisions recorded in a scratch SQLite store, "
        f"{args.chunk:,} customers per vectorised pass, {args.repeats} repeats.",
        "",
        "| run | customers | seconds | customers/s |",
        "|---|---:|---:|---:|",
        *(
            f"| {i + 1} | {r['customers']:,} | {r['seconds']:.1f} | {r['customers_per_second']:,.0f} |"
            for i, r in enumerate(runs)
        ),
        "",
        f"Median {median:,.0f} customers/s against the target of {TARGET:,.0f}: {verdict}. Share of one "
        "profiled pass (cumulative, steps overlap): "
        + ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
        + ".",
        "",
        f"The exact ranking alone (the served item table's `addmm`, top 10 and softmax normaliser over "
        f"the {model.catalogue_size:,} items, blocks of {floor['rows']} random queries as the forward "
        f"runs them, {torch.get_num_threads()} intra-op threads, median of {FLOOR_REPEATS}) costs "
        f"{floor['per_customer_us']:,.0f} µs a customer: at most {floor['ceiling']:,.0f} customers/s on "
        "this machine before reading, encoding, the sequence encoder, the rules or the store"
        + (f", so an exact export cannot reach {TARGET:,.0f} here." if floor["ceiling"] < TARGET else "."),
    ]
    section = "\n".join(lines)
    print(section)
    write_json(
        RESULTS / "audience.json", {"runs": runs, "median": median, "shares": shares, "ranking_floor": floor}
    )
    if args.markdown:
        write_section(args.markdown, "audience", section)


if __name__ == "__main__":
    main()
