"""Metrics on tiny cases whose values were worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from stats import (
    Interval,
    RowStatistic,
    bootstrap_ci,
    bootstrap_means,
    paired_bootstrap,
    ratio_of_means,
    weighted_nanmean,
)
from training.metrics import (
    accuracy,
    average_precision,
    catalogue_coverage,
    confusion_matrix,
    expected_calibration_error,
    f1_per_class,
    hit_rate_at_k,
    log_loss,
    macro_f1,
    mrr_at_k,
    multiclass_log_loss,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    relevance_hits,
    reliability_curve,
    roc_auc,
    split_repeat_explore,
    unique_relevant,
)

LOG2_3 = math.log2(3)  # 1.58496
LOG2_6 = math.log2(6)  # 2.58496


# Four rows ranked over a 20-item catalogue.
TOP = np.array(
    [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [1, 6, 11, 12, 13],
        [1, 2, 3, 4, 5],
    ]
)
RELEVANT = [np.array([2, 5, 20]), np.array([30]), np.array([13, 1]), np.array([], dtype=np.int64)]
N_REL = np.array([3, 1, 2, 0])


@pytest.fixture
def hits() -> np.ndarray:
    return relevance_hits(TOP, RELEVANT)


def test_hits_mark_the_ranks_of_relevant_items(hits: np.ndarray) -> None:
    expected = np.array(
        [
            [0, 1, 0, 0, 1],  # items 2 and 5 at ranks 2 and 5
            [0, 0, 0, 0, 0],
            [1, 0, 0, 0, 1],  # items 1 and 13 at ranks 1 and 5
            [0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(hits, expected)


def test_recall_at_k(hits: np.ndarray) -> None:
    # Row 0: 2 of 3 relevant in the top 5, 1 of 3 in the top 2; row 1: 0; row 2: 2/2 and 1/2; row 3: no
    # relevant item, left out (NaN).
    np.testing.assert_allclose(recall_at_k(hits, N_REL, 5), [2 / 3, 0, 1, np.nan])
    np.testing.assert_allclose(recall_at_k(hits, N_REL, 2), [1 / 3, 0, 1 / 2, np.nan])
    # Mean over the three rows that count: (2/3 + 0 + 1) / 3 = 0.5556.
    assert weighted_nanmean(recall_at_k(hits, N_REL, 5)) == pytest.approx(0.555556, abs=1e-6)


def test_ndcg_at_k(hits: np.ndarray) -> None:
    # Row 0 @5: DCG = 1/log2(3) + 1/log2(6) = 0.63093 + 0.38685 = 1.01778;
    #           IDCG over min(5, 3) = 3 ranks = 1 + 0.63093 + 0.5 = 2.13093; NDCG = 0.47762.
    # Row 2 @5: DCG = 1 + 1/log2(6) = 1.38685; IDCG over 2 ranks = 1.63093; NDCG = 0.85034.
    row0 = (1 / LOG2_3 + 1 / LOG2_6) / (1 + 1 / LOG2_3 + 0.5)
    row2 = (1 + 1 / LOG2_6) / (1 + 1 / LOG2_3)
    assert row0 == pytest.approx(0.47762, abs=1e-5)
    assert row2 == pytest.approx(0.85034, abs=1e-5)
    np.testing.assert_allclose(ndcg_at_k(hits, N_REL, 5), [row0, 0, row2, np.nan])
    # @2: row 0 DCG = 0.63093, IDCG over min(2, 3) = 2 ranks = 1.63093 -> 0.38685; row 2: 1 / 1.63093.
    np.testing.assert_allclose(ndcg_at_k(hits, N_REL, 2), [0.38685, 0, 0.61315, np.nan], atol=1e-5)
    # Mean @5: (0.47762 + 0 + 0.85034) / 3 = 0.44265.
    assert weighted_nanmean(ndcg_at_k(hits, N_REL, 5)) == pytest.approx(0.44265, abs=1e-5)


def test_mrr_and_hit_rate(hits: np.ndarray) -> None:
    # First relevant at rank 2, none, rank 1: reciprocal ranks 1/2, 0, 1 -> MRR@5 = 0.5.
    np.testing.assert_allclose(mrr_at_k(hits, N_REL, 5), [0.5, 0, 1, np.nan])
    assert weighted_nanmean(mrr_at_k(hits, N_REL, 5)) == pytest.approx(0.5)
    # @1 only row 2 has its first relevant item in the top 1.
    np.testing.assert_allclose(mrr_at_k(hits, N_REL, 1), [0, 0, 1, np.nan])
    np.testing.assert_allclose(hit_rate_at_k(hits, N_REL, 5), [1, 0, 1, np.nan])
    np.testing.assert_allclose(hit_rate_at_k(hits, N_REL, 1), [0, 0, 1, np.nan])


def test_k_longer_than_the_ranking_is_refused(hits: np.ndarray) -> None:
    with pytest.raises(ValueError, match="k=6"):
        recall_at_k(hits, N_REL, 6)


def test_catalogue_coverage() -> None:
    # Top 5 of all rows: {1..5} + {6..10} + {1, 6, 11, 12, 13} + {1..5} = items 1..13: 13 / 20 = 0.65.
    assert catalogue_coverage(TOP, 5, 20) == pytest.approx(0.65)
    # Top 2: {1, 2, 6, 7}: 4 / 20 = 0.2. A -1 ("no item") does not count.
    assert catalogue_coverage(TOP, 2, 20) == pytest.approx(0.2)
    assert catalogue_coverage(np.array([[1, -1], [1, 2]]), 2, 10) == pytest.approx(0.2)


def test_ranking_metrics_names_and_values() -> None:
    out = ranking_metrics(TOP, RELEVANT, ks=(2, 5))
    assert set(out) == {f"{m}_at_{k}" for m in ("recall", "ndcg", "mrr", "hit") for k in (2, 5)}
    np.testing.assert_allclose(out["recall_at_5"], [2 / 3, 0, 1, np.nan])


def test_unique_relevant_drops_padding_and_unknown_items() -> None:
    out = unique_relevant([np.array([5, 1, 5, 0, 7])], min_item=2)
    np.testing.assert_array_equal(out[0], [5, 7])


def test_repeat_and_explore_split() -> None:
    history = np.array(
        [
            [0, 0, 2, 9],  # row 0 had seen item 2
            [0, 0, 0, 0],
            [13, 13, 4, 1],  # row 2 had seen 13 and 1
            [0, 0, 0, 0],
        ]
    )
    repeat, explore = split_repeat_explore(RELEVANT, history)
    assert [r.tolist() for r in repeat] == [[2], [], [13, 1], []]
    assert [e.tolist() for e in explore] == [[5, 20], [30], [], []]
    # Against repeat items only, row 0 finds item 2 at rank 2 of 1 relevant: recall@5 = 1, MRR = 1/2;
    # explore: item 5 at rank 5 of {5, 20}: recall 1/2, MRR 1/5.
    rep = ranking_metrics(TOP, repeat, ks=(5,))
    exp = ranking_metrics(TOP, explore, ks=(5,))
    np.testing.assert_allclose(rep["recall_at_5"], [1, np.nan, 1, np.nan])
    np.testing.assert_allclose(rep["mrr_at_5"], [0.5, np.nan, 1, np.nan])
    np.testing.assert_allclose(exp["recall_at_5"], [0.5, 0, np.nan, np.nan])
    np.testing.assert_allclose(exp["mrr_at_5"], [0.2, 0, np.nan, np.nan])


# ---------------------------------------------------------------------------------------------- classes

Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_matrix() -> None:
    expected = np.array(
        [
            [1, 1, 0],  # true 0: once right, once predicted 1
            [0, 2, 0],
            [1, 0, 1],  # true 2: once predicted 0
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(Y_TRUE, Y_PRED, 3), expected)


def test_f1_and_macro_f1() -> None:
    # class 0: TP 1, FP 1, FN 1 -> 2/(2+1+1) = 0.5; class 1: TP 2, FP 1, FN 0 -> 4/5 = 0.8;
    # class 2: TP 1, FP 0, FN 1 -> 2/3. Macro-F1 = (0.5 + 0.8 + 0.6667) / 3 = 0.65556.
    np.testing.assert_allclose(f1_per_class(Y_TRUE, Y_PRED, 3), [0.5, 0.8, 2 / 3])
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx(0.655556, abs=1e-6)
    # A fourth class that is neither true nor predicted has no F1 and does not dilute the mean.
    assert np.isnan(f1_per_class(Y_TRUE, Y_PRED, 4)[3])
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(0.655556, abs=1e-6)
    assert macro_f1(Y_TRUE, Y_PRED, 4) == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(4 / 6)


def test_weighted_macro_f1_agrees_with_sklearn() -> None:
    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 5, 300), rng.integers(0, 5, 300)
    w = rng.integers(0, 4, 300).astype(float)
    expected = f1_score(y, p, average="macro", sample_weight=w, zero_division=0)
    assert macro_f1(y, p, 5, sample_weight=w) == pytest.approx(expected)


def test_multiclass_log_loss() -> None:
    proba = np.array([[0.5, 0.5], [0.2, 0.8]])
    # -(log 0.5 + log 0.8) / 2 = (0.69315 + 0.22314) / 2 = 0.45815
    assert multiclass_log_loss(np.array([0, 1]), proba) == pytest.approx(0.458145, abs=1e-6)


# ---------------------------------------------------------------------------------------------- binary

Y = np.array([0, 1, 1, 0, 1])
P = np.array([0.1, 0.4, 0.35, 0.8, 0.9])


def test_roc_auc() -> None:
    # Positives 0.4, 0.35, 0.9 against negatives 0.1, 0.8: 0.4 > 0.1, 0.35 > 0.1, 0.9 > both: 4 of 6 pairs.
    assert roc_auc(Y, P) == pytest.approx(4 / 6)
    # Ties count one half: positive 0.5 vs negative 0.5 -> 0.5.
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_average_precision() -> None:
    # Descending: 0.9 (+) P=1 R=1/3; 0.8 (-); 0.4 (+) P=2/3 R=2/3; 0.35 (+) P=3/4 R=1; 0.1 (-).
    # AP = 1/3 * 1 + 1/3 * 2/3 + 1/3 * 3/4 = 0.33333 + 0.22222 + 0.25 = 0.80556.
    assert average_precision(Y, P) == pytest.approx(0.805556, abs=1e-6)
    assert np.isnan(average_precision(np.zeros(3), np.array([0.1, 0.2, 0.3])))
    assert np.isnan(average_precision(np.array([]), np.array([])))
    assert np.isnan(roc_auc(np.array([]), np.array([])))


def test_ranking_metrics_with_ties_and_weights_agree_with_sklearn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    p = np.round(rng.uniform(size=500), 1)  # many ties
    w = rng.integers(0, 4, 500).astype(float)
    assert roc_auc(y, p, w) == pytest.approx(roc_auc_score(y, p, sample_weight=w))
    assert average_precision(y, p, w) == pytest.approx(average_precision_score(y, p, sample_weight=w))
    assert log_loss(y, p, w) == pytest.approx(sk_log_loss(y, np.clip(p, 1e-7, 1 - 1e-7), sample_weight=w))


def test_log_loss() -> None:
    # -(log 0.9 + log 0.4 + log 0.35 + log 0.2 + log 0.9) / 5
    # = (0.10536 + 0.91629 + 1.04982 + 1.60944 + 0.10536) / 5 = 0.75725
    assert log_loss(Y, P) == pytest.approx(0.757255, abs=1e-5)


def test_expected_calibration_error() -> None:
    # Two bins. [0, 0.5): p 0.1, 0.4, 0.35 (mean 0.28333), y 0, 1, 1 (mean 0.66667): gap 0.38333, 3/5 of rows.
    # [0.5, 1]: p 0.8, 0.9 (mean 0.85), y 0, 1 (mean 0.5): gap 0.35, 2/5 of rows.
    # ECE = 0.6 * 0.38333 + 0.4 * 0.35 = 0.23 + 0.14 = 0.37.
    assert expected_calibration_error(Y, P, n_bins=2) == pytest.approx(0.37)
    curve = reliability_curve(Y, P, n_bins=2)
    np.testing.assert_allclose(curve.count, [3, 2])
    np.testing.assert_allclose(curve.mean_predicted, [0.283333, 0.85], atol=1e-6)
    np.testing.assert_allclose(curve.fraction_positive, [2 / 3, 0.5])
    # Perfect calibration within bins: ECE 0. p = 1 falls in the last bin, empty bins are NaN in the curve.
    assert expected_calibration_error(np.array([0, 1]), np.array([0.0, 1.0]), n_bins=4) == 0
    assert np.isnan(reliability_curve(np.array([0, 1]), np.array([0.0, 1.0]), n_bins=4).mean_predicted[1])


# ---------------------------------------------------------------------------------------------- bootstrap


def test_weighted_means() -> None:
    # NaN rows are left out: (1 + 3) / 2 = 2; with weights 1, 5, 3: (1 + 9) / 4 = 2.5.
    assert weighted_nanmean(np.array([1.0, np.nan, 3.0])) == 2
    assert weighted_nanmean(np.array([1.0, np.nan, 3.0]), np.array([1.0, 5.0, 3.0])) == 2.5
    assert np.isnan(weighted_nanmean(np.array([np.nan])))
    # (2 + 3) / (1 + 4) = 1.
    assert ratio_of_means(np.array([2.0, 3.0]), np.array([1.0, 4.0])) == 1


def test_bootstrap_interval_contains_the_point_and_shrinks_with_more_data() -> None:
    rng = np.random.default_rng(0)
    small = bootstrap_ci(rng.normal(1.0, 1.0, 100), n_boot=300, seed=1)
    large = bootstrap_ci(rng.normal(1.0, 1.0, 10_000), n_boot=300, seed=1)
    for ci in (small, large):
        assert isinstance(ci, Interval)
        assert ci.lo < ci.point < ci.hi
    # Width ~ 2 * 1.96 / sqrt(n): 0.39 for 100 rows, 0.039 for 10,000.
    assert small.hi - small.lo == pytest.approx(0.39, rel=0.25)
    assert (large.hi - large.lo) < (small.hi - small.lo) / 5
    assert large.lo < 1.0 < large.hi


def test_bootstrap_of_a_statistic_function() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    p = np.clip(y * 0.3 + rng.uniform(size=400) * 0.7, 0, 1)
    ci = bootstrap_ci((y, p), roc_auc, n_boot=200, seed=0)
    assert ci.point == pytest.approx(roc_auc_score(y, p))
    assert ci.lo < ci.point < ci.hi
    # The same seed gives the same interval; no resamples give NaN bounds.
    assert bootstrap_ci((y, p), roc_auc, n_boot=200, seed=0) == ci
    none = bootstrap_ci((y, p), roc_auc, n_boot=0)
    assert none.point == ci.point
    assert np.isnan(none.lo)
    assert np.isnan(none.hi)


def test_bootstrap_means_matches_one_at_a_time() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=500)
    b = np.where(rng.uniform(size=500) < 0.3, np.nan, rng.normal(size=500))
    many = bootstrap_means({"a": a, "b": b}, n_boot=100, seed=4)
    assert many["a"] == pytest.approx(bootstrap_ci(a, n_boot=100, seed=4))
    assert many["b"] == pytest.approx(bootstrap_ci(b, n_boot=100, seed=4))


def test_paired_bootstrap_is_narrower_than_separate_intervals() -> None:
    rng = np.random.default_rng(5)
    common = rng.normal(size=2_000)  # both scorers err on the same rows
    a = common + 0.1 + rng.normal(scale=0.1, size=2_000)
    b = common + rng.normal(scale=0.1, size=2_000)
    diff = paired_bootstrap(a, b, n_boot=300, seed=0)
    assert diff.point == pytest.approx(a.mean() - b.mean())
    assert diff.lo < 0.1 < diff.hi
    alone = bootstrap_ci(a, n_boot=300)
    assert (diff.hi - diff.lo) < (alone.hi - alone.lo) / 5
    # A scorer against itself: exactly 0.
    assert paired_bootstrap(a, a, n_boot=50) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same rows"):
        paired_bootstrap(a, b[:10])


def test_row_statistic() -> None:
    stat = RowStatistic((np.array([2.0, 3.0]), np.array([1.0, 4.0])), ratio_of_means)
    assert len(stat) == 2
    assert stat.value() == 1
    assert stat.ci(n_boot=20).point == 1
    assert stat.minus(stat, n_boot=20) == (0.0, 0.0, 0.0)
