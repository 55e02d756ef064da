"""Baselines: hand-made splits whose answers are known, the catalogue contract, LightGBM heads, and
save / load / determinism."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from features.build import build_features
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.schema import ACTIONS, EVENT_TYPES, STAGES
from features.snapshots import BuildConfig
from features.vocab import FIRST
from tests.factories import random_events, write_events
from training.baselines import (
    BaselineConfig,
    ItemKNN,
    LightGBMAggregates,
    OwnHistory,
    Popularity,
    all_baselines,
    cosine_neighbours,
    load_baseline,
    rank_items,
    ranking_quality,
)
from training.data import DEFAULT_TARGETS, FeatureBuild, FeatureData
from training.interface import Scorer
from training.metrics import expected_calibration_error

N_ITEMS = 12  # item indices FIRST .. 11: a catalogue of 10
MAX_LEN = 8
NO_SEND = ACTIONS.index("no_send")


def feature_data(
    histories: Sequence[Sequence[tuple[int, str]]],
    next_items: Sequence[Sequence[int]] | None = None,
    customers: Sequence[str] | None = None,
    n_items: int = N_ITEMS,
    aggregates: np.ndarray | None = None,
) -> FeatureData:
    """Rows from (item, event_type) histories, oldest first, left-padded as the feature job stores them."""
    n = len(histories)
    tokens = {name: np.zeros((n, MAX_LEN), dtype=np.int64) for name in TOKEN_FIELDS}
    for row, history in enumerate(histories):
        for j, (item, event) in enumerate(history[-MAX_LEN:]):
            pos = MAX_LEN - min(len(history), MAX_LEN) + j
            tokens["item_id"][row, pos] = item
            tokens["event_type"][row, pos] = EVENT_TYPES.index(event) + FIRST
    nan = np.full(n, np.nan)
    return FeatureData(
        customer_id=np.array(customers or [f"C{i}" for i in range(n)], dtype=object),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        tokens=tokens,
        length=np.array([min(len(h), MAX_LEN) for h in histories], dtype=np.int64),
        aggregates=np.zeros((n, len(AGGREGATE_NAMES)), dtype=np.float32)
        if aggregates is None
        else aggregates,
        stage=np.zeros(n, dtype=np.int64),
        targets={t: np.zeros(n, dtype=np.float32) for t in DEFAULT_TARGETS},
        next_items=[np.asarray(x, dtype=np.int64) for x in (next_items or [[]] * n)],
        logged_action=np.full(n, -1, dtype=np.int64),
        logged_propensity=nan.copy(),
        outcome=nan.astype(np.float32),
        unsubscribed=nan.astype(np.float32),
        n_items=n_items,
    )


def synthetic_aggregates(n: int, seed: int = 0, uplift: float = 0.4) -> FeatureData:
    """Rows whose labels follow the aggregates: stage from two features, propensities from one, and a
    logged randomised action where `cart_abandonment` lifts the purchase only when feature 0 is high."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(AGGREGATE_NAMES))).astype(np.float32)
    data = feature_data([[]] * n, aggregates=x)
    data.stage = (np.digitize(x[:, 0], [-1, 0, 1]) + 2 * (x[:, 1] > 0)).astype(np.int64) % len(STAGES)
    p = 1 / (1 + np.exp(-2 * x[:, 2]))
    for target in DEFAULT_TARGETS:
        data.targets[target] = (rng.random(n) < p).astype(np.float32)
    action = rng.integers(0, len(ACTIONS), n)
    # A logging policy that favours cart_abandonment for high rows: the IPW weights must undo it.
    high = x[:, 0] > 0
    favoured = np.where(high, 0.3, 0.05)
    chosen_cart = rng.random(n) < favoured
    cart = ACTIONS.index("cart_abandonment")
    action = np.where(chosen_cart, cart, np.where(action == cart, NO_SEND, action))
    others = (1 - favoured) / (len(ACTIONS) - 1)
    data.logged_action = action.astype(np.int64)
    data.logged_propensity = np.where(
        action == cart, favoured, np.where(action == NO_SEND, 2 * others, others)
    )
    lift = np.where((action == cart) & high, uplift, 0.0)
    data.outcome = (rng.random(n) < 0.1 + lift).astype(np.float32)
    data.unsubscribed = np.where(action == NO_SEND, np.nan, rng.random(n) < 0.05).astype(np.float32)
    return data


