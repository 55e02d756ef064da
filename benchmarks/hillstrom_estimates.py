"""The estimates of the Hillstrom benchmark: every policy's value by IPS, SNIPS and DR with bootstrap
intervals, the paired differences against the best constant and the best baseline, and what one run
holds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.hillstrom_data import (
    ACTION_NAMES,
    ARMS,
    BINARY_OUTCOMES,
    CONSTANTS,
    ESTIMATORS,
    LEARNED_POLICIES,
    LOGGING,
    LOGGING_PROPENSITY,
    MODEL,
    MODEL_CONSERVATIVE,
    MODEL_POLICIES,
    MODEL_SINGLE,
    NO_EMAIL,
    OUTCOMES,
    PAIRED_ESTIMATORS,
    T_CONSERVATIVE,
    T_LEARNER,
    UNIFORM,
    ArmRate,
    ArmShares,
    Design,
    Uplift,
)
from benchmarks.hillstrom_learners import (
    Learner,
    LearnerFactory,
    LGBMParams,
    NetLearner,
    NetParams,
    OutcomeKind,
    TLearner,
)
from benchmarks.hillstrom_policies import conservative_features, cross_fit_features, design_per_fold, fold_ids
from stats import Interval, RowStatistic, bootstrap_means, weighted_nanmean
from training.ope import LoggedBandit, estimator_terms, logging_terms


@dataclass
class PolicyResult:
    """One policy's estimated value per estimator, its action shares and its training time."""

    name: str
    kind: str  # "model", "baseline" or "reference"
    values: dict[str, Interval]
    action_shares: dict[str, float]
    fit_seconds: float | None

    @property
    def send_rate(self) -> float:
        """Share of customers sent an e-mail."""
        return 1.0 - self.action_shares[ACTION_NAMES[NO_EMAIL]]


@dataclass
class PairedResult:
    """value(policy) - value(versus) per estimator, on the same resampled customers.

    Attributes:
        differences: estimator -> difference with its paired bootstrap interval.
        disagreement: share of customers whose action differs between the two policies.
    """

    policy: str
    versus: str
    differences: dict[str, Interval]
    disagreement: float

    def verdict_of(self, estimator: str) -> str:
        """ "better" or "worse" when the estimator's interval excludes 0, else "not distinguishable"."""
        if self.disagreement == 0:
            return "same actions"
        diff = self.differences[estimator]
        if diff.lo > 0:
            return "better"
        if diff.hi < 0:
            return "worse"
        return "not distinguishable"

    @property
    def verdict(self) -> str:
        """The verdict of IPS and SNIPS together: "better" / "worse" only where both agree."""
        verdicts = {self.verdict_of(e) for e in ("ips", "snips")}
        return verdicts.pop() if len(verdicts) == 1 else "not distinguishable"


@dataclass
class OutcomeResult:
    """Everything measured for one outcome."""

    outcome: str
    policies: list[PolicyResult]
    paired: list[PairedResult]
    best_constant: str
    best_policy: str
    best_baseline: str
    details: dict[str, Any] = field(default_factory=dict)
    actions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # per policy, not in the JSON
    refits: list[dict[str, Any]] = field(default_factory=list)

    def policy(self, name: str) -> PolicyResult:
        """The result of the policy called `name`."""
        return next(p for p in self.policies if p.name == name)


def _as_matrix(policy: np.ndarray) -> np.ndarray:
    """(n, n_actions) probabilities of a policy given as actions or probabilities."""
    return policy if policy.ndim == 2 else np.eye(len(ARMS))[policy]


def _shares(policy: np.ndarray) -> dict[str, float]:
    matrix = _as_matrix(policy)
    return {name: float(v) for name, v in zip(ACTION_NAMES, matrix.mean(axis=0), strict=True)}


def _intervals(terms: dict[str, RowStatistic], n_boot: int, seed: int) -> dict[str, Interval]:
    """Bootstrap intervals of many statistics on the same resamples (means in one pass, others singly)."""
    means = {
        k: t.columns[0] for k, t in terms.items() if t.statistic is weighted_nanmean and len(t.columns) == 1
    }
    out = bootstrap_means(means, n_boot=n_boot, seed=seed)
    for k, t in terms.items():
        if k not in out:
            out[k] = t.ci(n_boot=n_boot, seed=seed)
    return {k: out[k] for k in terms}


def _paired(
    terms: dict[tuple[str, str], RowStatistic],
    policies: dict[str, np.ndarray],
    pairs: list[tuple[str, str]],
    n_boot: int,
    seed: int,
) -> list[PairedResult]:
    """Paired bootstrap intervals of (policy - versus) for every estimator (means in one pass)."""
    means: dict[str, np.ndarray] = {}
    for policy, versus in pairs:
        for est in PAIRED_ESTIMATORS:
            a, b = terms[(policy, est)], terms[(versus, est)]
            if a.statistic is weighted_nanmean and b.statistic is weighted_nanmean and len(a.columns) == 1:
                means[f"{policy}|{versus}|{est}"] = a.columns[0] - b.columns[0]
    intervals = bootstrap_means(means, n_boot=n_boot, seed=seed)
    out = []
    for policy, versus in pairs:
        diffs = {}
        for est in PAIRED_ESTIMATORS:
            key = f"{policy}|{versus}|{est}"
            if key in intervals:
                diffs[est] = intervals[key]
            else:
                diffs[est] = terms[(policy, est)].minus(terms[(versus, est)], n_boot=n_boot, seed=seed)
        a_matrix = _as_matrix(policies[policy])
        b_matrix = _as_matrix(policies[versus])
        disagreement = float(0.5 * np.abs(a_matrix - b_matrix).sum(axis=1).mean())
        out.append(PairedResult(policy, versus, diffs, disagreement))
    return out


