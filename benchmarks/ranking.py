"""Catalogue ranking: the top k items of `Q @ E.T + b` over a 100,000-item table by several exact methods,
and the softmax normaliser (logsumexp over the catalogue) that the model reports each top item's
probability with.

    .venv/bin/python benchmarks/ranking.py --markdown BENCHMARKS.md

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
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO))

from benchmarks.sections import update_section  # noqa: E402

START = "<!-- ranking:start -->"
END = "<!-- ranking:end -->"
N_ITEMS = 100_000
DIM = 64
BATCHES = (1, 8, 32, 64)
KS = (10, 100)
REPEATS = 30
CHUNK = 16_384  # items per chunk of method d4: the best of 1,024 / 4,096 / 16,384 in a first trial
MASKED = 2  # items with a -inf bias, as the model masks pad and OOV
ATOL = 1e-4  # score tolerance of a tie at the k-th place (rounding moves scores by about 1e-6)
NORM_RTOL = 1e-5
BASELINE = "a"
CURRENT = "d1"  # the model's ranking today (training/model.py, training/sequence.py `_forward_all`)
MODES = ("topk", "topk+norm")
MIN_GAIN = 0.05  # a method must be this much cheaper than (a) to be worth a change
PAD_ROWS = (1, 2, 3, 4, 6, 8)  # blocks a lone request could be padded to (cost of padding)

# ---------------------------------------------------------------------------------------------------------
# The problem and the methods


@dataclass(frozen=True)
class Table:
    """The item table in the layouts the methods read; the numpy arrays share the tensors' memory."""

    emb: torch.Tensor  # (n, d) float32, as nn.Embedding stores it
    emb_t: torch.Tensor  # (d, n) float32, contiguous: the table stored transposed
    bias: torch.Tensor  # (n,) float32, -inf for masked items

    @property
    def n_items(self) -> int:
        return int(self.emb.shape[0])

    @property
    def emb_np(self) -> np.ndarray:
        return self.emb.numpy()

    @property
    def bias_np(self) -> np.ndarray:
        return self.bias.numpy()


