"""The strong simple baselines (issue 13): TIFU-KNN's personal vectors and neighbours, and logistic
regression on log recency and log frequency, on rows whose answers are worked out by hand."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from features.build import build_features
from features.encoder import AGGREGATE_NAMES, EncoderConfig, encode
from features.schema import ACTIONS
from features.snapshots import BuildConfig
from features.vocab import FIRST, Vocabulary
from tests.factories import events, random_events, write_events
from training.baselines import (
    BASELINES,
    TIFUKNN,
    LogisticRF,
    all_baselines,
    load_baseline,
    nearest_customers,
    personal_vectors,
)
from training.baselines.tifu_knn import neighbour_mean
from training.data import DEFAULT_TARGETS, FeatureBuild, FeatureData
from training.evaluate import evaluate

ITEMS = [f"I{i}" for i in range(1, 10)]  # vocabulary indices FIRST .. FIRST + 8
N_ITEMS = FIRST + len(ITEMS)
VOCAB = Vocabulary.fit({"item_id": pd.Series({item: 100 - i for i, item in enumerate(ITEMS)})})
MAX_LEN = 16


def idx(item: str) -> int:
    return VOCAB.tokens["item_id"].index(item) + FIRST


def encoded(
    ev: pd.DataFrame, next_items: Mapping[str, Sequence[str]] | None = None, at: str = "2026-02-01"
) -> FeatureData:
    """One row per customer of `ev` at cutoff `at`, encoded by the features' own encoder."""
    customers = sorted(ev["customer_id"].unique())
    cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": pd.Timestamp(at, tz="UTC")})
    batch = encode(ev, cutoffs, VOCAB, EncoderConfig(max_len=MAX_LEN))
    n = len(customers)
    nan = np.full(n, np.nan)
    nexts = next_items or {}
    return FeatureData(
        customer_id=np.array(customers, dtype=object),
        cutoff_ms=np.full(n, pd.Timestamp(at).value // 1_000_000, dtype=np.int64),
        tokens={k: v.astype(np.int64) for k, v in batch.tokens.items()},
        length=batch.length.astype(np.int64),
        aggregates=np.column_stack([batch.aggregates[a] for a in AGGREGATE_NAMES]).astype(np.float32),
        stage=np.zeros(n, dtype=np.int64),
        targets={t: np.zeros(n, dtype=np.float32) for t in DEFAULT_TARGETS},
        next_items=[np.array([idx(i) for i in nexts.get(c, [])], dtype=np.int64) for c in customers],
        logged_action=np.full(n, -1, dtype=np.int64),
        logged_propensity=nan.copy(),
        outcome=nan.astype(np.float32),
        unsubscribed=nan.astype(np.float32),
        n_items=N_ITEMS,
    )


def bought(customer: str, *items_by_day: tuple[str, Sequence[str]]) -> list[tuple]:
    """Purchase events: each (timestamp, items) one purchase per item, a minute apart."""
    return [
        (customer, pd.Timestamp(ts) + pd.Timedelta(minutes=i), "purchase", item, 10.0)
        for ts, items in items_by_day
        for i, item in enumerate(items)
    ]


# -- TIFU-KNN ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_baskets() -> FeatureData:
    """Customer a: B1 = {I1} on Mon 5 Jan (I1 bought twice, a view between); B2 = {I1, I2} on Tue 6 Jan
    (an e-mail between); B3 = {I3} on Tue 13 Jan (the same weekday a week later). Customer b: I1 at 23:50
    and I2 at 00:10 the next day: two baskets 20 minutes apart."""
    ev = events(
        ("a", "2026-01-05 10:00", "purchase", "I1", 5.0),
        ("a", "2026-01-05 10:30", "product_view", "I2"),
        ("a", "2026-01-05 11:00", "purchase", "I1", 5.0),
        ("a", "2026-01-06 09:00", "purchase", "I1", 5.0),
        ("a", "2026-01-06 12:00", "email_sent", None, None, "cross_sell"),
        ("a", "2026-01-06 20:00", "purchase", "I2", 5.0),
        ("a", "2026-01-13 08:00", "purchase", "I3", 5.0),
        ("b", "2026-01-06 23:50", "purchase", "I1", 5.0),
        ("b", "2026-01-07 00:10", "purchase", "I2", 5.0),
    )
    return encoded(ev)


@pytest.mark.parametrize(
    ("group_size", "expected"),
    [
        # m = 2: groups {B3, B2} and {B1}; K = 2. B3: 1/2 * 1/2; B2: 0.5/2 * 1/2; B1: 1/1 * 0.6/2.
        (2, {"I1": 0.125 + 0.3, "I2": 0.125, "I3": 0.25}),
        # m = 1: every basket its own group, K = 3: B3 1/3, B2 0.6/3, B1 0.36/3 (r_b plays no part).
        (1, {"I1": 0.2 + 0.12, "I2": 0.2, "I3": 1 / 3}),
        # m = 3: one group of 3, K = 1: B3 1/3, B2 0.5/3, B1 0.25/3.
        (3, {"I1": 0.5 / 3 + 0.25 / 3, "I2": 0.5 / 3, "I3": 1 / 3}),
    ],
)
def test_personal_vector_of_three_baskets_by_hand(
    three_baskets: FeatureData, group_size: int, expected: dict[str, float]
) -> None:
    u = personal_vectors(three_baskets, N_ITEMS, 0.5, 0.6, group_size).toarray()
    want = np.zeros(N_ITEMS)
    for item, value in expected.items():
        want[idx(item)] = value
    np.testing.assert_allclose(u[0], want, atol=1e-12)


def test_midnight_separates_baskets_however_close(three_baskets: FeatureData) -> None:
    u = personal_vectors(three_baskets, N_ITEMS, 1.0, 0.5, 1).toarray()[1]
    # Two baskets, one group each (K = 2): I2 the latest 1/2, I1 0.5/2; one basket would give 1 and 1.
    assert u[idx("I2")] == pytest.approx(0.5)
    assert u[idx("I1")] == pytest.approx(0.25)


def test_browsing_counts_only_with_a_browse_weight() -> None:
    data = encoded(
        events(
            ("c", "2026-01-05 10:00", "product_view", "I1"),
            ("c", "2026-01-05 10:05", "purchase", "I1", 5.0),
            ("c", "2026-01-05 10:10", "add_to_cart", "I2"),
            ("c", "2026-01-06 10:00", "product_view", "I3"),
        )
    )
    # Purchases only: one basket {I1}.
    only = personal_vectors(data, N_ITEMS, 0.5, 0.6, 2).toarray()[0]
    assert np.flatnonzero(only).tolist() == [idx("I1")]
    assert only[idx("I1")] == pytest.approx(1.0)
    # Browse weight 0.5: {I1: 1, I2: 0.5} on the 5th (I1 at its purchase's weight) and {I3: 0.5} on the
    # 6th, one group of two: the 6th at 1/2, the 5th at 0.5/2.
    both = personal_vectors(data, N_ITEMS, 0.5, 0.6, 2, browse_weight=0.5).toarray()[0]
    want = {idx("I1"): 0.25, idx("I2"): 0.125, idx("I3"): 0.25}
    assert {int(i): both[i] for i in np.flatnonzero(both)} == pytest.approx(want)


def test_no_purchases_give_an_empty_vector() -> None:
    data = encoded(events(("c", "2026-01-05 10:00", "product_view", "I1")))
    assert personal_vectors(data, N_ITEMS, 0.9, 0.7, 3).nnz == 0


def tifu(**grids: Sequence[float]) -> TIFUKNN:
    params: dict = dict(
        neighbours_grid=(1,), alpha_grid=(1.0,), within_decay_grid=(0.9,), group_decay_grid=(0.7,),
        group_size_grid=(2,), popularity_weeks_grid=(None,),
    )  # fmt: skip
    params.update(grids)
    return TIFUKNN(**params)


@pytest.fixture(scope="module")
def shop_rows() -> FeatureData:
    """Training customers: A bought {I1, I2} twice, B {I1, I2, I5}, C {I4}; everybody next bought I9,
    the most popular item."""
    ev = events(
        *bought("A", ("2026-01-05 10:00", ["I1", "I2"]), ("2026-01-12 10:00", ["I1", "I2"])),
        *bought("B", ("2026-01-06 10:00", ["I1", "I2", "I5"])),
        *bought("C", ("2026-01-07 10:00", ["I4"])),
    )
    return encoded(ev, next_items={c: ["I9"] for c in "ABC"})


def test_with_alpha_one_the_ranking_is_the_decayed_own_frequency(shop_rows: FeatureData) -> None:
    query = encoded(
        events(
            *bought("Q", ("2026-01-05 10:00", ["I3", "I4"]), ("2026-01-06 10:00", ["I4"])),
            *bought("Q", ("2026-01-08 10:00", ["I6", "I4"]), ("2026-01-09 10:00", ["I7"])),
        )
    )
    model = tifu().fit(shop_rows, shop_rows)
    u = personal_vectors(query, N_ITEMS, 0.9, 0.7, 2).toarray()[0]
    own = np.flatnonzero(u)
    by_value = own[np.lexsort((own, -u[own]))]
    assert len(set(u[own])) == len(own)  # distinct values: the order is the vector's, not a tie-break
    top = model.predict(query, k=6).top_items
    assert top is not None
    assert top[0, : len(own)].tolist() == by_value.tolist()
    assert top[0, len(own)] == idx("I9")  # then popularity


def test_a_neighbours_items_appear_when_alpha_is_below_one(shop_rows: FeatureData) -> None:
    query = encoded(events(*bought("Q", ("2026-01-05 10:00", ["I2"]))))
    alone = tifu().fit(shop_rows, shop_rows).predict(query, k=3).top_items
    assert alone is not None
    assert alone[0].tolist()[:2] == [idx("I2"), idx("I9")]  # own item, then the most popular
    # A (I1 and I2 at 0.95 each: cosine 0.71) is nearer than B (cosine 0.58): 0.5 * own + 0.5 * A puts
    # I2 first (0.975), then A's I1 (0.475) before the popular I9.
    mixed = tifu(alpha_grid=(0.5,)).fit(shop_rows, shop_rows).predict(query, k=3).top_items
    assert mixed is not None
    assert mixed[0].tolist() == [idx("I2"), idx("I1"), idx("I9")]
    # Up to three neighbours: A and B (C shares nothing and never counts), so B's I5 joins.
    two = tifu(alpha_grid=(0.5,), neighbours_grid=(3,)).fit(shop_rows, shop_rows).predict(query, k=4)
    assert two.top_items is not None
    assert two.top_items[0].tolist() == [idx("I2"), idx("I1"), idx("I5"), idx("I9")]


def test_a_customer_is_never_their_own_neighbour(shop_rows: FeatureData) -> None:
    pool = personal_vectors(shop_rows, N_ITEMS, 0.9, 0.7, 2)
    nearest = nearest_customers(pool, pool, 3, exclude=np.arange(3))
    assert nearest.tolist() == [[1, -1, -1], [0, -1, -1], [-1, -1, -1]]  # C shares no item with anyone
    # The neighbour part is the mean of the neighbours found (A and B for a query near both), not a sum.
    mean = neighbour_mean(np.array([[0, 1, -1], [-1, -1, -1]]), 3, pool).toarray()
    np.testing.assert_allclose(mean[0], (pool[0].toarray()[0] + pool[1].toarray()[0]) / 2)
    assert not mean[1].any()


@pytest.fixture(scope="module")
def random_rows() -> tuple[FeatureData, FeatureData]:
    """Random purchase days over 30 customers: a training and a later validation cutoff."""
    rng = np.random.default_rng(4)
    rows = []
    for c in range(30):
        for day in np.sort(rng.choice(40, size=int(rng.integers(1, 6)), replace=False)):
            ts = pd.Timestamp("2026-01-01 09:00") + pd.Timedelta(days=int(day))
            basket = rng.choice(ITEMS, size=int(rng.integers(1, 4)), replace=False).tolist()
            rows += bought(f"C{c}", (str(ts), basket))
    ev = events(*rows)
    nexts = {f"C{c}": rng.choice(ITEMS, size=2, replace=False).tolist() for c in range(30)}
    return encoded(ev, nexts, at="2026-01-25"), encoded(ev, nexts, at="2026-02-15")


def test_tifu_knn_chooses_on_validation_and_round_trips(
    random_rows: tuple[FeatureData, FeatureData], tmp_path: Path
) -> None:
    train, valid = random_rows
    model = TIFUKNN(neighbours_grid=(2, 5), alpha_grid=(0.5, 1.0), group_size_grid=(1, 3)).fit(train, valid)
    assert len(model.validation_) == 2 * 2 * 2 * 2 * 2 * 2  # k, alpha, r_b, r_g, m, browse
    best = max(model.validation_.values())
    chosen = f"k={model.neighbours_},alpha={model.alpha_},r_b={model.within_decay_}"
    rest = f"r_g={model.group_decay_},m={model.group_size_},browse={model.browse_weight_}"
    assert model.validation_[f"{chosen},{rest}"] == best
    top = model.predict(valid, k=50).top_items
    assert top is not None
    assert top.shape == (len(valid), len(ITEMS))  # the whole catalogue, each item once
    assert all(sorted(row) == list(range(FIRST, N_ITEMS)) for row in top.tolist())
    model.save(tmp_path / "tifu")
    again = load_baseline(tmp_path / "tifu")
    assert isinstance(again, TIFUKNN)
    assert np.array_equal(np.asarray(again.predict(valid, k=50).top_items), top)
    refit = TIFUKNN(neighbours_grid=(2, 5), alpha_grid=(0.5, 1.0), group_size_grid=(1, 3)).fit(train, valid)
    assert np.array_equal(np.asarray(refit.predict(valid, k=50).top_items), top)


def test_tifu_knn_with_alpha_below_one_round_trips(
    random_rows: tuple[FeatureData, FeatureData], tmp_path: Path
) -> None:
    train, valid = random_rows
    model = tifu(alpha_grid=(0.3,), neighbours_grid=(4,)).fit(train, valid)
    model.save(tmp_path / "t")
    expected = np.asarray(model.predict(valid, k=9).top_items)
    assert np.array_equal(np.asarray(load_baseline(tmp_path / "t").predict(valid, k=9).top_items), expected)
    assert not np.array_equal(np.asarray(tifu().fit(train, valid).predict(valid, k=9).top_items), expected)


def test_an_empty_grid_is_refused_naming_it(random_rows: tuple[FeatureData, FeatureData]) -> None:
    with pytest.raises(ValueError, match="alpha_grid"):
        tifu(alpha_grid=()).fit(*random_rows)


# -- logistic regression on recency and frequency ----------------------------------------------------------


def rf_rows(n: int, seed: int, sent: bool = False) -> FeatureData:
    """Rows where buying falls with recency and churn rises with it; frequency adds a little."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, len(AGGREGATE_NAMES)), dtype=np.float32)
    recency = rng.exponential(30, n)
    purchases = rng.poisson(3, n)
    x[:, AGGREGATE_NAMES.index("recency_days")] = recency
    x[:, AGGREGATE_NAMES.index("n_purchases")] = purchases
    x[:, AGGREGATE_NAMES.index("monetary")] = rng.normal(size=n)  # noise the model must not need
    logit = 2.0 - 1.2 * np.log1p(recency) + 0.4 * np.log1p(purchases)
    p_buy = 1 / (1 + np.exp(-logit))
    nan = np.full(n, np.nan)
    data = FeatureData(
        customer_id=np.array([f"C{i}" for i in range(n)], dtype=object),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        tokens={"item_id": np.zeros((n, 1), dtype=np.int64)},
        length=np.zeros(n, dtype=np.int64),
        aggregates=x,
        stage=np.zeros(n, dtype=np.int64),
        targets={
            "purchase_7d": (rng.random(n) < p_buy).astype(np.float32),
            "purchase_30d": (rng.random(n) < np.minimum(1, 1.5 * p_buy)).astype(np.float32),
            "churn_30d": (rng.random(n) < 1 - p_buy).astype(np.float32),
        },
        next_items=[np.zeros(0, dtype=np.int64)] * n,
        logged_action=np.full(n, ACTIONS.index("cross_sell") if sent else -1, dtype=np.int64),
        logged_propensity=np.full(n, 0.5) if sent else nan.copy(),
        outcome=nan.astype(np.float32),
        unsubscribed=((rng.random(n) < 0.02 * np.log1p(recency)) if sent else nan).astype(np.float32),
        n_items=N_ITEMS,
    )
    return data


def true_purchase_probability(data: FeatureData) -> np.ndarray:
    """The probability `rf_rows` draws purchase_7d with."""
    recency = data.aggregates[:, AGGREGATE_NAMES.index("recency_days")].astype(np.float64)
    purchases = data.aggregates[:, AGGREGATE_NAMES.index("n_purchases")].astype(np.float64)
    return 1 / (1 + np.exp(-(2.0 - 1.2 * np.log1p(recency) + 0.4 * np.log1p(purchases))))


@pytest.fixture(scope="module")
def logistic() -> tuple[LogisticRF, FeatureData]:
    model = LogisticRF().fit(rf_rows(4000, 1), rf_rows(2000, 2))
    return model, rf_rows(3000, 3)


def test_logistic_ranks_nearly_as_well_as_the_true_probability(
    logistic: tuple[LogisticRF, FeatureData],
) -> None:
    model, test = logistic
    pred = model.predict(test)
    oracle = true_purchase_probability(test)
    for target, sign in (("purchase_7d", 1), ("purchase_30d", 1), ("churn_30d", -1)):
        y = test.targets[target]
        best = roc_auc_score(y, sign * oracle)
        got = roc_auc_score(y, pred.propensity[target])
        assert best > 0.75
        assert got > best - 0.01
    # C was chosen among the whole grid on the validation log loss.
    head = model.heads_["purchase_7d"]
    assert set(head["validation"]) == {str(c) for c in model.c_grid}
    assert head["validation"][str(head["C"])] == min(head["validation"].values())
    assert pred.stage_proba is None
    assert pred.top_items is None
    assert pred.action_outcome is None


def test_logistic_equals_sklearns_pipeline(logistic: tuple[LogisticRF, FeatureData]) -> None:
    model, test = logistic
    train = rf_rows(4000, 1)
    cols = [AGGREGATE_NAMES.index("recency_days"), AGGREGATE_NAMES.index("n_purchases")]
    c = model.heads_["churn_30d"]["C"]
    pipe = make_pipeline(
        FunctionTransformer(np.log1p), StandardScaler(), LogisticRegression(C=c, max_iter=1000)
    )
    pipe.fit(train.aggregates[:, cols].astype(np.float64), train.targets["churn_30d"])
    expected = pipe.predict_proba(test.aggregates[:, cols].astype(np.float64))[:, 1]
    np.testing.assert_allclose(model.predict(test).propensity["churn_30d"], expected, atol=1e-6)


def test_logistic_leaves_out_heads_without_labels(logistic: tuple[LogisticRF, FeatureData]) -> None:
    model, test = logistic
    assert "unsubscribe" not in model.heads_  # no logged send: no label
    assert "0 labelled training rows" in model.skipped_["unsubscribe"]
    result = evaluate(model.predict(test), test, catalogue_size=len(ITEMS), n_boot=0, name="logistic_rf")
    assert result.metrics["purchase_7d/roc_auc"] > 0.75
    assert not any(k.startswith(("unsubscribe/", "stage/", "rec/")) for k in result.metrics)
    # One class only: left out, saying so; with sends the unsubscribe head is fitted.
    one_class = rf_rows(500, 4, sent=True)
    one_class.targets["churn_30d"] = np.zeros(500, dtype=np.float32)
    fitted = LogisticRF().fit(one_class, rf_rows(300, 5, sent=True))
    assert "classes [0.0]" in fitted.skipped_["churn_30d"]
    assert set(fitted.predict(test).propensity) == {"purchase_7d", "purchase_30d", "unsubscribe"}


def test_logistic_round_trips_and_refuses_an_unknown_feature(
    logistic: tuple[LogisticRF, FeatureData], tmp_path: Path
) -> None:
    model, test = logistic
    model.save(tmp_path / "lr")
    again = load_baseline(tmp_path / "lr")
    assert isinstance(again, LogisticRF)
    for name, p in model.predict(test).propensity.items():
        assert np.array_equal(again.predict(test).propensity[name], p)
    with pytest.raises(ValueError, match="recency"):
        LogisticRF(features=("recency",)).fit(test, test)


# -- registration ------------------------------------------------------------------------------------------


def test_both_are_default_baselines_and_loadable() -> None:
    names = [s.name for s in all_baselines()]
    assert {"tifu_knn", "logistic_rf"} <= set(names)
    assert {"TIFUKNN", "LogisticRF"} <= set(BASELINES)
    chosen = all_baselines(
        {"baselines": ["tifu_knn", "logistic_rf"], "tifu_alpha_grid": [1.0], "logistic_c_grid": [2.0]}
    )
    assert isinstance(chosen[0], TIFUKNN)
    assert chosen[0].alpha_grid == (1.0,)
    assert isinstance(chosen[1], LogisticRF)
    assert chosen[1].c_grid == (2.0,)


def test_both_on_a_built_random_shop(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A features build of a tiny random shop -> fit -> predict -> evaluate, within a modest time."""
    shop = write_events(
        random_events(200, 12_000, seed=5, days=150), tmp_path_factory.mktemp("s") / "e.parquet"
    )
    out = tmp_path_factory.mktemp("features")
    build_features(shop, out, BuildConfig(n_buckets=2, workers=1), progress=False)
    build = FeatureBuild.open(out)
    train, valid, test = build.split("train"), build.split("valid"), build.split("test")
    for scorer in all_baselines({"baselines": ["tifu_knn", "logistic_rf"]}):
        started = time.perf_counter()
        pred = scorer.fit(train, valid).predict(test, k=20)
        assert time.perf_counter() - started < 20
        result = evaluate(pred, test, catalogue_size=len(build.catalogue), n_boot=0, name=scorer.name)
        if scorer.name == "tifu_knn":
            assert pred.top_items is not None
            assert pred.top_items.shape == (len(test), min(20, build.n_items - FIRST))
            assert all(len(set(row)) == len(row) for row in pred.top_items.tolist())
            assert np.isfinite(result.metrics["rec/ndcg_at_10"])
        else:
            assert set(pred.propensity) <= {*build.targets, "unsubscribe"}
            assert all(
                np.isfinite(result.metrics[f"{t}/roc_auc"]) for t in pred.propensity if t in build.targets
            )
