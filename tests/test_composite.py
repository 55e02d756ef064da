"""The composite model: per head, the scorer that won on the validation window, served as chosen.

`training.composite.choose_heads` picks, per head, the best validation metric among the network and the
baselines that can serve it (the network on ties); `predictor.composite.Composite` replaces exactly those
heads, and survives the predictor's save and load, boosters included.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features.schema import ACTIONS, STAGES
from predictor.composite import ACTION, NETWORK, Composite
from predictor.predictor import Predictor, aggregate_matrix
from predictor.served_heads import AggregateHead, Linear
from training.baselines import LightGBMAggregates, LogisticRF
from training.composite import choose_heads
from training.data import FeatureBuild, FeatureData
from training.interface import Predictions
from training.sequence import SequenceScorer


@dataclass
class OneHead:
    """A baseline that serves one head only, by a given model."""

    head: str
    model: AggregateHead
    name: str = "one_head"

    def served(self, head: str) -> AggregateHead:
        if head != self.head:
            raise KeyError(head)
        return self.model


def _network(valid: FeatureData, purchase: np.ndarray, churn: np.ndarray) -> Predictions:
    n = len(valid)
    return Predictions(
        stage_proba=np.full((n, len(STAGES)), 1.0 / len(STAGES)),
        propensity={"purchase_5d": purchase, "churn_10d": churn},
        action_outcome=np.full((n, len(ACTIONS)), 0.1),
    )


def test_each_head_goes_to_the_scorer_best_on_validation(short_build: FeatureBuild) -> None:
    valid = short_build.split("valid")
    purchase, churn = valid.targets["purchase_5d"], valid.targets["churn_10d"]
    assert 0 < purchase.mean() < 1
    assert 0 < churn.mean() < 1
    # A column of the aggregates that is the purchase label: a regression on it ranks purchase perfectly.
    valid.aggregates[:, 0] = purchase
    perfect = AggregateHead(linear=Linear([0], [0.0], [1.0], [5.0], -2.0))
    rng = np.random.default_rng(0)
    # The network: noise for purchase, the churn label itself for churn.
    network = _network(valid, rng.random(len(valid)), churn.astype(np.float64))

    composite = choose_heads(network, {"one_head": OneHead("purchase_5d", perfect)}, valid)

    assert composite.sources["purchase_5d"] == "one_head"
    assert composite.sources["churn_10d"] == NETWORK  # the baseline has no churn head
    assert composite.sources["stage"] == NETWORK
    assert composite.sources[ACTION] == NETWORK
    assert set(composite.heads) == {"purchase_5d"}
    evidence = composite.evidence["purchase_5d"]
    assert evidence["one_head"] == pytest.approx(1.0)
    assert evidence[NETWORK] == pytest.approx(roc_auc_score(purchase, network.propensity["purchase_5d"]))


def test_the_network_keeps_a_head_on_a_tie(short_build: FeatureBuild) -> None:
    valid = short_build.split("valid")
    purchase = valid.targets["purchase_5d"]
    valid.aggregates[:, 0] = purchase
    perfect = AggregateHead(linear=Linear([0], [0.0], [1.0], [5.0], -2.0))
    network = _network(valid, purchase.astype(np.float64), valid.targets["churn_10d"].astype(np.float64))
    composite = choose_heads(network, {"one_head": OneHead("purchase_5d", perfect)}, valid)
    assert composite.sources["purchase_5d"] == NETWORK  # both rank perfectly: the network stays
    assert composite.heads == {}


def test_a_baseline_takes_a_head_only_when_better_beyond_noise(short_build: FeatureBuild) -> None:
    """A baseline ahead of the network on one validation row only is not clearly better: the network keeps
    the head (the validation window also early-stopped the baselines, so a small edge there is optimistic)."""
    valid = short_build.split("valid")
    purchase = valid.targets["purchase_5d"].astype(np.float64)
    rng = np.random.default_rng(2)
    flip = rng.random(len(valid)) < 0.2
    network_scores = np.where(flip, 1 - purchase, purchase) + 0.01 * rng.random(len(valid))
    wrong = np.flatnonzero(np.abs(network_scores - purchase) > 0.5)
    baseline_scores = network_scores.copy()
    baseline_scores[wrong[0]] = purchase[wrong[0]] + 0.005  # right where the network is wrong, once
    valid.aggregates[:, 0] = baseline_scores  # the regression is a monotone map of them
    almost = AggregateHead(linear=Linear([0], [0.0], [1.0], [1.0], 0.0))
    network = _network(valid, network_scores, valid.targets["churn_10d"].astype(np.float64))
    composite = choose_heads(network, {"one_head": OneHead("purchase_5d", almost)}, valid)
    evidence = composite.evidence["purchase_5d"]
    assert evidence["one_head"] > evidence[NETWORK]  # ahead on the point value ...
    point, lo, _ = evidence["one_head - sequence"]
    assert point > 0
    assert lo <= 0  # ... but not beyond noise
    assert composite.sources["purchase_5d"] == NETWORK


def test_choice_against_real_baselines_follows_the_paired_intervals(short_build: FeatureBuild) -> None:
    train, valid = short_build.split("train"), short_build.split("valid")
    baselines = {
        "lightgbm_aggregates": LightGBMAggregates(max_rounds=30, num_threads=1).fit(train, valid),
        "logistic_rf": LogisticRF().fit(train, valid),
    }
    rng = np.random.default_rng(1)
    network = _network(valid, rng.random(len(valid)), rng.random(len(valid)))
    composite = choose_heads(network, baselines, valid)
    for head, source in composite.sources.items():
        evidence = composite.evidence[head]
        clear = {n: evidence[n] for n in baselines if f"{n} - {NETWORK}" in evidence
                 and evidence[f"{n} - {NETWORK}"][1] > 0}  # fmt: skip
        if clear:
            assert source == max(clear, key=lambda n: clear[n]), head
        else:
            assert source == NETWORK, head
    # Every baseline's interval against the network is in the evidence (the tiny world's validation window
    # is too small for its baselines to beat even random propensities clearly).
    assert "logistic_rf - sequence" in composite.evidence["purchase_5d"]


def test_apply_replaces_exactly_the_chosen_heads(short_build: FeatureBuild) -> None:
    valid = short_build.split("valid")
    head = AggregateHead(linear=Linear([1], [0.0], [1.0], [0.3], -1.0))
    composite = Composite(sources={"churn_10d": "x"}, heads={"churn_10d": head})
    network = _network(valid, np.full(len(valid), 0.2), np.full(len(valid), 0.4))
    served = composite.apply(network, valid.aggregates)
    np.testing.assert_array_equal(served.propensity["purchase_5d"], network.propensity["purchase_5d"])
    np.testing.assert_allclose(served.propensity["churn_10d"], head.predict(valid.aggregates))
    assert served.stage_proba is network.stage_proba
    assert served.action_outcome is network.action_outcome
    assert network.propensity["churn_10d"][0] == 0.4  # the network's answer is not modified in place


def test_a_composite_predictor_round_trips_with_its_boosters(
    short_build: FeatureBuild, short_scorer: SequenceScorer, tmp_path: Path
) -> None:
    train, valid, test = short_build.split("train"), short_build.split("valid"), short_build.split("test")
    lgbm = LightGBMAggregates(max_rounds=20, num_threads=1).fit(train, valid)
    heads = {"stage": lgbm.served("stage"), **{f"outcome_{a}": lgbm.served(f"outcome_{a}") for a in ACTIONS}}
    composite = Composite(
        sources={"stage": "lightgbm_aggregates", ACTION: "lightgbm_aggregates"}, heads=heads
    )
    unit = short_scorer.to_predictor(short_build.vocab)
    unit.composite = composite
    unit.save(tmp_path / "unit")
    loaded = Predictor.load(tmp_path / "unit")
    assert loaded.composite is not None
    assert loaded.composite.needs_lightgbm

    got = loaded.score_arrays(test.tokens, test.aggregates, 5, test.history)
    expected = lgbm.predict(test)
    assert got.stage_proba is not None
    assert got.action_outcome is not None
    np.testing.assert_allclose(got.stage_proba, expected.stage_proba, rtol=1e-9)
    np.testing.assert_allclose(got.action_outcome, expected.action_outcome, rtol=1e-9)
    # The heads the composite leaves to the network are the network's.
    plain = short_scorer.to_predictor(short_build.vocab).score_arrays(
        test.tokens, test.aggregates, 5, test.history
    )
    np.testing.assert_allclose(got.propensity["purchase_5d"], plain.propensity["purchase_5d"], rtol=1e-6)
    assert got.top_items is not None
    assert plain.top_items is not None
    np.testing.assert_array_equal(got.top_items, plain.top_items)


def test_aggregate_matrix_is_what_the_features_split_holds(short_build: FeatureBuild) -> None:
    """The composite reads the same aggregates online (`aggregate_matrix` of the encoder's output) as
    offline (`FeatureData.aggregates`): the column order is AGGREGATE_NAMES in both."""
    from features.encoder import AGGREGATE_NAMES, EncodedBatch

    valid = short_build.split("valid")
    columns = {name: valid.aggregates[:3, j].astype(np.float64) for j, name in enumerate(AGGREGATE_NAMES)}
    batch = EncodedBatch(values={}, length=np.zeros(3, dtype=np.int32), max_len=1, aggregates=columns)
    np.testing.assert_array_equal(aggregate_matrix(batch), valid.aggregates[:3])


def test_a_registered_composite_serves_its_heads_and_requires_lightgbm(
    short_build: FeatureBuild,
    short_scorer: SequenceScorer,
    short_shop: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through MLflow: the registered version carries the composite (boosters included), the service's
    loader answers with it, and its pip requirements name lightgbm."""
    import mlflow

    from predictor.registry import MODEL_NAME, configure, load_registered
    from tests.worlds import shop_events
    from training.registry import log_scorer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure("composite-test")
    train, valid, test = short_build.split("train"), short_build.split("valid"), short_build.split("test")
    lgbm = LightGBMAggregates(max_rounds=20, num_threads=1).fit(train, valid)
    composite = Composite(sources={"stage": "lightgbm_aggregates"}, heads={"stage": lgbm.served("stage")})
    with mlflow.start_run():
        version = log_scorer(short_scorer, short_build.vocab, shop_events(short_shop).head(20), composite)
    loaded = load_registered(MODEL_NAME, version=str(version))
    assert loaded.pyfunc.predictor.head_sources == {"stage": "lightgbm_aggregates"}
    got = loaded.pyfunc.predict_features(test, k=5)
    expected = lgbm.predict(test).stage_proba
    assert got.stage_proba is not None
    assert expected is not None
    np.testing.assert_allclose(got.stage_proba, expected, rtol=1e-9)
    requirements = Path(
        mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}/requirements.txt")
    ).read_text()
    assert "lightgbm==" in requirements