def make_table(n_items: int, dim: int, seed: int, masked: int = MASKED) -> Table:
    """A synthetic item table: E ~ N(0, 0.1^2), b ~ N(0, 0.1^2), the first `masked` items at -inf."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n_items, dim, generator=g) * 0.1
    bias = torch.randn(n_items, generator=g) * 0.1
    bias[:masked] = float("-inf")
    return Table(emb=emb, emb_t=emb.T.contiguous(), bias=bias)


def make_queries(batch: int, dim: int, seed: int) -> torch.Tensor:
    """(batch, dim) float32 queries ~ N(0, 1), as the model's `item_query(state)`."""
    return torch.randn(batch, dim, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Ranked:
    """A method's answer for a block of B rows."""

    index: np.ndarray  # (B, k) int64 item indices, best first
    score: np.ndarray  # (B, k) float32 scores, descending
    norm: np.ndarray | None  # (B,) logsumexp of the row's scores over the catalogue, if asked for


def _topk_torch(s: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    values, index = torch.topk(s, k, dim=1)
    return index.numpy(), values.numpy()


def _topk_numpy(s: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top k by a partial sort (O(n) per row), then a full sort of those k only."""
    n = s.shape[1]
    part = np.argpartition(s, n - k, axis=1)[:, n - k :]  # (B, k), unordered
    values = np.take_along_axis(s, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int64), np.take_along_axis(values, order, axis=1)


def _lse_torch(s: torch.Tensor) -> np.ndarray:
    return torch.logsumexp(s, dim=1).numpy()


def _lse_numpy(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(s.dtype)
    return (np.log(np.exp(s - m).sum(axis=1, dtype=np.float32)) + m[:, 0]).astype(np.float32)


def rank_mm_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q @ t.emb.T + t.bias  # (B, n)
    index, score = _topk_torch(s, k)
    return Ranked(index, score, _lse_torch(s) if norm else None)


def rank_mm_argpartition(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q @ t.emb.T + t.bias  # (B, n)
    index, score = _topk_numpy(s.numpy(), k)
    return Ranked(index, score, _lse_torch(s) if norm else None)


def rank_numpy(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q.numpy() @ t.emb_np.T  # (B, n) float32
    s += t.bias_np
    index, score = _topk_numpy(s, k)
    return Ranked(index, score, _lse_numpy(s) if norm else None)


def rank_addmm_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb.T)  # (B, n): the bias added inside the matmul, no second pass
    index, score = _topk_torch(s, k)
    return Ranked(index, score, _lse_torch(s) if norm else None)


def rank_addmm_t_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb_t)  # (B, n), from the (d, n) layout
    index, score = _topk_torch(s, k)
    return Ranked(index, score, _lse_torch(s) if norm else None)


def rank_addmm_argpartition(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb.T)  # (B, n)
    index, score = _topk_numpy(s.numpy(), k)
    return Ranked(index, score, _lse_torch(s) if norm else None)


def rank_chunked(q: torch.Tensor, t: Table, k: int, norm: bool, chunk: int = CHUNK) -> Ranked:
    """Scores, top k and logsumexp per chunk of items, so that each (B, chunk) block is read while it is
    still in cache; the top k of the chunks' top ks is the top k of the whole (exact)."""
    values, indices, lses = [], [], []
    for lo in range(0, t.n_items, chunk):
        s = torch.addmm(t.bias[lo : lo + chunk], q, t.emb[lo : lo + chunk].T)  # (B, <= chunk)
        v, i = torch.topk(s, min(k, s.shape[1]), dim=1)
        values.append(v)
        indices.append(i + lo)
        if norm:
            lses.append(torch.logsumexp(s, dim=1))
    v, j = torch.topk(torch.cat(values, dim=1), k, dim=1)
    index = torch.gather(torch.cat(indices, dim=1), 1, j)
    lse = torch.logsumexp(torch.stack(lses, dim=1), dim=1).numpy() if norm else None
    return Ranked(index.numpy(), v.numpy(), lse)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    rank: Callable[[torch.Tensor, Table, int, bool], Ranked]


METHODS: tuple[Method, ...] = (
    Method("a", "(a) `Q @ E.T + b`, `torch.topk`", rank_mm_topk),
    Method("b", "(b) `Q @ E.T + b`, `np.argpartition`, sort the k", rank_mm_argpartition),
    Method("c", "(c) numpy float32 `Q @ E.T + b`, `np.argpartition`, sort the k", rank_numpy),
    Method("d1", "(d1) `torch.addmm(b, Q, E.T)`, `torch.topk` (the model's path today)", rank_addmm_topk),
    Method("d2", "(d2) `torch.addmm(b, Q, E_t)`, table stored (d, n), `torch.topk`", rank_addmm_t_topk),
    Method("d3", "(d3) `torch.addmm(b, Q, E.T)`, `np.argpartition`, sort the k", rank_addmm_argpartition),
    Method("d4", f"(d4) per chunk of {CHUNK:,} items: `torch.addmm`, `torch.topk`, merged", rank_chunked),
)

# ---------------------------------------------------------------------------------------------------------
# Exactness and the recommendation (unit-tested in tests/test_ranking_benchmark.py)


def check_exact(ref: Ranked, got: Ranked, atol: float = ATOL, norm_rtol: float = NORM_RTOL) -> dict[str, Any]:
    """Compares a method's answer with the reference's, row by row.

    A row agrees when both give the same set of k items; it agrees "up to ties" when the sets differ
    only by items whose scores lie within `atol` of the reference's k-th score (two methods that round
    differently may order near-equal scores either way). The scores, best first, must also agree within
    `atol` place by place, and the normalisers within `norm_rtol` (relative).

    Returns:
        rows, same_set (rows with identical sets), ties (rows that differ only by ties), wrong (rows that
        differ otherwise), max_score_diff, max_norm_rel_diff (None without normalisers) and exact
        (no wrong row, scores and normalisers within tolerance).
    """
    if ref.index.shape != got.index.shape:
        raise ValueError(f"answers of different shapes: {ref.index.shape} and {got.index.shape}")
    same = ties = wrong = 0
    for r in range(ref.index.shape[0]):
        a, b = set(ref.index[r].tolist()), set(got.index[r].tolist())
        if a == b:
            same += 1
            continue
        kth = float(ref.score[r, -1])
        got_score = dict(zip(got.index[r].tolist(), got.score[r].tolist(), strict=True))
        ref_score = dict(zip(ref.index[r].tolist(), ref.score[r].tolist(), strict=True))
        at_boundary = all(got_score[i] >= kth - atol for i in b - a) and all(
            ref_score[i] <= kth + atol for i in a - b
        )
        if at_boundary:
            ties += 1
        else:
            wrong += 1
    finite = np.isfinite(ref.score) & np.isfinite(got.score)
    both_inf = (ref.score == got.score) & ~finite
    score_diff = float(np.abs(ref.score[finite] - got.score[finite]).max()) if finite.any() else 0.0
    scores_ok = bool((finite | both_inf).all()) and score_diff <= atol
    norm_diff = None
    norm_ok = True
    if ref.norm is not None and got.norm is not None:
        norm_diff = float((np.abs(ref.norm - got.norm) / np.maximum(1.0, np.abs(ref.norm))).max())
        norm_ok = norm_diff <= norm_rtol
    return {
        "rows": int(ref.index.shape[0]),
        "same_set": same,
        "ties": ties,
        "wrong": wrong,
        "max_score_diff": score_diff,
        "max_norm_rel_diff": norm_diff,
        "exact": wrong == 0 and scores_ok and norm_ok,
    }


def recommend(
    rows: Sequence[dict[str, Any]],
    labels: dict[str, str],
    baseline: str = BASELINE,
    mode: str = "topk+norm",
    min_gain: float = MIN_GAIN,
    current: str | None = None,
) -> dict[str, Any]:
    """The method to use, from the measured rows of one mode: the exact method with the largest geometric
    mean speed-up over the baseline across the (B, k) configurations; the baseline itself unless that
    speed-up is at least `1 + min_gain` (a smaller gain is within the noise of a shared machine and not
    worth a change).

    Args:
        rows: measured rows, each with method, mode, B, k, median_ms and exact (bool).
        labels: method key -> its label in the section.
        current: the method the model uses today, if measured: the text also gives the gain over it.

    Returns:
        method, speedup (geometric mean over the baseline), wins (configurations where it is the cheapest
        exact method), configs, inexact (methods not exact somewhere) and text (one line for the section).
    """
    rows = [r for r in rows if r["mode"] == mode]
    configs = sorted({(r["B"], r["k"]) for r in rows})
    if not configs:
        raise ValueError(f"no measured rows in mode {mode!r}")
    cost = {(r["method"], r["B"], r["k"]): r["median_ms"] for r in rows}
    methods = sorted({r["method"] for r in rows}, key=list(labels).index)
    inexact = [m for m in methods if not all(r["exact"] for r in rows if r["method"] == m)]
    exact = [m for m in methods if m not in inexact and all((m, b, k) in cost for b, k in configs)]
    if baseline not in exact:
        raise ValueError(f"the baseline {baseline!r} must be measured, and exact, in every configuration")

    def speedup(m: str, over: str = baseline) -> float:
        logs = [math.log(cost[(over, b, k)] / cost[(m, b, k)]) for b, k in configs]
        return math.exp(sum(logs) / len(logs))

    gains = {m: speedup(m) for m in exact}
    best = max(exact, key=lambda m: gains[m])
    cheapest = {c: min(exact, key=lambda m: cost[(m, *c)]) for c in configs}
    what = "top k + normaliser" if mode == "topk+norm" else "top k"
    b_big, k_small = max(b for b, _ in configs), min(k for _, k in configs)
    if gains[best] < 1.0 + min_gain:
        best = baseline
        text = (
            f"Recommendation: keep {labels[baseline]}: no exact method is {min_gain:.0%} cheaper in "
            f"geometric mean over the {len(configs)} (B, k) configurations of {what} (the best, "
            f"{labels[max(exact, key=lambda m: gains[m])]}, by {max(gains.values()):.2f}x)."
        )
    else:

        def per_row(m: str) -> float:
            return cost[(m, b_big, k_small)] / b_big * 1000

        wins = sum(1 for c in configs if cheapest[c] == best)
        text = (
            f"Recommendation: {labels[best]}: exact, and {gains[best]:.2f}x cheaper than (a) in geometric "
            f"mean over the {len(configs)} (B, k) configurations of {what} (the cheapest exact method in "
            f"{wins} of them; at B = {b_big}, k = {k_small}: {per_row(best):,.0f} µs a row against "
            f"{per_row(baseline):,.0f})."
        )
    if current is not None and current != best and current in exact:
        text += f" Against {labels[current]}: {speedup(best, current):.2f}x cheaper."
    if inexact:
        text += " Not exact here, so not considered: " + ", ".join(labels[m] for m in inexact) + "."
    return {
        "method": best,
        "speedup": round(gains[best], 3),
        "wins": sum(1 for c in configs if cheapest[c] == best),
        "configs": len(configs),
        "inexact": inexact,
        "mode": mode,
        "text": text,
    }


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
        ref = _lse_torch(s)
        diff = float(np.abs(_lse_numpy(s_np) - ref).max())
        for what, fn in (
            ("torch.logsumexp", lambda s=s: _lse_torch(s)),
            ("numpy max, exp, sum, log", lambda s_np=s_np: _lse_numpy(s_np)),
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
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_blas": "MKL" if torch.backends.mkl.is_available() else "other",
        "torch_threads": torch.get_num_threads(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    labels = {m.key: m.label for m in METHODS}
    methods = [m for m in METHODS if m.key in args.methods] if args.methods else list(METHODS)
    keys = [m.key for m in methods]
    if methods[0].key != BASELINE:
        raise SystemExit(f"the baseline method {BASELINE!r} must be measured")
    started = time.monotonic()
    load_before = os.getloadavg()
    with threadpool_limits(1), torch.inference_mode():
        table = make_table(args.n_items, args.dim, args.seed)
        rows = measure_methods(table, methods, args.batches, args.ks, args.repeats, args.seed, atol=args.atol)
        normaliser = measure_normaliser(table, args.batches, args.repeats, args.seed)
        invariance = batch_invariance(table, methods, max(args.batches), min(args.ks), args.seed)
        padding = measure_padding(table, args.repeats, args.seed)
    mode = "topk+norm"
    return {
        "date": dt.date.today().isoformat(),
        "command": " ".join(["benchmarks/ranking.py", *map(shlex.quote, sys.argv[1:])]),
        "machine": machine_info(),
        "load_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
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


# ---------------------------------------------------------------------------------------------------------
# The Markdown section


def _exactness(rows: list[dict[str, Any]]) -> str:
    checks = [r["check"] for r in rows]
    if any(not c["exact"] for c in checks):
        return "**no**"
    ties = sum(c["ties"] for c in checks)
    return f"yes ({ties} rows tied at the k-th place)" if ties else "yes"


def _runs(sizes: Sequence[int]) -> str:
    """[1, 2, 3, 5, 7, 8] -> "1-3, 5, 7-8": a class of block sizes, compactly."""
    parts: list[str] = []
    start = prev = sizes[0]
    for size in [*sizes[1:], None]:
        if size is not None and size == prev + 1:
            prev = size
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if size is not None:
            start = prev = size
    return "{" + ", ".join(parts) + "}"


def render_markdown(results: dict[str, Any]) -> str:
    """The section for BENCHMARKS.md, between the markers."""
    s, m, labels = results["settings"], results["machine"], results["labels"]
    rows = results["rows"]
    configs = sorted({(r["B"], r["k"]) for r in rows})
    head = " | ".join(f"B={b}, k={k}" for b, k in configs)
    on_core = sum(r["cpu_total_ms"] for r in rows) / sum(r["wall_total_ms"] for r in rows)
    lines = [
        START,
        "## Catalogue ranking (top k of `Q @ E.T + b` over the item table)",
        "",
        f"Written by `.venv/bin/python {results['command']}` on {results['date']}: {m['cpu']}, "
        f"{m['cores']} cores, torch {m['torch']} ({m['torch_blas']}), numpy {m['numpy']}, one torch and one "
        f"BLAS thread; load average {results['load_before_after'][0]} before, "
        f"{results['load_before_after'][1]} after (the machine is shared: the measured thread was on a core "
        f"{on_core:.0%} of the measured time). A synthetic table of "
        f"{s['n_items']:,} items x {s['dim']} float32 (the first {s['masked']} masked by a -inf bias, as the "
        f"model masks pad and OOV); queries of B rows; median of {s['repeats']} interleaved repeats, "
        "**µs per row** (the block's time / B). Exact: the same top-k set as (a) in every row, up to ties "
        f"within {s['atol']:g} at the k-th score, and the normaliser within a relative {s['norm_rtol']:g}.",
        "",
    ]
    for mode, title in (("topk+norm", "Top k and the softmax normaliser (what the model needs)"),
                        ("topk", "Top k alone")):  # fmt: skip
        lines += [f"{title}:", "", f"| method | {head} | exact |", "|---|" + "---:|" * len(configs) + "---|"]
        for key, label in labels.items():
            mine = {(r["B"], r["k"]): r for r in rows if r["method"] == key and r["mode"] == mode}
            if not mine:
                continue
            cells = " | ".join(f"{mine[c]['per_row_us']:,.0f}" if c in mine else "" for c in configs)
            lines.append(f"| {label} | {cells} | {_exactness(list(mine.values()))} |")
        lines.append("")
    norm = results["normaliser"]
    batches = sorted({r["B"] for r in norm})
    lines += [
        "The normaliser alone (`logsumexp` over the catalogue, on a block of scores already computed), "
        "µs per row:",
        "",
        "| how | " + " | ".join(f"B={b}" for b in batches) + " |",
        "|---|" + "---:|" * len(batches),
    ]
    for how in dict.fromkeys(r["what"] for r in norm):
        per_b = {r["B"]: r["per_row_us"] for r in norm if r["what"] == how}
        lines.append(f"| {how} | " + " | ".join(f"{per_b[b]:,.0f}" for b in batches) + " |")
    inv = results["invariance"]
    keys = list(inv["bitwise"])
    lines += [
        "",
        f"Batch invariance (rows of a {inv['batch']}-row block against the same row scored alone, top "
        f"{inv['k']}): bit for bit equal (items, scores, normaliser): "
        + ", ".join(f"({key}) {inv['bitwise'][key]}" for key in keys)
        + f" of {inv['batch']}; the same items in the same order: "
        + ", ".join(f"({key}) {inv['same_items'][key]}" for key in keys)
        + f"; scores apart by at most {max(inv['max_score_diff'].values()):.1e}. Block sizes that give a row "
        "of `torch.addmm` the same bits: "
        + "; ".join(
            f"`{layout}` {' '.join(_runs(c) for c in found['classes'])}, so from {found['min_rows']} rows on "
            + (
                "the same bits whatever the size, the row's position and the other rows"
                if found["position_free"]
                else "the same bits whatever the size"
            )
            for layout, found in inv["layouts"].items()
        )
        + ". A lone request's ranking (addmm, top 10, normaliser), its block padded to r rows: "
        + "; ".join(
            f"`{layout}` "
            + ", ".join(
                f"{r['rows']}: {r['median_ms']:.2f} ms" for r in results["padding"] if r["layout"] == layout
            )
            for layout in inv["layouts"]
        )
        + ".",
        "",
        results["recommendation"]["text"],
        END,
    ]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n-items", type=int, default=N_ITEMS)
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--ks", type=int, nargs="+", default=list(KS))
    p.add_argument("--repeats", type=int, default=REPEATS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--atol", type=float, default=ATOL)
    p.add_argument("--methods", nargs="+", choices=[m.key for m in METHODS], help="default: all")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ranking.json")
    p.add_argument("--from-json", type=Path, help="render this earlier run's JSON instead of measuring")
    p.add_argument("--markdown", type=Path, help="write the section into this file, between its markers")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        if args.repeats < 30:
            print(f"note: {args.repeats} repeats (the reported figures use at least 30)", file=sys.stderr)
        results = run(args)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    section = render_markdown(results)
    print(section)
    if args.markdown:
        update_section(args.markdown, section, START, END)


if __name__ == "__main__":
    main()
