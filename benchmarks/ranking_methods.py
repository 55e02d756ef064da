"""The catalogue-ranking problem of `benchmarks.ranking`: the table, the exact methods compared, the
exactness check and the recommendation derived from the measurements."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from benchmarks._harness import markers

START, END = markers("ranking")
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


def lse_torch(s: torch.Tensor) -> np.ndarray:
    return torch.logsumexp(s, dim=1).numpy()


def lse_numpy(s: np.ndarray) -> np.ndarray:
    m = s.max(axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0).astype(s.dtype)
    return (np.log(np.exp(s - m).sum(axis=1, dtype=np.float32)) + m[:, 0]).astype(np.float32)


def rank_mm_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q @ t.emb.T + t.bias  # (B, n)
    index, score = _topk_torch(s, k)
    return Ranked(index, score, lse_torch(s) if norm else None)


def rank_mm_argpartition(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q @ t.emb.T + t.bias  # (B, n)
    index, score = _topk_numpy(s.numpy(), k)
    return Ranked(index, score, lse_torch(s) if norm else None)


def rank_numpy(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = q.numpy() @ t.emb_np.T  # (B, n) float32
    s += t.bias_np
    index, score = _topk_numpy(s, k)
    return Ranked(index, score, lse_numpy(s) if norm else None)


def rank_addmm_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb.T)  # (B, n): the bias added inside the matmul, no second pass
    index, score = _topk_torch(s, k)
    return Ranked(index, score, lse_torch(s) if norm else None)


def rank_addmm_t_topk(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb_t)  # (B, n), from the (d, n) layout
    index, score = _topk_torch(s, k)
    return Ranked(index, score, lse_torch(s) if norm else None)


def rank_addmm_argpartition(q: torch.Tensor, t: Table, k: int, norm: bool) -> Ranked:
    s = torch.addmm(t.bias, q, t.emb.T)  # (B, n)
    index, score = _topk_numpy(s.numpy(), k)
    return Ranked(index, score, lse_torch(s) if norm else None)


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
