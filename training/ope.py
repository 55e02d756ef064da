"""Off-policy evaluation: the value of a target policy estimated from logged, randomised decisions.

The logs hold, per decision i, the context x_i, the action a_i the logging policy took with probability
p_i = pi_0(a_i | x_i) (its propensity) and the reward r_i (a purchase in the outcome window). A target policy
pi gives a distribution pi(. | x_i) over actions (a deterministic policy puts 1 on one action). Estimators of
V(pi) = E_x sum_a pi(a | x) E[r | x, a], with w_i = pi(a_i | x_i) / p_i:

* IPS (inverse propensity scoring): mean_i w_i r_i. Unbiased when p_i > 0 wherever pi puts mass.
* SNIPS (self-normalised IPS): sum_i w_i r_i / sum_i w_i. Slightly biased, much less variance.
* DM (direct method): mean_i sum_a pi(a | x_i) q(x_i, a) with a reward model q (`Predictions.action_outcome`).
  No variance from the weights, all the bias of q.
* DR (doubly robust): DM + mean_i w_i (r_i - q(x_i, a_i)). Unbiased if either the propensities or q are
  right; equal to IPS when q = 0.

Each returns an `Interval` (point and bootstrap interval over decisions). On simulated data the true value
of any policy is known: mean_i sum_a pi(a | x_i) p_convert_i[a], from `truth/decisions.parquet`
(`true_conversion_matrix`, `true_policy_value`).

The standard policies compared on a test split are built by `standard_policies`: send nothing, uniform over
the eligible actions, the stage playbook on the predicted stage (and on the hindsight stage, an oracle-ish
reference), and the learned greedy policy on predicted uplift; every one of them respects the business rules
(`features.policy.eligibility`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.build import load_rows
from features.encoder import AGGREGATE_NAMES
from features.policy import NO_SEND, RuleConfig, eligibility, greedy_policy, playbook_actions
from features.schema import ACTIONS
from stats import Interval, RowStatistic, ratio_of_means, weighted_nanmean
from training.data import FeatureData

ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dm", "dr")
# Estimators that need a reward model q(x, a).
MODEL_ESTIMATORS: frozenset[str] = frozenset({"dm", "dr"})


@dataclass
class LoggedBandit:
    """Logged decisions of a randomised policy.

    Attributes:
        action: (n,) int index of the action taken.
        propensity: (n,) the logging policy's probability of that action, in (0, 1].
        reward: (n,) observed reward.
        n_actions: size of the action space.
    """

    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    n_actions: int

    def __post_init__(self) -> None:
        self.action = np.asarray(self.action, dtype=np.int64)
        self.propensity = np.asarray(self.propensity, dtype=np.float64)
        self.reward = np.asarray(self.reward, dtype=np.float64)
        n = len(self.action)
        if len(self.propensity) != n or len(self.reward) != n:
            raise ValueError("action, propensity and reward must have the same length")
        if n and (self.action.min() < 0 or self.action.max() >= self.n_actions):
            raise ValueError(f"actions must lie in [0, {self.n_actions})")
        if n and not (np.all(self.propensity > 0) and np.all(self.propensity <= 1)):
            raise ValueError("propensities must lie in (0, 1]")
        if not np.all(np.isfinite(self.reward)):
            raise ValueError("rewards must be finite")

    def __len__(self) -> int:
        return len(self.action)

    @classmethod
    def from_feature_data(cls, data: FeatureData) -> tuple[LoggedBandit, np.ndarray]:
        """The logged decisions of a split and the rows they sit on.

        A row counts if a decision was logged there with a positive propensity and a known outcome.

        Returns:
            (logged, rows): the bandit data and the (m,) row indices into `data`.
        """
        rows = np.flatnonzero(
            data.has_decisions
            & np.isfinite(data.logged_propensity)
            & (np.nan_to_num(data.logged_propensity) > 0)
            & np.isfinite(data.outcome)
        )
        logged = cls(
            action=data.logged_action[rows],
            propensity=data.logged_propensity[rows],
            reward=data.outcome[rows].astype(np.float64),
            n_actions=len(ACTIONS),
        )
        return logged, rows


def policy_matrix(policy: np.ndarray, n_actions: int) -> np.ndarray:
    """A policy as an (n, n_actions) matrix of probabilities.

    Args:
        policy: (n,) action indices of a deterministic policy, or (n, n_actions) probabilities (returned as
            float64 after checking that rows sum to 1).
        n_actions: size of the action space.
    """
    policy = np.asarray(policy)
    if policy.ndim == 1:
        out = np.zeros((len(policy), n_actions))
        out[np.arange(len(policy)), policy.astype(np.int64)] = 1.0
        return out
    if policy.shape[1] != n_actions:
        raise ValueError(f"policy has {policy.shape[1]} actions, expected {n_actions}")
    if len(policy) and not np.allclose(policy.sum(axis=1), 1.0, atol=1e-6):
        raise ValueError("each row of a stochastic policy must sum to 1")
    return policy.astype(np.float64)


def _target_probability(logged: LoggedBandit, policy: np.ndarray) -> np.ndarray:
    """pi(a_i | x_i): (n,)."""
    policy = np.asarray(policy)
    if len(policy) != len(logged):
        raise ValueError(f"policy has {len(policy)} rows, the logs {len(logged)}")
    if policy.ndim == 1:
        return (policy.astype(np.int64) == logged.action).astype(np.float64)
    return policy_matrix(policy, logged.n_actions)[np.arange(len(logged)), logged.action]


def importance_weights(logged: LoggedBandit, policy: np.ndarray) -> np.ndarray:
    """w_i = pi(a_i | x_i) / p_i: (n,)."""
    return _target_probability(logged, policy) / logged.propensity


def effective_sample_size(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2 of importance weights (n when all are equal)."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float((w * w).sum())
    return float(w.sum() ** 2 / sq) if sq > 0 else 0.0


def estimator_terms(
    estimator: str, logged: LoggedBandit, policy: np.ndarray, q_hat: np.ndarray | None = None
) -> RowStatistic:
    """The per-decision terms of an estimator and the statistic that combines them (see the module doc).

    Args:
        estimator: one of ESTIMATORS.
        logged: the logged decisions.
        policy: (n,) actions or (n, n_actions) probabilities of the target policy.
        q_hat: (n, n_actions) reward model, needed by "dm" and "dr".
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; choose from {ESTIMATORS}")
    w = importance_weights(logged, policy)
    if estimator == "ips":
        return RowStatistic((w * logged.reward,))
    if estimator == "snips":
        return RowStatistic((w * logged.reward, w), ratio_of_means)
    if q_hat is None:
        raise ValueError(f"{estimator} needs a reward model q_hat")
    q = np.asarray(q_hat, dtype=np.float64)
    if q.shape != (len(logged), logged.n_actions):
        raise ValueError(f"q_hat has shape {q.shape}, expected {(len(logged), logged.n_actions)}")
    direct = (policy_matrix(policy, logged.n_actions) * q).sum(axis=1)  # (n,) sum_a pi(a|x) q(x, a)
    if estimator == "dm":
        return RowStatistic((direct,))
    q_taken = q[np.arange(len(logged)), logged.action]
    return RowStatistic((direct + w * (logged.reward - q_taken),))