def small_lgbm(**kwargs: object) -> LightGBMAggregates:
    params: dict = dict(min_child_samples=20, max_rounds=200, min_action_rows=50, num_threads=1)
    params.update(kwargs)
    return LightGBMAggregates(**params)


# -- ranking helpers ---------------------------------------------------------------------------------------


def test_ranking_quality_by_hand() -> None:
    top = np.array([[5, 3, 4], [2, 3, 4], [9, 9, 9]])
    got = ranking_quality(top, [np.array([3]), np.array([4, 7]), np.array([], dtype=np.int64)], k=3)
    # Row 1: the hit at rank 2 -> 1/log2(3); row 2: one of two hit at rank 3 -> (1/log2(4)) / (1 + 1/log2(3)).
    assert got["rows"] == 2
    assert got["recall"] == pytest.approx((1 + 0.5) / 2)
    assert got["ndcg"] == pytest.approx((1 / np.log2(3) + 0.5 / (1 + 1 / np.log2(3))) / 2)


def test_rank_items_breaks_ties_by_popularity_and_fills_without_repeats() -> None:
    order = np.array([7, 2, 5, 3, 4])
    scores = sp.csr_matrix(np.array([[0, 0, 0, 1.0, 0, 1.0, 0, 0], [0] * 8]))
    top = rank_items(scores, order, k=4)
    assert top.tolist() == [[5, 3, 7, 2], [7, 2, 5, 3]]
    assert rank_items(scores, order, k=10).shape == (2, 5)  # the whole catalogue, no more


@pytest.mark.parametrize("with_prior", [False, True])
@pytest.mark.parametrize("density", [0.2, 0.9])  # 0.9: enough candidates per row to prune before sorting
def test_rank_items_matches_a_brute_force_sort(with_prior: bool, density: float) -> None:
    rng = np.random.default_rng(1)
    n_items, k = 40, 6
    dense = np.round(rng.random((50, n_items)) * (rng.random((50, n_items)) < density), 1)  # ties too
    dense[:, :FIRST] = 0
    order = FIRST + rng.permutation(n_items - FIRST)
    prior = (
        np.round(rng.random(n_items), 1) * (rng.random(n_items) < 0.5) if with_prior else np.zeros(n_items)
    )
    rank = np.empty(n_items, dtype=np.int64)
    rank[order] = np.arange(len(order))
    expected = []
    for row in dense + prior:
        items = order  # by score, then popularity; zero scores fall back to popularity alone
        expected.append(sorted(items, key=lambda i: (-row[i] if row[i] > 0 else 0.0, rank[i]))[:k])
    got = rank_items(sp.csr_matrix(dense), order, k, prior if with_prior else None)
    assert got.tolist() == np.array(expected).tolist()


def test_cosine_neighbours_keeps_top_m_and_does_not_depend_on_blocks() -> None:
    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((40, 30)) < 0.2) * rng.random((40, 30)))
    one = cosine_neighbours(x, neighbours=3, block=1)
    many = cosine_neighbours(x, neighbours=3, block=1000)
    assert np.array_equal(one.toarray(), many.toarray())
    assert np.diff(one.indptr).max() <= 3
    assert np.all(one.diagonal() == 0)


# -- recommenders on hand-made rows ------------------------------------------------------------------------


def test_popularity_ranks_the_most_bought_item_first() -> None:
    train = feature_data([[]] * 6, next_items=[[5, 3], [5, 7], [5], [3], [], [9]])
    model = Popularity(weeks_grid=(None,)).fit(train, train)
    top = model.predict(feature_data([[(9, "purchase")], []]), k=4).top_items
    assert top is not None
    assert top[:, :2].tolist() == [[5, 3], [5, 3]]  # the same list for everybody


