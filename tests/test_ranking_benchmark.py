"""The ranking benchmark's own logic on tiny tables: the exactness check (ties at the k-th place allowed,
anything else not), every method against a brute-force ranking, the recommendation drawn from the
figures, and the section it writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from benchmarks.ranking import main
from benchmarks.ranking_methods import (
    END,
    METHODS,
    START,
    Method,
    Ranked,
    Table,
    check_exact,
    make_queries,
    make_table,
    rank_addmm_topk,
    rank_chunked,
    recommend,
)
from benchmarks.ranking_report import run_spans

LABELS = {"a": "(a) base", "d1": "(d1) fused", "d2": "(d2) other", "x": "(x) fast but wrong"}


def ranked(index: list[list[int]], score: list[list[float]], norm: list[float] | None = None) -> Ranked:
    return Ranked(
        np.array(index, dtype=np.int64),
        np.array(score, dtype=np.float32),
        None if norm is None else np.array(norm, dtype=np.float32),
    )


def test_the_same_sets_are_exact() -> None:
    ref = ranked([[4, 2, 7], [1, 0, 3]], [[3.0, 2.0, 1.0], [0.5, 0.4, 0.3]], [5.0, 4.0])
    got = ranked([[4, 2, 7], [1, 0, 3]], [[3.0, 2.0, 1.0], [0.5, 0.4, 0.3 + 5e-7]], [5.0, 4.0 + 1e-6])
    check = check_exact(ref, got)
    assert check["exact"]
    assert (check["rows"], check["same_set"], check["ties"], check["wrong"]) == (2, 2, 0, 0)
    assert check["max_score_diff"] == pytest.approx(5e-7, abs=1e-7)
    assert check["max_norm_rel_diff"] == pytest.approx(2.5e-7, abs=1e-7)


def test_a_tie_at_the_kth_place_is_exact_but_counted() -> None:
    # Items 7 and 9 score the same (to 1e-6): either may take the third place.
    ref = ranked([[4, 2, 7]], [[3.0, 2.0, 1.0]])
    got = ranked([[4, 2, 9]], [[3.0, 2.0, 1.000001]])
    check = check_exact(ref, got, atol=1e-4)
    assert check["exact"]
    assert (check["same_set"], check["ties"], check["wrong"]) == (0, 1, 0)


def test_a_different_item_is_not_exact() -> None:
    ref = ranked([[4, 2, 7]], [[3.0, 2.0, 1.0]])
    got = ranked([[4, 2, 9]], [[3.0, 2.0, 0.9]])  # item 9 is 0.1 below the third place: a wrong answer
    check = check_exact(ref, got, atol=1e-4)
    assert not check["exact"]
    assert check["wrong"] == 1
    # The same sets with scores off by more than the tolerance are not exact either.
    assert not check_exact(ref, ranked([[4, 2, 7]], [[3.0, 2.0, 1.01]]), atol=1e-4)["exact"]


def test_a_wrong_normaliser_is_not_exact() -> None:
    ref = ranked([[4]], [[3.0]], [10.0])
    assert check_exact(ref, ranked([[4]], [[3.0]], [10.00001]))["exact"]
    check = check_exact(ref, ranked([[4]], [[3.0]], [10.01]))
    assert not check["exact"]
    assert check["max_norm_rel_diff"] == pytest.approx(1e-3, rel=1e-2)


def test_answers_of_different_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="different shapes"):
        check_exact(ranked([[1, 2]], [[2.0, 1.0]]), ranked([[1]], [[2.0]]))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.key)
def test_every_method_matches_a_brute_force_ranking(method: Method) -> None:
    torch.set_num_threads(1)
    table = make_table(n_items=300, dim=8, seed=3)
    q = make_queries(5, 8, seed=4)
    scores = q.double().numpy() @ table.emb.double().numpy().T + table.bias.double().numpy()  # (5, 300)
    best = np.argsort(-scores, axis=1, kind="stable")[:, :7]
    norm = np.log(np.exp(scores - scores.max(1, keepdims=True)).sum(1)) + scores.max(1)
    truth = Ranked(best, np.take_along_axis(scores, best, 1).astype(np.float32), norm.astype(np.float32))
    got = method.rank(q, table, 7, True)
    check = check_exact(truth, got)
    assert check["exact"], check
    assert not np.isin(got.index, [0, 1]).any()  # the masked items (-inf) are never ranked


def test_the_chunked_method_merges_chunks_exactly() -> None:
    table = make_table(n_items=1000, dim=8, seed=5)
    q = make_queries(4, 8, seed=6)
    ref = rank_addmm_topk(q, table, 20, True)
    for chunk in (7, 64, 999, 5000):  # smaller than k, uneven, one short of the table, larger
        assert check_exact(ref, rank_chunked(q, table, 20, True, chunk=chunk))["exact"]


def test_a_tie_in_the_table_keeps_every_method_exact() -> None:
    # Items 5 and 6 are the same vector with the same bias: one of them takes the last place.
    table = make_table(n_items=50, dim=4, seed=1)
    emb, bias = table.emb.clone(), table.bias.clone()
    q = torch.ones(1, 4)
    emb[2:] *= 0.01
    emb[5] = emb[6] = torch.tensor([1.0, 1.0, 1.0, 1.0])
    bias[2:] = 0.0
    emb[3] = torch.full((4,), 2.0)
    tied = Table(emb=emb, emb_t=emb.T.contiguous(), bias=bias)
    ref = METHODS[0].rank(q, tied, 2, True)  # item 3 first, then 5 or 6
    assert ref.index[0, 0] == 3
    assert ref.index[0, 1] in (5, 6)
    for m in METHODS:
        assert check_exact(ref, m.rank(q, tied, 2, True))["exact"], m.key


def rows(
    costs: dict[str, dict[tuple[int, int], float]], inexact: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    return [
        {"method": m, "mode": "topk+norm", "B": b, "k": k, "median_ms": ms, "exact": m not in inexact}
        for m, by in costs.items()
        for (b, k), ms in by.items()
    ]


def test_the_recommendation_is_the_cheapest_exact_method() -> None:
    configs = [(1, 10), (1, 100), (64, 10), (64, 100)]
    measured = rows(
        {
            "a": dict.fromkeys(configs, 10.0),
            "d1": dict.fromkeys(configs, 5.0),  # 2x cheaper everywhere
            "d2": {(1, 10): 4.0, (1, 100): 8.0, (64, 10): 8.0, (64, 100): 8.0},  # cheapest once only
            "x": dict.fromkeys(configs, 1.0),  # cheapest, but not exact
        },
        inexact=("x",),
    )
    rec = recommend(measured, LABELS)
    assert rec["method"] == "d1"
    assert rec["speedup"] == pytest.approx(2.0)
    assert (rec["wins"], rec["configs"]) == (3, 4)
    assert rec["inexact"] == ["x"]
    assert rec["text"].startswith("Recommendation: (d1) fused: exact, and 2.00x cheaper than (a)")
    assert "at B = 64, k = 10: 78 µs a row against 156" in rec["text"]
    assert rec["text"].endswith("Not exact here, so not considered: (x) fast but wrong.")
    # Against the method in use today (d2 here): the geometric mean of 4/5, 8/5, 8/5, 8/5.
    with_current = recommend(measured, LABELS, current="d2")["text"]
    gain = (4 * 8 * 8 * 8) ** 0.25 / 5
    assert f"Against (d2) other: {gain:.2f}x cheaper." in with_current
    assert "Against" not in recommend(measured, LABELS, current="d1")["text"]


def test_a_gain_within_the_noise_keeps_the_baseline() -> None:
    configs = [(1, 10), (8, 10)]
    measured = rows({"a": dict.fromkeys(configs, 10.0), "d1": dict.fromkeys(configs, 9.8)})
    rec = recommend(measured, LABELS)
    assert rec["method"] == "a"
    assert rec["text"].startswith("Recommendation: keep (a) base: no exact method is 5% cheaper")
    assert "(d1) fused, by 1.02x" in rec["text"]


def test_the_recommendation_needs_an_exact_baseline() -> None:
    configs = [(1, 10)]
    with pytest.raises(ValueError, match="baseline"):
        recommend(rows({"a": dict.fromkeys(configs, 1.0)}, inexact=("a",)), LABELS)
    with pytest.raises(ValueError, match="no measured rows"):
        recommend(rows({"a": dict.fromkeys(configs, 1.0)}), LABELS, mode="topk")


def test_runs_of_block_sizes() -> None:
    assert run_spans([1, 2, 3, 5, 7, 8]) == "{1-3, 5, 7-8}"
    assert run_spans([4]) == "{4}"


def test_a_tiny_run_writes_its_json_and_its_section(tmp_path: Path) -> None:
    out, md = tmp_path / "ranking.json", tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\nbefore\n\n{START}\nold\n{END}\n\nafter\n")
    main(["--n-items", "500", "--dim", "8", "--batches", "1", "3", "--ks", "4", "--repeats", "2",
          "--out", str(out), "--markdown", str(md)])  # fmt: skip
    results = json.loads(out.read_text())
    assert {r["method"] for r in results["rows"]} == {m.key for m in METHODS}
    assert all(r["exact"] for r in results["rows"])
    assert len(results["rows"]) == len(METHODS) * 2 * 2  # methods x batches x modes, one k
    inv = results["invariance"]
    assert inv["batch"] == 3
    assert all(n == 3 for n in inv["same_items"].values())  # rounding never reorders this table's items
    for found in inv["layouts"].values():
        assert sorted(s for c in found["classes"] for s in c) == [*range(1, 17), 32, 64]
        assert 1 <= found["min_rows"] <= 64
    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nbefore\n\n" + START)
    assert text.endswith(END + "\n\nafter\n")
    assert "old" not in text
    assert results["recommendation"]["text"] in text
    # --from-json renders the same section again without measuring.
    md2 = tmp_path / "again.md"
    main(["--from-json", str(out), "--markdown", str(md2)])
    assert results["recommendation"]["text"] in md2.read_text()
