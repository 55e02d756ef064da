"""Catalogue ranking: the top k items of `Q @ E.T + b` over a 100,000-item table by several exact methods,
and the softmax normaliser (logsumexp over the catalogue) that the model reports each top item's
probability with.

    .venv/bin/python -m benchmarks.ranking --markdown BENCHMARKS.md

Why: every `/v1/score` ranks the whole catalogue. The model (`JourneyModel.forward`) computes one row of
scores per customer, `torch.addmm(bias, item_query(state), item_emb.T)`, then adds the repeat head's scores
of the customer's own items, and `SequenceScorer._forward_all` takes `torch.topk` and `torch.logsumexp` of
the (B, n_items) block. This measures that step alone, on CPU with one torch (and one BLAS) thread, for
blocks of B = 1, 8, 32, 64 rows (a request alone, and micro-batches of concurrent requests), k = 10 and
100, each method in two modes: the top k alone, and the top k with the normaliser (what the model needs).

The table is synthetic (E ~ N(0, 0.1^2), b ~ N(0, 0.1^2), queries ~ N(0, 1): scores of a few units, as a
trained model's), with the first two items masked by a -inf bias as the model masks pad and OOV. Every
method is checked against (a) on the same queries: the same top-k set in every row, up to ties within
`--atol` at the k-th score (methods round differently: a different summation order moves scores by about
1e-6), and the same normaliser within a relative 1e-5. Timing: the methods of one (B, k) run interleaved,
in an order rotated each repeat, so that a slow spell of the shared machine falls on all of them; the
median wall time over `--repeats` is reported, per row (the block's time / B), with the share of the
measured time the thread spent on a core (the rest it waited for one: a measure of the noise).

It also checks batch invariance, which micro-batching needs ("each request's answer identical to scoring
it alone"): whether each row of a 64-row block gives the same top k (items; and bit for bit, scores and
normaliser) as the row scored alone, and, for both layouts of the table, from how many rows on the BLAS
kernel behind `torch.addmm` gives a row the same bits whatever the block's size (a lone request padded to
that many rows is then scored bit for bit like a batched one), with what that padding costs.

Writes `benchmarks/results/ranking.json` and prints the Markdown section; `--markdown PATH` replaces the
section between `<!-- ranking:start -->` and `<!-- ranking:end -->` there; `--from-json` renders an
earlier run's JSON instead of measuring.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks import _harness
from benchmarks._harness import (
    RESULTS,
    add_from_json,
    add_markdown,
    add_repeats,
    add_seed,
    command_line,
    load_average,
    make_parser,
    update_section,
    write_json,
)
from benchmarks.ranking_methods import (
    ATOL,
    BASELINE,
    BATCHES,
    CHUNK,
    CURRENT,
    DIM,
    END,
    KS,
    MASKED,
    METHODS,
    MODES,
    N_ITEMS,
    NORM_RTOL,
    PAD_ROWS,
    REPEATS,
    START,
    Method,
    Table,
    check_exact,
    lse_numpy,
    lse_torch,
    make_queries,
    make_table,
    recommend,
)
from benchmarks.ranking_report import render_markdown

# ---------------------------------------------------------------------------------------------------------
# Measuring


def _time_ms(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) milliseconds of one call; the CPU time is this thread's, so the difference is time
    spent waiting for a core on the shared machine."""
    wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
    fn()
    return (time.perf_counter_ns() - wall) / 1e6, (time.thread_time_ns() - cpu) / 1e6


def _summary(times: list[tuple[float, float]], batch: int) -> dict[str, Any]:
    wall = [w for w, _ in times]
    q1, _, q3 = statistics.quantiles(wall, n=4) if len(wall) > 1 else (wall[0],) * 3
    median = statistics.median(wall)
    return {
        "median_ms": round(median, 4),
        "q1_ms": round(q1, 4),
        "q3_ms": round(q3, 4),
        "per_row_us": round(median / batch * 1000, 2),
        "cpu_median_ms": round(statistics.median(c for _, c in times), 4),
        "wall_total_ms": round(sum(wall), 3),
        "cpu_total_ms": round(sum(c for _, c in times), 3),
        "repeats": len(times),
    }