def test_own_history_puts_the_repeatedly_bought_item_first() -> None:
    train = feature_data([[]] * 3, next_items=[[5], [5], [6]])
    history = [(4, "product_view"), (9, "purchase"), (6, "product_view"), (9, "purchase"), (8, "add_to_cart")]
    valid = feature_data([history], next_items=[[9]])
    model = OwnHistory().fit(train, valid)
    top = model.predict(valid, k=6).top_items
    assert top is not None
    assert top[0, 0] == 9
    assert set(top[0, :4]) == {9, 8, 6, 4}  # the customer's own items before anything popular
    assert top[0, 4] == 5  # then the most bought item


def test_item_knn_recommends_an_item_that_co_occurs_with_the_customers_item() -> None:
    # Items 3 and 4 are bought together; 10 is the most popular item but never with 3.
    together = [[(3, "purchase"), (4, "purchase")]] * 4
    alone = [[(10, "purchase")], [(10, "purchase"), (6, "product_view")], [(7, "purchase")]]
    train = feature_data(together + alone, next_items=[[10]] * 7)
    model = ItemKNN(own_weight_grid=(0.0,), popularity_weight_grid=(0.0,)).fit(train, train)
    top = model.predict(feature_data([[(3, "purchase")]]), k=3).top_items
    assert top is not None
    assert top[0, 0] == 4
    assert top[0, 1] == 10  # popularity fills what co-occurrence does not cover


@pytest.fixture(scope="module")
def random_split() -> FeatureData:
    """Random histories over a 10-item catalogue, a few rows without any event."""
    rng = np.random.default_rng(3)
    kinds = ["product_view", "add_to_cart", "purchase", "page_view"]
    histories = [
        [
            (int(rng.integers(FIRST, N_ITEMS)), kinds[int(rng.integers(0, 4))])
            for _ in range(rng.integers(0, 9))
        ]
        for _ in range(60)
    ]
    nexts = [rng.integers(FIRST, N_ITEMS, rng.integers(0, 3)).tolist() for _ in range(60)]
    return feature_data(histories, nexts, customers=[f"C{i % 20}" for i in range(60)])


RECOMMENDERS = [Popularity, OwnHistory, ItemKNN]


@pytest.mark.parametrize("kind", RECOMMENDERS)
@pytest.mark.parametrize("k", [4, 10, 50])
def test_recommenders_rank_the_whole_catalogue(kind: type, k: int, random_split: FeatureData) -> None:
    model = kind().fit(random_split.subset(np.arange(40)), random_split.subset(np.arange(40, 60)))
    top = model.predict(random_split, k=k).top_items
    catalogue = N_ITEMS - FIRST
    assert top.shape == (len(random_split), min(k, catalogue))
    assert top.min() >= FIRST
    assert top.max() < N_ITEMS
    assert all(len(set(row)) == len(row) for row in top.tolist())


@pytest.mark.parametrize("kind", RECOMMENDERS)
def test_recommenders_save_load_round_trip_and_are_deterministic(
    kind: type, random_split: FeatureData, tmp_path: Path
) -> None:
    train, valid = random_split.subset(np.arange(40)), random_split.subset(np.arange(40, 60))
    model = kind().fit(train, valid)
    model.save(tmp_path / "m")
    again = load_baseline(tmp_path / "m")
    assert isinstance(again, kind)
    expected = model.predict(random_split, k=7).top_items
    assert expected is not None
    assert np.array_equal(np.asarray(again.predict(random_split, k=7).top_items), expected)
    assert np.array_equal(kind().fit(train, valid).predict(random_split, k=7).top_items, expected)


def test_predicting_with_another_catalogue_is_refused(random_split: FeatureData) -> None:
    model = Popularity().fit(random_split, random_split)
    with pytest.raises(ValueError, match="item indices"):
        model.predict(feature_data([[]], n_items=N_ITEMS + 1))