def estimate(
    estimator: str,
    logged: LoggedBandit,
    policy: np.ndarray,
    q_hat: np.ndarray | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """One estimator's value of the target policy with its bootstrap interval (see `estimator_terms`)."""
    return estimator_terms(estimator, logged, policy, q_hat).ci(n_boot=n_boot, seed=seed, alpha=alpha)


def ips(
    logged: LoggedBandit, policy: np.ndarray, *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """IPS: mean_i w_i r_i, with its bootstrap interval."""
    return estimate("ips", logged, policy, n_boot=n_boot, seed=seed, alpha=alpha)


def snips(
    logged: LoggedBandit, policy: np.ndarray, *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """SNIPS: sum_i w_i r_i / sum_i w_i, with its bootstrap interval."""
    return estimate("snips", logged, policy, n_boot=n_boot, seed=seed, alpha=alpha)


def direct_method(
    logged: LoggedBandit,
    policy: np.ndarray,
    q_hat: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """DM: mean_i sum_a pi(a | x_i) q(x_i, a), with its bootstrap interval over decisions."""
    return estimate("dm", logged, policy, q_hat, n_boot=n_boot, seed=seed, alpha=alpha)


def doubly_robust(
    logged: LoggedBandit,
    policy: np.ndarray,
    q_hat: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """DR: mean_i [sum_a pi(a | x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i))], with its bootstrap interval."""
    return estimate("dr", logged, policy, q_hat, n_boot=n_boot, seed=seed, alpha=alpha)


def on_policy_value(
    logged: LoggedBandit, *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> Interval:
    """The logging policy's own value: the mean logged reward, with its bootstrap interval."""
    return logging_terms(logged).ci(n_boot=n_boot, seed=seed, alpha=alpha)


def logging_terms(logged: LoggedBandit) -> RowStatistic:
    """Per-decision terms of the logging policy's value (its rewards), for paired comparisons."""
    return RowStatistic((logged.reward,), weighted_nanmean)


def evaluate_policy(
    logged: LoggedBandit,
    policy: np.ndarray,
    q_hat: np.ndarray | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Interval]:
    """Every estimator that applies (DM and DR only with a reward model): name -> Interval."""
    names = [e for e in ESTIMATORS if q_hat is not None or e not in MODEL_ESTIMATORS]
    return {e: estimate(e, logged, policy, q_hat, n_boot=n_boot, seed=seed, alpha=alpha) for e in names}


# --------------------------------------------------------------------------------------------------------
# The policies compared on a split


def aggregates_dict(data: FeatureData) -> dict[str, np.ndarray]:
    """FeatureData.aggregates (columns in AGGREGATE_NAMES order) as name -> (n,) arrays for the rules."""
    return {name: data.aggregates[:, j] for j, name in enumerate(AGGREGATE_NAMES)}


def uniform_eligible(allowed: np.ndarray) -> np.ndarray:
    """Uniform over the allowed actions of each row (no_send is always allowed): (n, n_actions)."""
    allowed = np.asarray(allowed, dtype=np.float64)
    return allowed / allowed.sum(axis=1, keepdims=True)


def constant_policies(allowed: np.ndarray) -> dict[str, np.ndarray]:
    """For each message action: send it wherever the rules allow, else no_send. Name -> (n,) actions."""
    out = {}
    for a, action in enumerate(ACTIONS):
        if a != NO_SEND:
            out[action] = np.where(allowed[:, a], a, NO_SEND)
    return out


def standard_policies(
    data: FeatureData,
    *,
    stage_proba: np.ndarray | None = None,
    action_outcome: np.ndarray | None = None,
    true_stage: np.ndarray | None = None,
    rules: RuleConfig | None = None,
) -> dict[str, np.ndarray]:
    """The target policies compared on a split, each an (n,) action or (n, n_actions) probability array.

    * `no_send`: never send.
    * `uniform`: uniform over the eligible actions (no_send included).
    * `playbook`: the stage playbook on the scorer's predicted stage (if `stage_proba`).
    * `playbook_hindsight`: the playbook on the hindsight stage label: a reference that knows the future
      (the label is defined by what happened after the cutoff), not a deployable policy.
    * `playbook_true_stage`: the playbook on the simulator's latent stage (if `true_stage`; rows where it is
      unknown fall back to the hindsight stage).
    * `learned`: the eligible action with the highest predicted uplift over no_send (if `action_outcome`).

    Args:
        data: the rows.
        stage_proba: (n, len(STAGES)) predicted stage probabilities.
        action_outcome: (n, len(ACTIONS)) predicted outcome per action.
        true_stage: (n,) latent stage index into STAGES, -1 where unknown.
        rules: business rules (default `RuleConfig()`).
    """
    allowed = eligibility(aggregates_dict(data), rules).allowed
    policies: dict[str, np.ndarray] = {
        "no_send": np.full(len(data), NO_SEND, dtype=np.int64),
        "uniform": uniform_eligible(allowed),
    }
    if stage_proba is not None:
        policies["playbook"] = playbook_actions(np.asarray(stage_proba).argmax(axis=1), allowed)
    policies["playbook_hindsight"] = playbook_actions(data.stage, allowed)
    if true_stage is not None:
        stage = np.where(np.asarray(true_stage) >= 0, true_stage, data.stage)
        policies["playbook_true_stage"] = playbook_actions(stage, allowed)
    if action_outcome is not None:
        q = np.asarray(action_outcome, dtype=np.float64)
        policies["learned"] = greedy_policy(q - q[:, [NO_SEND]], allowed)
    return policies


def send_rate(policy: np.ndarray, n_actions: int = len(ACTIONS)) -> float:
    """Expected share of rows where the policy sends a message (any action but no_send)."""
    if len(policy) == 0:
        return float("nan")
    return float(1.0 - policy_matrix(policy, n_actions)[:, NO_SEND].mean())


# --------------------------------------------------------------------------------------------------------
# Simulated truth


def load_decision_ids(features: Path, split: str) -> pa.Table:
    """customer_id, cutoff and decision_id of a build's rows, in FeatureData's row order.

    Args:
        features: the features build folder.
        split: "train", "valid" or "test".
    """
    return load_rows(Path(features), split, columns=["customer_id", "cutoff", "decision_id"])


def true_conversion_matrix(truth_decisions: Path, decision_ids: np.ndarray) -> np.ndarray:
    """The simulator's exact conversion probability of every action at each row's decision.

    Args:
        truth_decisions: the simulator's `truth/decisions.parquet`.
        decision_ids: (n,) decision id per row (None or "" where no decision was logged).

    Returns:
        (n, len(ACTIONS)) p_convert[a], NaN on rows without a decision in the truth.
    """
    ids = np.asarray([d if isinstance(d, str) else "" for d in decision_ids], dtype=object)
    columns = ["decision_id", *(f"p_convert__{a}" for a in ACTIONS)]
    wanted = pa.array(np.unique(ids[ids != ""]).tolist(), pa.string())
    table = pq.read_table(truth_decisions, columns=columns)
    table = table.filter(pc.is_in(table.column("decision_id"), value_set=wanted))
    out = np.full((len(ids), len(ACTIONS)), np.nan)
    if table.num_rows == 0:
        return out
    position = {d: i for i, d in enumerate(table.column("decision_id").to_pylist())}
    row = np.array([position.get(d, -1) for d in ids], dtype=np.int64)
    values = np.column_stack([table.column(f"p_convert__{a}").to_numpy() for a in ACTIONS])
    found = row >= 0
    out[found] = values[row[found]]
    return out


def true_policy_value(policy: np.ndarray, p_convert: np.ndarray) -> float:
    """mean_i sum_a pi(a | x_i) p_convert_i[a] over the rows where the truth is known.

    Args:
        policy: (n,) actions or (n, n_actions) probabilities.
        p_convert: (n, n_actions) from `true_conversion_matrix`.
    """
    p = np.asarray(p_convert, dtype=np.float64)
    known = np.isfinite(p).all(axis=1)
    if not known.any():
        return float("nan")
    pi = policy_matrix(np.asarray(policy)[known], p.shape[1])
    return float((pi * p[known]).sum(axis=1).mean())


def true_logging_value(logged_action: np.ndarray, p_convert: np.ndarray) -> float:
    """The logging policy's true value on these decisions: mean_i p_convert_i[a_i] of the actions it took.

    The expectation over its own randomisation of this mean is the logging policy's value, and it leaves
    out the outcome noise that the mean logged reward carries.
    """
    return true_policy_value(np.asarray(logged_action, dtype=np.int64), p_convert)


def policy_values(
    logged: LoggedBandit,
    policies: Mapping[str, np.ndarray],
    q_hat: np.ndarray | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, Interval]]:
    """`evaluate_policy` for several policies (row-aligned with `logged`): policy -> estimator -> Interval."""
    return {
        name: evaluate_policy(logged, pi, q_hat, n_boot=n_boot, seed=seed, alpha=alpha)
        for name, pi in policies.items()
    }
