"""Cross-fitting and the policies of the Hillstrom benchmark: every learner is fitted on K - 1 folds
and chooses the actions of the held-out fold; a conservative policy keeps the best constant e-mail unless
a learner predicts another action better by more than a threshold chosen on the training folds."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from benchmarks.hillstrom_data import ACTION_NAMES, ARMS, Design
from benchmarks.hillstrom_learners import Learner, LearnerFactory


def fold_ids(action: np.ndarray, y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) fold of each row, stratified by arm and by a positive outcome."""
    strata = np.asarray(action) * 2 + (np.asarray(y) > 0)
    out = np.empty(len(strata), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(splitter.split(np.zeros(len(strata)), strata)):
        out[test] = k
    return out


def cross_fit_predictions(
    factory: LearnerFactory,
    x: np.ndarray,
    action: np.ndarray,
    propensity: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
) -> tuple[np.ndarray, float, list[dict[str, Any]]]:
    """Out-of-fold predictions: each fold predicted by a learner fitted on the other folds.

    Returns:
        ((n, n_actions) predictions, fit seconds summed over folds, per-fold learner info).
    """
    pred = np.empty((len(x), len(ARMS)))
    seconds, info = 0.0, []
    for k in np.unique(folds):
        train, test = folds != k, folds == k
        start = time.perf_counter()
        learner = factory(int(k)).fit(x[train], action[train], propensity[train], y[train])
        seconds += time.perf_counter() - start
        pred[test] = learner.predict(x[test])
        info.append(learner.info())
    return pred, seconds, info


def constant_ips(action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n_actions,) IPS value of each constant policy on these logs."""
    return np.array([np.mean((action == a) / propensity * y) for a in range(len(ARMS))])


def thresholded_policy(pred: np.ndarray, default: int, threshold: float) -> np.ndarray:
    """The default action, unless another action is predicted better than it by more than `threshold`.

    Args:
        pred: (n, n_actions) predicted outcomes.
        default: the action sent when no alternative clears the threshold.
        threshold: 0 gives argmax (ties to the default), infinity the constant policy.

    Returns:
        (n,) actions.
    """
    gain = pred.max(axis=1) - pred[:, default]
    return np.where(gain > threshold, pred.argmax(axis=1), default).astype(np.int64)


def choose_threshold(
    pred: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray, default: int
) -> tuple[float, dict[str, float]]:
    """The threshold of `thresholded_policy` with the highest IPS on these (training) rows.

    Candidates: 0, the 50/75/90/95/99 % quantiles of the positive predicted gains, and infinity; among
    equal values the larger threshold (the more conservative policy) wins.

    Returns:
        (threshold, candidate -> IPS value).
    """
    gain = pred.max(axis=1) - pred[:, default]
    positive = gain[gain > 0]
    candidates = [0.0]
    if len(positive):
        candidates += [float(q) for q in np.quantile(positive, [0.5, 0.75, 0.9, 0.95, 0.99])]
    candidates.append(float("inf"))
    values = {}
    for t in sorted(set(candidates)):
        policy = thresholded_policy(pred, default, t)
        values[t] = float(np.mean((policy == action) / propensity * y))
    best = max(values.items(), key=lambda kv: (round(kv[1], 12), kv[0]))[0]
    return best, {str(k): v for k, v in values.items()}


def choose_conservative(
    factory: LearnerFactory,
    x: np.ndarray,
    action: np.ndarray,
    propensity: np.ndarray,
    y: np.ndarray,
    inner_folds: int,
    seed: int,
) -> tuple[int, float, dict[str, Any], float]:
    """The default action and threshold of a learner's conservative policy, chosen on training rows only.

    The default is the best constant policy by IPS on these rows; the threshold is `choose_threshold` on
    predictions cross-fitted over `inner_folds` folds of these rows.

    Returns:
        (default action, threshold, the evidence, seconds spent fitting).
    """
    default = int(np.argmax(constant_ips(action, propensity, y)))
    inner = fold_ids(action, y, inner_folds, seed)
    pred, seconds, _ = cross_fit_predictions(factory, x, action, propensity, y, inner)
    threshold, values = choose_threshold(pred, action, propensity, y, default)
    evidence = {"default": ACTION_NAMES[default], "threshold": threshold, "ips_by_threshold": values}
    return default, threshold, evidence, seconds


def design_per_fold(frame: pd.DataFrame, fold: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per outer fold k: (features of all rows with the design fitted on the other folds, its mask)."""
    out = {}
    for k in np.unique(fold):
        design = Design.fit(frame.loc[fold != k])
        out[int(k)] = (design.transform(frame), fold != k)
    return out


def cross_fit_features(
    factory: LearnerFactory,
    x_all: dict[int, tuple[np.ndarray, np.ndarray]],
    action: np.ndarray,
    propensity: np.ndarray,
    y: np.ndarray,
) -> tuple[np.ndarray, float, list[dict[str, Any]], dict[str, tuple[np.ndarray, float]]]:
    """`cross_fit_predictions` with the feature design refitted on each fold's training rows.

    Returns:
        (predictions, fit seconds, per-fold info, the learner's variants: name -> (predictions, seconds)).
    """
    pred = np.empty((len(action), len(ARMS)))
    seconds, info = 0.0, []
    variants: dict[str, tuple[np.ndarray, float]] = {}
    for k, (x, train) in x_all.items():
        start = time.perf_counter()
        learner = factory(k).fit(x[train], action[train], propensity[train], y[train])
        seconds += time.perf_counter() - start
        pred[~train] = learner.predict(x[~train])
        for name, (p, s) in learner.variants(x[~train]).items():
            whole, total = variants.get(name, (np.empty_like(pred), 0.0))
            whole[~train] = p
            variants[name] = (whole, total + s)
        info.append(learner.info())
    return pred, seconds, info, variants


def conservative_features(
    factory: LearnerFactory,
    outer_pred: np.ndarray,
    x_all: dict[int, tuple[np.ndarray, np.ndarray]],
    action: np.ndarray,
    propensity: np.ndarray,
    y: np.ndarray,
    inner_folds: int,
    seed: int,
) -> tuple[np.ndarray, float, list[dict[str, Any]]]:
    """The conservative policy, cross-fitted: per outer fold, default and threshold are chosen on the
    training folds (`choose_conservative`, inner learners numbered apart from the outer ones), and the
    held-out fold's actions come from `outer_pred` (the learner fitted on all its training folds).

    Returns:
        ((n,) actions, seconds of the inner fits, per-fold choices).
    """
    policy = np.empty(len(action), dtype=np.int64)
    seconds, info = 0.0, []
    for k, (x, train) in x_all.items():

        def inner_factory(j: int, k: int = k) -> Learner:
            return factory(100 * (k + 1) + j)

        default, threshold, evidence, s = choose_conservative(
            inner_factory, x[train], action[train], propensity[train], y[train], inner_folds, seed + 100 + k
        )
        seconds += s
        policy[~train] = thresholded_policy(outer_pred[~train], default, threshold)
        info.append(evidence)
    return policy, seconds, info