# -- LightGBM on the aggregates ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lgbm_splits() -> tuple[FeatureData, FeatureData, FeatureData]:
    return (
        synthetic_aggregates(8000, seed=1),
        synthetic_aggregates(3000, seed=2),
        synthetic_aggregates(2000, 3),
    )


@pytest.fixture(scope="module")
def lgbm(lgbm_splits: tuple[FeatureData, FeatureData, FeatureData]) -> LightGBMAggregates:
    train, valid, _ = lgbm_splits
    return small_lgbm().fit(train, valid)


def test_lightgbm_heads_are_probabilities(
    lgbm: LightGBMAggregates, lgbm_splits: tuple[FeatureData, FeatureData, FeatureData]
) -> None:
    test = lgbm_splits[2]
    pred = lgbm.predict(test)
    assert pred.top_items is None
    assert pred.stage_proba is not None
    assert pred.stage_proba.shape == (len(test), len(STAGES))
    assert np.allclose(pred.stage_proba.sum(axis=1), 1.0)
    assert (pred.stage_proba.argmax(axis=1) == test.stage).mean() > 0.6  # the stage follows 2 features
    assert set(pred.propensity) == {*DEFAULT_TARGETS, "unsubscribe"}
    for proba in pred.propensity.values():
        assert proba.shape == (len(test),)
        assert np.all((proba >= 0) & (proba <= 1))
    assert pred.action_outcome is not None
    assert pred.action_outcome.shape == (len(test), len(ACTIONS))
    assert np.all((pred.action_outcome >= 0) & (pred.action_outcome <= 1))


def test_t_learner_recovers_an_effect_only_on_high_rows(
    lgbm: LightGBMAggregates, lgbm_splits: tuple[FeatureData, FeatureData, FeatureData]
) -> None:
    test = lgbm_splits[2]
    outcome = lgbm.predict(test).action_outcome
    assert outcome is not None
    uplift = outcome[:, ACTIONS.index("cart_abandonment")] - outcome[:, NO_SEND]
    high = test.aggregates[:, 0] > 0
    assert uplift[high].mean() > 0.25  # true lift 0.4
    assert abs(uplift[~high].mean()) < 0.1  # true lift 0
    assert uplift[high].mean() - uplift[~high].mean() > 0.2


def test_action_with_too_few_rows_falls_back_to_no_send(
    lgbm_splits: tuple[FeatureData, FeatureData, FeatureData],
) -> None:
    train, valid, test = lgbm_splits
    rare = ACTIONS.index("welcome_series")
    keep = (train.logged_action != rare) | (np.arange(len(train)) % 20 == 0)  # about 40 rows left
    model = small_lgbm(max_rounds=30).fit(train.subset(keep), valid)
    assert model.fallback_ == {"welcome_series": "outcome_no_send"}
    outcome = model.predict(test).action_outcome
    assert outcome is not None
    assert np.array_equal(outcome[:, rare], outcome[:, NO_SEND])


