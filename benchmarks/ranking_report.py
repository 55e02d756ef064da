"""The Markdown section of `benchmarks.ranking`, rendered from its results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks._harness import PYTHON
from benchmarks.ranking_methods import END, START

# ---------------------------------------------------------------------------------------------------------
# The Markdown section


def _exactness(rows: list[dict[str, Any]]) -> str:
    checks = [r["check"] for r in rows]
    if any(not c["exact"] for c in checks):
        return "**no**"
    ties = sum(c["ties"] for c in checks)
    return f"yes ({ties} rows tied at the k-th place)" if ties else "yes"


def run_spans(sizes: Sequence[int]) -> str:
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
    command = results["command"]  # runs before `python -m benchmarks.ranking` recorded the script alone
    command = command if command.startswith(PYTHON) else f"{PYTHON} {command}"
    lines = [
        START,
        "## Catalogue ranking (top k of `Q @ E.T + b` over the item table)",
        "",
        f"Written by `{command}` on {results['date']}: {m['cpu']}, "
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
            f"`{layout}` {' '.join(run_spans(c) for c in found['classes'])}, "
            f"so from {found['min_rows']} rows on "
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
