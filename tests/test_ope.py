"""Off-policy estimators on hand-worked logs, and unbiasedness on a synthetic bandit with a known truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.policy import NO_SEND
from features.schema import ACTIONS
from training.ope import (
    LoggedBandit,
    direct_method,
    doubly_robust,
    effective_sample_size,
    estimate,
    evaluate_policy,
    importance_weights,
    ips,
    on_policy_value,
    policy_matrix,
    snips,
    true_conversion_matrix,
    true_logging_value,
    true_policy_value,
    uniform_eligible,
)

# Four logged decisions over three actions.
LOGS = LoggedBandit(
    action=np.array([0, 1, 2, 0]),
    propensity=np.array([0.5, 0.25, 0.25, 0.5]),
    reward=np.array([1.0, 0.0, 1.0, 0.0]),
    n_actions=3,
)
Q_HAT = np.array(
    [
        [0.5, 0.2, 0.1],
        [0.3, 0.3, 0.3],
        [0.1, 0.1, 0.6],
        [0.2, 0.4, 0.0],
    ]
)
DETERMINISTIC = np.array([0, 0, 2, 1])
STOCHASTIC = np.array(
    [
        [0.5, 0.5, 0.0],
        [1 / 3, 1 / 3, 1 / 3],
        [0.0, 0.0, 1.0],
        [1.0, 0.0, 0.0],
    ]
)


def test_importance_weights() -> None:
    # Deterministic: row 0 agrees (1 / 0.5 = 2), row 1 not, row 2 agrees (1 / 0.25 = 4), row 3 not.
    np.testing.assert_allclose(importance_weights(LOGS, DETERMINISTIC), [2, 0, 4, 0])
    # Stochastic: 0.5/0.5 = 1, (1/3)/0.25 = 4/3, 1/0.25 = 4, 1/0.5 = 2.
    np.testing.assert_allclose(importance_weights(LOGS, STOCHASTIC), [1, 4 / 3, 4, 2])


def test_ips_and_snips_deterministic() -> None:
    # IPS = mean(w r) = (2*1 + 0 + 4*1 + 0) / 4 = 1.5; SNIPS = 6 / (2 + 0 + 4 + 0) = 1.0.
    assert ips(LOGS, DETERMINISTIC, n_boot=0).point == pytest.approx(1.5)
    assert snips(LOGS, DETERMINISTIC, n_boot=0).point == pytest.approx(1.0)


def test_ips_and_snips_stochastic() -> None:
    # w r = 1, 0, 4, 0: IPS = 5 / 4 = 1.25; SNIPS = 5 / (1 + 4/3 + 4 + 2) = 5 / 8.3333 = 0.6.
    assert ips(LOGS, STOCHASTIC, n_boot=0).point == pytest.approx(1.25)
    assert snips(LOGS, STOCHASTIC, n_boot=0).point == pytest.approx(0.6)


def test_direct_method_and_doubly_robust_deterministic() -> None:
    # DM = mean q(x, pi(x)) = (0.5 + 0.3 + 0.6 + 0.4) / 4 = 0.45.
    assert direct_method(LOGS, DETERMINISTIC, Q_HAT, n_boot=0).point == pytest.approx(0.45)
    # Correction w (r - q(x, a)): 2 (1 - 0.5) = 1, 0, 4 (1 - 0.6) = 1.6, 0 -> mean 0.65;
    # DR = 0.45 + 0.65 = 1.1.
    assert doubly_robust(LOGS, DETERMINISTIC, Q_HAT, n_boot=0).point == pytest.approx(1.1)


def test_direct_method_and_doubly_robust_stochastic() -> None:
    # DM rows: 0.5*0.5 + 0.5*0.2 = 0.35, 0.3, 0.6, 0.2 -> 1.45 / 4 = 0.3625.
    assert direct_method(LOGS, STOCHASTIC, Q_HAT, n_boot=0).point == pytest.approx(0.3625)
    # Corrections: 1 (1 - 0.5) = 0.5, 4/3 (0 - 0.3) = -0.4, 4 (1 - 0.6) = 1.6, 2 (0 - 0.2) = -0.4 -> 1.3 / 4
    # = 0.325; DR = 0.3625 + 0.325 = 0.6875.
    assert doubly_robust(LOGS, STOCHASTIC, Q_HAT, n_boot=0).point == pytest.approx(0.6875)


def test_dr_equals_ips_when_the_reward_model_is_zero() -> None:
    zero = np.zeros_like(Q_HAT)
    for policy in (DETERMINISTIC, STOCHASTIC):
        assert doubly_robust(LOGS, policy, zero, n_boot=0).point == pytest.approx(
            ips(LOGS, policy, n_boot=0).point
        )
        assert direct_method(LOGS, policy, zero, n_boot=0).point == 0


def test_snips_equals_ips_when_weights_average_one() -> None:
    # Two actions logged uniformly (p = 1/2); the target agrees on half the rows: w = 2, 0, 2, 0 (mean 1).
    logs = LoggedBandit(np.array([0, 1, 1, 0]), np.full(4, 0.5), np.array([1.0, 1.0, 0.0, 0.0]), 2)
    target = np.array([0, 0, 1, 1])
    assert importance_weights(logs, target).mean() == 1
    # IPS = (2*1 + 0 + 2*0 + 0) / 4 = 0.5 = SNIPS = 2 / 4.
    assert snips(logs, target, n_boot=0).point == pytest.approx(ips(logs, target, n_boot=0).point) == 0.5


def test_on_policy_value_is_the_mean_reward() -> None:
    # The logging policy against itself: w = 1 everywhere, so IPS = SNIPS = mean reward = 0.5.
    value = on_policy_value(LOGS, n_boot=100)
    assert value.point == 0.5
    assert value.lo <= 0.5 <= value.hi
    itself = np.zeros((4, 3))
    itself[np.arange(4), LOGS.action] = LOGS.propensity  # the logging distribution where it acted
    itself[np.arange(4), (LOGS.action + 1) % 3] = 1 - LOGS.propensity
    assert ips(LOGS, itself, n_boot=0).point == pytest.approx(0.5)


def test_evaluate_policy_includes_dm_and_dr_only_with_a_reward_model() -> None:
    assert set(evaluate_policy(LOGS, DETERMINISTIC, n_boot=0)) == {"ips", "snips"}
    assert set(evaluate_policy(LOGS, DETERMINISTIC, Q_HAT, n_boot=0)) == {"ips", "snips", "dm", "dr"}
    with pytest.raises(ValueError, match="reward model"):
        estimate("dr", LOGS, DETERMINISTIC)
    with pytest.raises(ValueError, match="unknown estimator"):
        estimate("switch", LOGS, DETERMINISTIC)


def test_invalid_logs_and_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="propensities"):
        LoggedBandit(np.array([0]), np.array([0.0]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="actions"):
        LoggedBandit(np.array([2]), np.array([0.5]), np.array([1.0]), 2)
    with pytest.raises(ValueError, match="sum to 1"):
        policy_matrix(np.array([[0.5, 0.2]]), 2)
    with pytest.raises(ValueError, match="rows"):
        ips(LOGS, DETERMINISTIC[:2])


def test_helpers() -> None:
    np.testing.assert_allclose(policy_matrix(np.array([1, 0]), 2), np.array([[0, 1], [1, 0]]))
    allowed = np.array([[True, False, True], [False, False, True]])
    np.testing.assert_allclose(uniform_eligible(allowed), np.array([[0.5, 0, 0.5], [0, 0, 1]]))
    # Kish: (1 + 1 + 0 + 0)^2 / (1 + 1) = 2 of 4 rows; equal weights give n.
    assert effective_sample_size(np.array([1.0, 1.0, 0.0, 0.0])) == 2
    assert effective_sample_size(np.ones(7)) == pytest.approx(7)


def _synthetic_bandit(n: int, seed: int) -> tuple[LoggedBandit, np.ndarray, np.ndarray, float]:
    """Two contexts, four actions, uniform logging; returns logs, context, target policy and true value."""
    rng = np.random.default_rng(seed)
    mu = np.array([[0.10, 0.30, 0.05, 0.20], [0.40, 0.10, 0.25, 0.05]])  # E[r | x, a]
    x = rng.integers(0, 2, n)
    a = rng.integers(0, 4, n)
    r = (rng.uniform(size=n) < mu[x, a]).astype(float)
    logs = LoggedBandit(a, np.full(n, 0.25), r, 4)
    target = np.where(x == 0, 1, 0)  # the best action in each context: true value (0.30 + 0.40) / 2
    return logs, x, target, 0.35


def test_ips_is_unbiased_on_a_synthetic_bandit() -> None:
    logs, _x, target, truth = _synthetic_bandit(20_000, seed=11)
    for estimator in (ips, snips):
        value = estimator(logs, target, n_boot=200, seed=0)
        assert value.lo <= truth <= value.hi
        assert abs(value.point - truth) < 0.02
    # Averaged over many independent logs, IPS has no bias (the spread of one run is ~0.007).
    estimates = [ips(_synthetic_bandit(5_000, seed=s)[0], _synthetic_bandit(5_000, seed=s)[2], n_boot=0).point
                 for s in range(40)]  # fmt: skip
    assert abs(np.mean(estimates) - truth) < 0.005


def test_dr_stays_unbiased_with_a_wrong_reward_model_and_gains_with_a_good_one() -> None:
    logs, x, target, truth = _synthetic_bandit(20_000, seed=12)
    wrong = np.full((len(logs), 4), 0.5)  # a constant, badly biased reward model
    dr_wrong = doubly_robust(logs, target, wrong, n_boot=200)
    assert dr_wrong.lo <= truth <= dr_wrong.hi
    assert direct_method(logs, target, wrong, n_boot=0).point == pytest.approx(0.5)
    mu = np.array([[0.10, 0.30, 0.05, 0.20], [0.40, 0.10, 0.25, 0.05]])
    good = doubly_robust(logs, target, mu[x], n_boot=200)
    plain = ips(logs, target, n_boot=200)
    assert good.lo <= truth <= good.hi
    assert good.hi - good.lo < plain.hi - plain.lo  # the right model removes variance


def test_true_values_from_the_simulator_truth(tmp_path: Path) -> None:
    columns: dict[str, list] = {"decision_id": ["D1", "D2", "D3"]}
    for j, action in enumerate(ACTIONS):
        columns[f"p_convert__{action}"] = [0.1 + 0.01 * j, 0.2, 0.3 + 0.02 * j]
    pq.write_table(pa.table(columns), tmp_path / "decisions.parquet")
    # Rows: D3, none, D1 (order of the features rows, not of the truth file).
    p = true_conversion_matrix(tmp_path / "decisions.parquet", np.array(["D3", None, "D1"], dtype=object))
    assert p.shape == (3, len(ACTIONS))
    np.testing.assert_allclose(p[0, :2], [0.30, 0.32])
    assert np.isnan(p[1]).all()
    np.testing.assert_allclose(p[2, NO_SEND], 0.1 + 0.01 * NO_SEND)
    # Always no_send: mean over the known rows of p[no_send] = (0.3 + 0.02*9 + 0.1 + 0.01*9) / 2 = 0.335.
    assert true_policy_value(np.full(3, NO_SEND), p) == pytest.approx(0.335)
    # Uniform over all actions: the mean of each known row's probabilities.
    uniform = np.full((3, len(ACTIONS)), 1 / len(ACTIONS))
    assert true_policy_value(uniform, p) == pytest.approx(np.nanmean(p))
    # The logging policy's true value: the probabilities of the actions it took, (p[0, 0] + p[2, 1]) / 2.
    assert true_logging_value(np.array([0, 0, 1]), p) == pytest.approx((0.30 + 0.11) / 2)