def evaluate_outcome(
    frame: pd.DataFrame,
    outcome: str,
    *,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    n_boot: int = 1_000,
    lgbm: LGBMParams | None = None,
    net: NetParams | None = None,
    learners: Sequence[str] = ("t_learner", "model"),
    test: pd.DataFrame | None = None,
    log: Callable[[str], None] | None = None,
) -> OutcomeResult:
    """Fits the learned policies for one outcome and estimates every policy's value.

    Without `test`, the learners are cross-fitted over `folds` folds of `frame` and every value is
    estimated on all of `frame`. With `test` (another file, or the test rows of a split), every learner
    and its feature design is fitted on all of `frame` (the train population) and chooses the actions
    of `test`'s rows, and every value, interval and the best constant are estimated on `test` alone: the
    test rows are never seen by any fit, the conservative policies' thresholds included.

    Args:
        frame: from `load_hillstrom`; the train population when `test` is given.
        outcome: "visit", "conversion" or "spend".
        folds: outer folds of the cross-fitting (unused with `test`).
        inner_folds: folds inside the training rows for the conservative policies' thresholds (< 2: no
            conservative policies).
        seed: seed of the folds, LightGBM, the network and the bootstrap.
        n_boot: bootstrap resamples.
        lgbm: T-learner settings.
        net: model settings.
        learners: which of "t_learner" and "model" to fit (the T-learner is always fitted: it is DR's
            reward model).
        test: the rows to evaluate on, from `load_hillstrom` (or `split_by_row_id`).
        log: progress messages (e.g. `print`).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {OUTCOMES}")
    say = log or (lambda _msg: None)
    kind: OutcomeKind = "binary" if outcome in BINARY_OUTCOMES else "continuous"
    if test is None:
        data, scored = frame, np.ones(len(frame), dtype=bool)
        fold = fold_ids(frame["action"].to_numpy(), frame[outcome].to_numpy(), folds, seed)
        # The feature design (categories, scales) is fitted on each fold's training rows.
        x_all = design_per_fold(frame, fold)
        details: dict[str, Any] = {"folds": folds, "inner_folds": inner_folds, "rows": len(frame)}
        doing = f"cross-fitting {{}} over {folds} folds"
    else:
        data = pd.concat([frame, test], ignore_index=True)
        scored = np.arange(len(data)) >= len(frame)
        # One "fold": the design and the learners see the train rows, and predict the test rows.
        x_all = {0: (Design.fit(frame).transform(data), ~scored)}
        details = {"protocol": "train-test", "inner_folds": inner_folds, "rows": len(test)}
        details["train_rows"] = len(frame)
        doing = "fitting {} on the train population"
    action = data["action"].to_numpy(dtype=np.int64)
    y = data[outcome].to_numpy(dtype=np.float64)
    propensity = np.full(len(data), LOGGING_PROPENSITY)

    def t_factory(k: int) -> Learner:
        return TLearner(kind, lgbm, seed=seed + k)

    def net_factory(k: int) -> Learner:
        return NetLearner(kind, net, seed=seed + k)

    factories: dict[str, LearnerFactory] = {"t_learner": t_factory, "model": net_factory}
    names = {"t_learner": (T_LEARNER, T_CONSERVATIVE), "model": (MODEL, MODEL_CONSERVATIVE)}
    policies: dict[str, np.ndarray] = {}
    fit_seconds: dict[str, float] = {}
    q_hat = None
    for key in ("t_learner", *[k for k in learners if k != "t_learner"]):
        plain, conservative = names[key]
        say(f"{outcome}: {doing.format(plain)}")
        pred, seconds, info, variants = cross_fit_features(factories[key], x_all, action, propensity, y)
        if key == "t_learner":
            q_hat = pred[scored]
        if key in learners:
            policies[plain] = pred[scored].argmax(axis=1)
            fit_seconds[plain] = seconds
            details[plain] = {"folds": info}
            for name, (variant_pred, variant_seconds) in variants.items():
                policies[name] = variant_pred[scored].argmax(axis=1)
                fit_seconds[name] = variant_seconds
        if key in learners and inner_folds >= 2:
            say(f"{outcome}: choosing the thresholds of {conservative} ({inner_folds} inner folds)")
            policy, extra, choices = conservative_features(
                factories[key], pred, x_all, action, propensity, y, inner_folds, seed
            )
            policies[conservative] = policy[scored]
            fit_seconds[conservative] = seconds + extra
            details[conservative] = {"folds": choices}
    assert q_hat is not None
    details["q_hat_mean"] = dict(zip(ACTION_NAMES, q_hat.mean(axis=0).tolist(), strict=True))
    logged = LoggedBandit(
        action=action[scored], propensity=propensity[scored], reward=y[scored], n_actions=len(ARMS)
    )
    say(f"{outcome}: bootstrap ({n_boot} resamples)")
    return _estimate(outcome, logged, policies, fit_seconds, q_hat, details, n_boot, seed)


def _estimate(
    outcome: str,
    logged: LoggedBandit,
    policies: dict[str, np.ndarray],
    fit_seconds: dict[str, float],
    q_hat: np.ndarray,
    details: dict[str, Any],
    n_boot: int,
    seed: int,
) -> OutcomeResult:
    """Every policy's value by each estimator on the logged rows, the baselines added, and the paired
    differences of the learned policies against the best constant and the best baseline.

    Args:
        logged: the rows the values are estimated on.
        policies: learned policy -> (n,) actions on those rows (the baselines are added here).
        q_hat: (n, n_actions) DR's reward model on those rows.
    """
    n = len(logged.action)
    kinds = {name: ("model" if name in MODEL_POLICIES else "baseline") for name in policies}
    for name, a in CONSTANTS.items():
        policies[name] = np.full(n, a, dtype=np.int64)
        kinds[name] = "baseline"
        fit_seconds[name] = 0.0
    policies[UNIFORM] = np.full((n, len(ARMS)), 1.0 / len(ARMS))
    kinds[UNIFORM] = "baseline"
    fit_seconds[UNIFORM] = 0.0

    terms: dict[tuple[str, str], RowStatistic] = {}
    for name, policy in policies.items():
        for est in ESTIMATORS:
            terms[(name, est)] = estimator_terms(est, logged, policy, q_hat)
    flat = {f"{name}|{est}": t for (name, est), t in terms.items()}
    flat[f"{LOGGING}|observed"] = logging_terms(logged)
    intervals = _intervals(flat, n_boot, seed)
    results = [
        PolicyResult(
            name,
            kinds[name],
            {est: intervals[f"{name}|{est}"] for est in ESTIMATORS},
            _shares(policy),
            fit_seconds.get(name),
        )
        for name, policy in policies.items()
    ]
    observed = intervals[f"{LOGGING}|observed"]
    results.append(
        PolicyResult(
            LOGGING,
            "reference",
            dict.fromkeys(ESTIMATORS, observed),
            _shares(np.eye(len(ARMS))[logged.action]),
            None,
        )
    )

    # Ties go to the simplest policy: constants first, then the other baselines, then the models.
    order = [*CONSTANTS, UNIFORM, T_LEARNER, T_CONSERVATIVE, MODEL, MODEL_CONSERVATIVE, MODEL_SINGLE]
    table_order = [*LEARNED_POLICIES, *CONSTANTS, UNIFORM, LOGGING]
    results.sort(key=lambda r: table_order.index(r.name))
    by_ips = {n: next(r for r in results if r.name == n).values["ips"].point for n in order if n in policies}
    best_constant = max(CONSTANTS, key=lambda n: by_ips[n])
    best_policy = max(by_ips, key=lambda n: by_ips[n])
    best_baseline = max((n for n in by_ips if kinds[n] == "baseline"), key=lambda n: by_ips[n])
    learned = [n for n in LEARNED_POLICIES if n in policies]
    pairs = [(p, best_constant) for p in learned]
    for model in (MODEL, MODEL_CONSERVATIVE):
        if model in policies:
            pairs += [(model, best_baseline)] + ([(model, T_LEARNER)] if T_LEARNER in policies else [])
    pairs = [(a, b) for a, b in dict.fromkeys(pairs) if a != b]
    paired = _paired(terms, policies, pairs, n_boot, seed)
    return OutcomeResult(
        outcome, results, paired, best_constant, best_policy, best_baseline, details, actions=policies
    )


@dataclass
class HeldOut:
    """The policies fitted on the train population and evaluated on the test population.

    Attributes:
        train: the train population in words (its file, or "its train rows" of a split file).
        test: the test population in words.
        split: how one file was split into the two, in words ("" for two files).
        rows: customers in the test population.
        shares: its arms.
        outcomes: per outcome, `evaluate_outcome(train, ..., test=test)`.
    """

    train: str
    test: str
    split: str
    rows: int
    shares: ArmShares
    outcomes: list[OutcomeResult]


@dataclass
class BenchmarkResult:
    """One run: the data, the arms, the uplift and the policies of each outcome; with a test population,
    the held-out protocol beside the cross-fitted one (`heldout`; the rest is then the train population).
    """

    command: str
    date: str
    data: str
    rows: int
    shares: ArmShares
    rates: list[ArmRate]
    uplift: list[Uplift]
    outcomes: list[OutcomeResult]
    settings: dict[str, Any]
    seconds: float
    heldout: HeldOut | None = None
