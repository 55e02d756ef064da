"""The BG/NBD buy-till-you-die baseline, on customers simulated from a BG/NBD process of known parameters.

The simulation follows the model of Fader, Hardie & Lee (2005): each customer has a purchase rate
lambda ~ Gamma(r, rate alpha) and a dropout probability p ~ Beta(a, b); from the first purchase (time 0) the
waiting times between purchases are exponential, and after each repeat purchase the customer leaves for good
with probability p. What happens in (T, T + h] is simulated from the same path, so the labels of a row are
draws of exactly what the model predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from features.encoder import AGGREGATE_NAMES
from features.schema import ACTIONS
from predictor.served_heads import rfm_inputs
from training.baselines.bgnbd import BGNBD, latest_rows
from training.data import FeatureData
from training.metrics import roc_auc

N_ITEMS = 5
TRUTH = {"r": 0.5, "alpha": 40.0, "a": 0.8, "b": 2.5}  # days: about 1 purchase in 80 days while alive


def simulate(n: int, seed: int, truth: dict[str, float] = TRUTH) -> FeatureData:
    """n customers observed for T ~ U(30, 365) days since their first purchase; labels over the next 7 / 30
    days. churn_30d is filled with noise: the baseline must leave it out (it means "no activity")."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(truth["r"], 1.0 / truth["alpha"], n)
    p = rng.beta(truth["a"], truth["b"], n)
    t_obs = rng.uniform(30, 365, n)
    x, t_x, clock = np.zeros(n, dtype=np.int64), np.zeros(n), np.zeros(n)
    alive, running, after_t = np.ones(n, dtype=bool), np.ones(n, dtype=bool), np.full(n, np.inf)
    while running.any():
        i = np.flatnonzero(running)
        step = clock[i] + rng.exponential(1.0 / lam[i])
        beyond = step > t_obs[i]
        after_t[i[beyond]] = step[beyond]  # the first purchase after T, if still alive (memoryless)
        running[i[beyond]] = False
        j = i[~beyond]
        x[j] += 1
        t_x[j] = clock[j] = step[~beyond]
        leaves = rng.random(len(j)) < p[j]
        alive[j[leaves]] = running[j[leaves]] = False
    agg = np.zeros((n, len(AGGREGATE_NAMES)), dtype=np.float32)
    agg[:, AGGREGATE_NAMES.index("n_purchase_days")] = x + 1
    agg[:, AGGREGATE_NAMES.index("n_purchases")] = x + 1
    agg[:, AGGREGATE_NAMES.index("tenure_days")] = t_obs
    agg[:, AGGREGATE_NAMES.index("days_since_last_purchase")] = t_obs - t_x
    bought = {h: (alive & (after_t <= t_obs + h)).astype(np.float32) for h in (7, 30)}
    nan = np.full(n, np.nan)
    return FeatureData(
        customer_id=np.array([f"C{seed}-{i}" for i in range(n)], dtype=object),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        tokens={"item_id": np.zeros((n, 1), dtype=np.int64)},
        length=np.zeros(n, dtype=np.int64),
        aggregates=agg,
        stage=np.zeros(n, dtype=np.int64),
        targets={
            "purchase_7d": bought[7],
            "purchase_30d": bought[30],
            "churn_30d": (rng.random(n) < 0.5).astype(np.float32),
        },
        next_items=[np.zeros(0, dtype=np.int64)] * n,
        logged_action=np.full(n, ACTIONS.index("cross_sell"), dtype=np.int64),
        logged_propensity=np.full(n, 0.5),
        outcome=nan.astype(np.float32),
        unsubscribed=(rng.random(n) < 0.05).astype(np.float32),
        n_items=N_ITEMS,
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[BGNBD, FeatureData]:
    """Fitted on 20,000 customers, calibrated on 5,000; 20,000 held-out customers to check it on."""
    model = BGNBD(calibration="platt").fit(simulate(20_000, 1), simulate(5_000, 2))
    return model, simulate(20_000, 3)


def test_rfm_inputs_follow_the_librarys_conventions() -> None:
    """frequency = repeat purchase days, T = age, recency = age at the last purchase (0 without a repeat)."""
    agg = np.zeros((4, len(AGGREGATE_NAMES)), dtype=np.float32)
    col = AGGREGATE_NAMES.index
    # a repeat buyer; a one-time buyer; a customer who never bought; a last purchase beyond the 365-day cap
    agg[:, col("n_purchase_days")] = [3, 1, 0, 2]
    agg[:, col("tenure_days")] = [100, 50, 20, 365]
    agg[:, col("days_since_last_purchase")] = [10, 50, 365, 365]
    frequency, recency, t = rfm_inputs(agg)
    assert frequency.tolist() == [2, 0, 0, 1]
    assert t.tolist() == [100, 50, 20, 365]
    assert recency.tolist() == [90, 0, 0, 0]


def test_the_fit_reads_each_customers_latest_row() -> None:
    data = simulate(6, 4)
    data = data.subset(np.array([0, 0, 1, 2, 2, 2, 3, 4, 5]))
    data.cutoff_ms[:] = [1, 5, 1, 9, 3, 4, 1, 1, 1]
    assert latest_rows(data).tolist() == [1, 2, 3, 6, 7, 8]


def test_the_fitted_parameters_are_close_to_the_truth(fitted: tuple[BGNBD, FeatureData]) -> None:
    model, _ = fitted
    assert model.n_customers_ == 20_000
    assert model.params_["r"] == pytest.approx(TRUTH["r"], rel=0.1)
    assert model.params_["alpha"] == pytest.approx(TRUTH["alpha"], rel=0.15)
    assert model.params_["a"] == pytest.approx(TRUTH["a"], rel=0.25)
    assert model.params_["b"] == pytest.approx(TRUTH["b"], rel=0.25)


def test_raw_purchase_probability_matches_the_rate_of_held_out_customers(
    fitted: tuple[BGNBD, FeatureData],
) -> None:
    """1 - P(no purchase in h days) against the share that bought, overall, for one-time buyers (frequency
    0, where pymc-marketing's `expected_probability_no_purchase` is off) and per decile of the prediction."""
    model, test = fitted
    frequency, _, _ = rfm_inputs(test.aggregates)
    for h in (7, 30):
        raw = 1 - model.probability_no_purchase(test, h)
        label = test.targets[f"purchase_{h}d"]
        assert raw.mean() == pytest.approx(label.mean(), abs=0.01)
        once = frequency == 0
        assert raw[once].mean() == pytest.approx(label[once].mean(), abs=0.015)
        deciles = np.quantile(raw, np.linspace(0, 1, 11))
        which = np.clip(np.searchsorted(deciles, raw, side="right") - 1, 0, 9)
        for d in range(10):
            assert raw[which == d].mean() == pytest.approx(label[which == d].mean(), abs=0.035), (h, d)
        assert roc_auc(label, raw) > 0.75


def test_closed_forms_agree_with_pymc_marketing(fitted: tuple[BGNBD, FeatureData]) -> None:
    """P(alive) everywhere, and P(no purchase) for repeat buyers, equal the library's methods at the same
    parameters (for one-time buyers the library's P(no purchase) lacks the Hardie (2019) eq. 34 indicator)."""
    import pandas as pd
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel

    model, test = fitted
    frequency, recency, t = rfm_inputs(test.aggregates[:500])
    frame = pd.DataFrame({"customer_id": np.arange(500), "frequency": frequency, "recency": recency, "T": t})
    library = BetaGeoModel(model_config={k: Prior("HalfFlat") for k in TRUTH})
    posterior = library.fit(data=frame, method="map", progressbar=False)["posterior"]
    for name, value in model.params_.items():
        posterior[name].values[...] = value  # the predictive methods read the fit result in place
    ours = test.subset(np.arange(500))
    alive = library.expected_probability_alive(data=frame).values.ravel()
    np.testing.assert_allclose(model.probability_alive(ours), alive, rtol=1e-9)
    repeat = frequency > 0
    none_30 = library.expected_probability_no_purchase(t=30, data=frame).values.ravel()
    np.testing.assert_allclose(model.probability_no_purchase(ours, 30)[repeat], none_30[repeat], rtol=1e-9)


def test_heads_are_the_purchase_windows_and_churn_is_left_out(fitted: tuple[BGNBD, FeatureData]) -> None:
    model, test = fitted
    pred = model.predict(test)
    assert set(pred.propensity) == {"purchase_7d", "purchase_30d"}
    assert "no activity" in model.skipped_["churn_30d"]
    assert "unsubscribe" not in pred.propensity
    # Longer windows hold more purchases; probabilities stay inside (0, 1).
    assert np.all(pred.propensity["purchase_30d"] >= pred.propensity["purchase_7d"] - 1e-9)
    assert all(np.all((p > 0) & (p < 1)) for p in pred.propensity.values())


def test_platt_calibration_of_a_well_specified_model_is_nearly_the_identity(
    fitted: tuple[BGNBD, FeatureData],
) -> None:
    model, test = fitted
    for target in ("purchase_7d", "purchase_30d"):
        calibrator = model.heads_[target]["calibrator"]
        assert calibrator is not None
        assert calibrator.method == "platt"
        assert calibrator.x[0] == pytest.approx(1.0, abs=0.15)
        assert calibrator.y[0] == pytest.approx(0.0, abs=0.3)
        raw = 1 - model.probability_no_purchase(test, model.heads_[target]["horizon_days"])
        assert roc_auc(test.targets[target], model.predict(test).propensity[target]) == pytest.approx(
            roc_auc(test.targets[target], raw), abs=1e-6
        )


def test_save_load_round_trip(fitted: tuple[BGNBD, FeatureData], tmp_path: Path) -> None:
    model, test = fitted
    model.save(tmp_path / "bg")
    meta = json.loads((tmp_path / "bg" / "meta.json").read_text())
    assert meta["kind"] == "BGNBD"
    assert set(meta["fitted"]["params"]) == set(TRUTH)
    again = BGNBD.load(tmp_path / "bg")
    assert again.params_ == model.params_
    before, after = model.predict(test).propensity, again.predict(test).propensity
    assert before.keys() == after.keys()
    for target in before:
        np.testing.assert_array_equal(before[target], after[target])


def test_without_repeat_buyers_there_is_no_head() -> None:
    data = simulate(300, 5)
    data.aggregates[:, AGGREGATE_NAMES.index("n_purchase_days")] = 1  # nobody bought twice
    model = BGNBD().fit(data, simulate(100, 6))
    assert model.heads_ == {}
    assert model.predict(data).propensity == {}
    assert "repeat" in model.skipped_["purchase_7d"]


def test_bad_settings_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="calibration"):
        BGNBD(calibration="sigmoid").fit(simulate(100, 7), simulate(100, 8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_customers"):
        BGNBD(min_customers=0).fit(simulate(100, 7), simulate(100, 8))


def test_a_build_without_purchase_windows_fits_nothing() -> None:
    data = simulate(300, 9)
    data.targets = {"churn_30d": data.targets["churn_30d"]}
    model = BGNBD().fit(data, data)
    assert model.params_ == {}
    assert model.predict(data).propensity == {}
    assert set(model.skipped_) == {"churn_30d", "unsubscribe"}