def test_lightgbm_save_load_round_trip_and_determinism(
    lgbm: LightGBMAggregates, lgbm_splits: tuple[FeatureData, FeatureData, FeatureData], tmp_path: Path
) -> None:
    train, valid, test = lgbm_splits
    lgbm.save(tmp_path / "lgbm")
    assert not list((tmp_path / "lgbm").glob("*.pkl"))
    again = load_baseline(tmp_path / "lgbm")
    for other in (again, small_lgbm().fit(train, valid)):
        a, b = lgbm.predict(test), other.predict(test)
        assert np.array_equal(np.asarray(a.stage_proba), np.asarray(b.stage_proba))
        assert np.array_equal(np.asarray(a.action_outcome), np.asarray(b.action_outcome))
        for name, proba in a.propensity.items():
            assert np.array_equal(proba, b.propensity[name])


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_forced_calibration_fixes_a_shifted_model(
    method: str, lgbm_splits: tuple[FeatureData, FeatureData, FeatureData]
) -> None:
    train, valid, test = lgbm_splits
    # Training labels with twice the base rate: the raw model over-predicts on valid and test.
    shifted = train.subset(np.arange(len(train)))
    rng = np.random.default_rng(0)
    shifted.targets["churn_30d"] = np.maximum(shifted.targets["churn_30d"], rng.random(len(train)) < 0.3)
    shifted.targets["churn_30d"] = shifted.targets["churn_30d"].astype(np.float32)
    raw = small_lgbm(calibration="none", max_rounds=20, num_leaves=7).fit(shifted, valid)
    fixed = small_lgbm(calibration=method, max_rounds=20, num_leaves=7).fit(shifted, valid)
    y = test.targets["churn_30d"]
    ece_raw = expected_calibration_error(y, raw.predict(test).propensity["churn_30d"], binning="equal_mass")
    ece_fixed = expected_calibration_error(
        y, fixed.predict(test).propensity["churn_30d"], binning="equal_mass"
    )
    assert fixed.heads_["churn_30d"].info["calibration"] == method
    assert ece_fixed < ece_raw / 2


def test_expected_calibration_error_by_hand() -> None:
    y = np.array([0, 1, 0, 1, 1, 1, 1, 0])
    assert expected_calibration_error(y, np.full(8, 0.625), n_bins=1, binning="equal_mass") == pytest.approx(
        0.0
    )
    assert expected_calibration_error(y, np.full(8, 0.875), n_bins=2, binning="equal_mass") == pytest.approx(
        0.25
    )
    stage = np.array([[0.9, 0.1], [0.9, 0.1]])
    assert expected_calibration_error(
        np.array([0, 1]), stage, n_bins=1, binning="equal_mass"
    ) == pytest.approx(0.4)


# -- the default set ---------------------------------------------------------------------------------------


def test_all_baselines_builds_scorers_from_config() -> None:
    scorers = all_baselines()
    assert [s.name for s in scorers] == [
        "popularity", "own_history", "item_knn", "tifu_knn", "lightgbm_aggregates", "logistic_rf", "bg_nbd",
    ]  # fmt: skip
    assert all(isinstance(s, Scorer) for s in scorers)
    chosen = all_baselines({"baselines": ["item_knn"], "knn_neighbours": 7, "own_decay_grid": [0.9]})
    assert len(chosen) == 1
    assert isinstance(chosen[0], ItemKNN)
    assert chosen[0].neighbours == 7
    assert BaselineConfig.from_dict({"own_decay_grid": [0.9]}).own_decay_grid == (0.9,)
    with pytest.raises(ValueError, match="knn_neighbors"):
        all_baselines({"knn_neighbors": 7})
    with pytest.raises(ValueError, match="unknown baseline"):
        all_baselines({"baselines": ["gru4rec"]})


def test_every_baseline_on_a_built_random_shop(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The whole path: a feature build of a tiny random shop -> fit -> predict, for the default set."""
    shop = write_events(
        random_events(200, 12_000, seed=5, days=150), tmp_path_factory.mktemp("s") / "e.parquet"
    )
    out = tmp_path_factory.mktemp("features")
    build_features(shop, out, BuildConfig(n_buckets=2, workers=1), progress=False)
    build = FeatureBuild.open(out)
    train, valid, test = build.split("train"), build.split("valid"), build.split("test")
    for scorer in all_baselines({"num_threads": 1, "lgbm_min_child_samples": 20, "lgbm_max_rounds": 50}):
        pred = scorer.fit(train, valid).predict(test, k=20)
        if pred.top_items is not None:
            assert pred.top_items.shape == (len(test), min(20, build.n_items - FIRST))
            assert pred.top_items.min() >= FIRST
            assert all(len(set(row)) == len(row) for row in pred.top_items.tolist())
        elif pred.stage_proba is not None:
            assert np.allclose(pred.stage_proba.sum(axis=1), 1.0)
        else:  # propensities only (logistic_rf)
            assert pred.propensity