def measure_methods(
    table: Table,
    methods: Sequence[Method],
    batches: Sequence[int],
    ks: Sequence[int],
    repeats: int,
    seed: int,
    modes: Sequence[str] = MODES,
    atol: float = ATOL,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Median time of every method in every (B, k, mode), with its exactness against the first method."""
    rows: list[dict[str, Any]] = []
    for batch in batches:
        q = make_queries(batch, table.emb.shape[1], seed + batch)
        for k in ks:
            ref = methods[0].rank(q, table, k, True)
            checks = {m.key: check_exact(ref, m.rank(q, table, k, True), atol) for m in methods}
            jobs = [(m, mode) for m in methods for mode in modes]
            times: dict[tuple[str, str], list[tuple[float, float]]] = {(m.key, mode): [] for m, mode in jobs}
            for r in range(repeats):
                shift = r % len(jobs)
                for m, mode in jobs[shift:] + jobs[:shift]:
                    call = partial(m.rank, q, table, k, mode == "topk+norm")
                    times[(m.key, mode)].append(_time_ms(call))
            for m, mode in jobs:
                row = {
                    "method": m.key,
                    "mode": mode,
                    "B": batch,
                    "k": k,
                    **_summary(times[(m.key, mode)], batch),
                }
                row["exact"] = checks[m.key]["exact"]
                row["check"] = checks[m.key]
                rows.append(row)
            medians = ", ".join(
                f"{m.key} {statistics.median(w for w, _ in times[(m.key, modes[-1])]):.2f}" for m in methods
            )
            log(f"B={batch} k={k}, median ms per block ({modes[-1]}): {medians}")
    return rows


def measure_normaliser(table: Table, batches: Sequence[int], repeats: int, seed: int) -> list[dict[str, Any]]:
    """The logsumexp over the catalogue alone, on a block of scores already computed."""
    rows = []
    for batch in batches:
        q = make_queries(batch, table.emb.shape[1], seed + batch)
        s = torch.addmm(table.bias, q, table.emb.T)
        s_np = s.numpy()
        ref = lse_torch(s)
        diff = float(np.abs(lse_numpy(s_np) - ref).max())
        for what, fn in (
            ("torch.logsumexp", lambda s=s: lse_torch(s)),
            ("numpy max, exp, sum, log", lambda s_np=s_np: lse_numpy(s_np)),
        ):
            fn()
            times = [_time_ms(fn) for _ in range(repeats)]
            rows.append({"what": what, "B": batch, **_summary(times, batch), "max_diff_vs_torch": diff})
    return rows


# The two layouts of the table that the torch methods multiply with: the model's (n, d) embedding read
# through its transpose, and the table stored (d, n).
LAYOUTS: dict[str, Callable[[torch.Tensor, Table], torch.Tensor]] = {
    "E.T": lambda q, t: torch.addmm(t.bias, q, t.emb.T),
    "E_t": lambda q, t: torch.addmm(t.bias, q, t.emb_t),
}


def invariant_sizes(table: Table, layout: str, dim: int, seed: int, max_rows: int = 16) -> dict[str, Any]:
    """How the bits of a row of `torch.addmm` depend on the size of its block.

    Returns:
        classes: block sizes 1..max_rows, 32, 64 grouped by the bits they give row 0.
        min_rows: the smallest size from which every larger size tested gives the same bits.
        position_free: whether, at min_rows, a row's bits depend neither on its position nor on the
            other rows of the block.
    """
    matmul = LAYOUTS[layout]
    sizes = [*range(1, max_rows + 1), 32, 64]
    classes: list[tuple[list[int], torch.Tensor]] = []
    for size in sizes:
        row = matmul(make_queries(size, dim, seed), table)[0]
        for members, bits in classes:
            if torch.equal(bits, row):
                members.append(size)
                break
        else:
            classes.append(([size], row))
    last = next(members for members, _ in classes if sizes[-1] in members)
    min_rows = min(s for s in last if all(t in last for t in sizes if t >= s))
    lone = make_queries(1, dim, seed)
    ref = matmul(torch.cat([lone, torch.zeros(min_rows - 1, dim)]), table)[0]
    g = torch.Generator().manual_seed(seed + 1)
    free = True
    for _ in range(4):
        block = torch.randn(min_rows, dim, generator=g)
        pos = int(torch.randint(0, min_rows, (1,), generator=g))
        block[pos] = lone[0]
        free &= torch.equal(matmul(block, table)[pos], ref)
    return {"classes": [members for members, _ in classes], "min_rows": min_rows, "position_free": free}


def batch_invariance(
    table: Table, methods: Sequence[Method], batch: int, k: int, seed: int
) -> dict[str, Any]:
    """Whether rows scored in a block come out as scored alone (a block of 1).

    Returns:
        bitwise: method -> rows of a `batch`-row block whose top k (indices and scores) and normaliser
            equal, bit for bit, the same row scored alone.
        same_items: method -> rows whose top k items, in order, are those of the row scored alone.
        max_score_diff: method -> the largest difference of a top-k score between block and alone.
        layouts: `invariant_sizes` of each layout of the table.
    """
    dim = int(table.emb.shape[1])
    q = make_queries(batch, dim, seed)
    bitwise: dict[str, int] = {}
    same_items: dict[str, int] = {}
    max_diff: dict[str, float] = {}
    for m in methods:
        block = m.rank(q, table, k, True)
        alone = [m.rank(q[i : i + 1], table, k, True) for i in range(batch)]
        same_items[m.key] = sum(bool(np.array_equal(a.index[0], block.index[i])) for i, a in enumerate(alone))
        bitwise[m.key] = sum(
            bool(
                np.array_equal(a.index[0], block.index[i])
                and np.array_equal(a.score[0], block.score[i])
                and a.norm is not None
                and block.norm is not None
                and np.array_equal(a.norm, block.norm[i : i + 1])
            )
            for i, a in enumerate(alone)
        )
        max_diff[m.key] = float(max(np.abs(a.score[0] - block.score[i]).max() for i, a in enumerate(alone)))
    return {
        "batch": batch,
        "k": k,
        "bitwise": bitwise,
        "same_items": same_items,
        "max_score_diff": max_diff,
        "layouts": {layout: invariant_sizes(table, layout, dim, seed) for layout in LAYOUTS},
    }


def measure_padding(
    table: Table, repeats: int, seed: int, pads: Sequence[int] = PAD_ROWS
) -> list[dict[str, Any]]:
    """What a lone request's ranking costs (addmm, then top 10 and normaliser of its own row) when its
    block is padded with zero rows to each size, for each layout of the table."""
    q = make_queries(1, table.emb.shape[1], seed)
    rows = []
    for layout, matmul in LAYOUTS.items():
        for pad in pads:
            block = torch.cat([q, torch.zeros(pad - 1, q.shape[1])])

            def run(block: torch.Tensor = block, matmul: Callable[..., torch.Tensor] = matmul) -> None:
                s = matmul(block, table)[:1]
                torch.topk(s, 10, dim=1)
                torch.logsumexp(s, dim=1)

            run()
            times = [_time_ms(run) for _ in range(repeats)]
            rows.append({"layout": layout, "rows": pad, **_summary(times, 1)})
    return rows


def machine_info() -> dict[str, Any]:
    """The harness's machine, under the keys the section reads, with torch's BLAS and threads."""
    machine = _harness.machine_info(("torch", "numpy"))
    return {
        **machine,
        "cpu": machine["processor"],
        "cores": machine["cpu_count_logical"],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "torch_threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    labels = {m.key: m.label for m in METHODS}
    methods = [m for m in METHODS if m.key in args.methods] if args.methods else list(METHODS)
    keys = [m.key for m in methods]
    if methods[0].key != BASELINE:
        raise SystemExit(f"the baseline method {BASELINE!r} must be measured")
    started = time.monotonic()
    load_before = load_average()
    with threadpool_limits(1), torch.inference_mode():
        table = make_table(args.n_items, args.dim, args.seed)
        rows = measure_methods(table, methods, args.batches, args.ks, args.repeats, args.seed, atol=args.atol)
        normaliser = measure_normaliser(table, args.batches, args.repeats, args.seed)
        invariance = batch_invariance(table, methods, max(args.batches), min(args.ks), args.seed)
        padding = measure_padding(table, args.repeats, args.seed)
    mode = "topk+norm"
    return {
        "date": dt.date.today().isoformat(),
        "command": command,
        "machine": machine_info(),
        "load_before_after": [round(load_before, 2), round(load_average(), 2)],
        "seconds": round(time.monotonic() - started, 1),
        "settings": {
            "n_items": args.n_items,
            "dim": args.dim,
            "masked": MASKED,
            "batches": list(args.batches),
            "ks": list(args.ks),
            "repeats": args.repeats,
            "seed": args.seed,
            "atol": args.atol,
            "norm_rtol": NORM_RTOL,
            "chunk": CHUNK,
        },
        "labels": {m.key: labels[m.key] for m in methods},
        "rows": rows,
        "normaliser": normaliser,
        "invariance": invariance,
        "padding": padding,
        "recommendation": recommend(
            rows,
            {m.key: labels[m.key] for m in methods},
            mode=mode,
            current=CURRENT if CURRENT in keys else None,
        ),
    }


def _parser() -> argparse.ArgumentParser:
    p = make_parser(__doc__, summary=True)
    p.add_argument("--n-items", type=int, default=N_ITEMS)
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--ks", type=int, nargs="+", default=list(KS))
    add_repeats(p, REPEATS)
    add_seed(p)
    p.add_argument("--atol", type=float, default=ATOL)
    p.add_argument("--methods", nargs="+", choices=[m.key for m in METHODS], help="default: all")
    p.add_argument("--out", type=Path, default=RESULTS / "ranking.json")
    add_from_json(p)
    add_markdown(p)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        if args.repeats < 30:
            print(f"note: {args.repeats} repeats (the reported figures use at least 30)", file=sys.stderr)
        results = run(args, command_line("ranking", argv))
        write_json(args.out, results)
    section = render_markdown(results)
    print(section)
    if args.markdown:
        update_section(args.markdown, section, START, END)


if __name__ == "__main__":
    main()
