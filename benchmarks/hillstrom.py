"""The next-best-action benchmark on Hillstrom's randomised e-mail test (MineThatData, 2008).

Customers were split at random in thirds: Mens E-Mail, Womens E-Mail, No E-Mail. The three arms are the
three actions; the logging propensity is 1/3 for every customer (uniform randomisation: the empirical
shares are checked and reported). The outcome (visit, conversion or spend in the two weeks after the
e-mail) is the reward.

Protocol:

1. Uplift per e-mail: for each e-mail arm against No E-Mail, the difference in visit rate, conversion rate
   and mean spend, with a paired percentile bootstrap interval over customers (both arms' means on the same
   resampled rows, `stats.paired_bootstrap`) and a normal (Welch) interval; the rates of the
   full 64,000-customer set (SOURCE.md) beside them.
2. Learned policies, cross-fitted over K folds (stratified by arm and outcome): every model is fitted on
   K - 1 folds and chooses the actions of the held-out fold, so each customer's action comes from a model
   that never saw them.

   * `T-learner (LightGBM)`: one LightGBM model per arm, outcome ~ customer features, early-stopped on an
     inner validation split of the arm's rows; policy = the arm with the highest predicted outcome.
   * `model (IPS-BCE net)`: a small PyTorch network with the action-outcome head of
     `predictor.model.JourneyModel`: a shared encoder of the customer's features (one-hot categoricals,
     scaled numerics) into a state, a linear head with one sigmoid per action, trained with
     inverse-propensity-weighted BCE on the logged action only (as `training.sequence.journey_loss`),
     early-stopped on an inner validation split; policy = the action with the highest predicted outcome.
   * `... conservative`: the same learner, but the policy sends the training folds' best constant e-mail
     unless the learner predicts another action better by more than a threshold. The threshold (0 = the
     plain argmax policy, infinity = the constant policy, or a quantile of the predicted gains) is chosen
     by IPS on the training folds, from predictions cross-fitted inside them (`--inner-folds`).

3. Values by IPS, SNIPS and DR (`training.ope`; DR's reward model = the cross-fitted T-learner
   predictions) with percentile bootstrap intervals over customers, for the learned policies, send
   everyone Mens, send everyone Womens, no e-mail, random uniform and the logging policy (its observed
   mean). Then paired bootstrap intervals of (learned policy - best constant policy): the best constant
   is picked by its IPS point value on all rows, which favours it slightly.

Usage:
    .venv/bin/python benchmarks/hillstrom.py [--data CSV] [--outcome conversion [visit spend]] [--folds 5]
        [--inner-folds 3] [--seed 0] [--n-boot 1000] [--json PATH] [--markdown BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightgbm as lgb
import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import Tensor, nn
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: make the project's packages importable
    sys.path.insert(0, str(REPO))

from benchmarks.sections import update_section  # noqa: E402
from stats import (  # noqa: E402
    Interval,
    RowStatistic,
    bootstrap_ci,
    bootstrap_means,
    paired_bootstrap,
    ratio_of_means,
    weighted_nanmean,
)
from training.ope import LoggedBandit, estimator_terms, logging_terms  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "hillstrom" / "hillstrom_70pct.csv"
DEFAULT_JSON = REPO / "benchmarks" / "results" / "hillstrom.json"
MARKER_START = "<!-- hillstrom:start -->"
MARKER_END = "<!-- hillstrom:end -->"

# The treatment arms, in action order; action NO_EMAIL is the control.
ARMS: tuple[str, ...] = ("Mens E-Mail", "Womens E-Mail", "No E-Mail")
ACTION_NAMES: tuple[str, ...] = ("mens", "womens", "no_email")
NO_EMAIL = 2
LOGGING_PROPENSITY = 1.0 / len(ARMS)
OUTCOMES: tuple[str, ...] = ("visit", "conversion", "spend")
BINARY_OUTCOMES: frozenset[str] = frozenset({"visit", "conversion"})
NUMERIC_FEATURES: tuple[str, ...] = ("recency", "history", "mens", "womens", "newbie")
CATEGORICAL_FEATURES: tuple[str, ...] = ("zip_code", "channel", "history_segment")
REQUIRED_COLUMNS: tuple[str, ...] = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES, "segment", *OUTCOMES)
# Full 64,000-customer set, per arm (SOURCE.md): visit, conversion, mean spend.
FULL_SET_RATES: dict[str, dict[str, float]] = {
    "Mens E-Mail": {"visit": 0.1828, "conversion": 0.0125, "spend": 1.423},
    "Womens E-Mail": {"visit": 0.1514, "conversion": 0.0088, "spend": 1.077},
    "No E-Mail": {"visit": 0.1062, "conversion": 0.0057, "spend": 0.653},
}
ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
PAIRED_ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")
MODEL = "model (IPS-BCE net)"
MODEL_CONSERVATIVE = "model, conservative"
MODEL_SINGLE = "model, single network"
T_LEARNER = "T-learner (LightGBM)"
T_CONSERVATIVE = "T-learner, conservative"
CONSTANTS: dict[str, int] = {"send everyone Mens": 0, "send everyone Womens": 1, "no e-mail": NO_EMAIL}
MODEL_POLICIES: tuple[str, ...] = (MODEL, MODEL_CONSERVATIVE, MODEL_SINGLE)
LEARNED_POLICIES: tuple[str, ...] = (*MODEL_POLICIES, T_LEARNER, T_CONSERVATIVE)
UNIFORM = "random uniform"
LOGGING = "logging policy (observed)"


class HillstromDataError(ValueError):
    """The input file does not have the shape of the Hillstrom export."""


# --------------------------------------------------------------------------------------------------------
# Data


def load_hillstrom(path: Path | str) -> pd.DataFrame:
    """Reads and validates a Hillstrom export; adds `action` (index into ARMS).

    Args:
        path: CSV with the columns of REQUIRED_COLUMNS (others are ignored).

    Raises:
        FileNotFoundError: no such file.
        HillstromDataError: a missing column, an unknown segment, missing values or an impossible outcome,
            each named in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no Hillstrom file at {path}")
    frame = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise HillstromDataError(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}"
        )
    frame = frame[list(REQUIRED_COLUMNS)].copy()
    empty = [c for c in REQUIRED_COLUMNS if frame[c].isna().any()]
    if empty:
        raise HillstromDataError(f"{path}: missing values in column(s) {', '.join(empty)}")
    unknown = sorted(set(frame["segment"].astype(str)) - set(ARMS))
    if unknown:
        raise HillstromDataError(f"{path}: column 'segment' has unknown arm(s) {unknown}; expected {ARMS}")
    for column in (*NUMERIC_FEATURES, *OUTCOMES):
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise HillstromDataError(f"{path}: column {column!r} must be numeric")
    for column in BINARY_OUTCOMES:
        if not frame[column].isin([0, 1]).all():
            raise HillstromDataError(f"{path}: column {column!r} must hold 0 or 1")
    if (frame["spend"] < 0).any():
        raise HillstromDataError(f"{path}: column 'spend' has negative values")
    for column in CATEGORICAL_FEATURES:
        frame[column] = frame[column].astype(str)
    frame["action"] = frame["segment"].map({arm: i for i, arm in enumerate(ARMS)}).astype(np.int64)
    return frame.reset_index(drop=True)


@dataclass
class ArmShares:
    """How the customers fell into the arms, and the chi-square test of uniform randomisation."""

    counts: dict[str, int]
    shares: dict[str, float]
    chi2: float
    p_value: float


def arm_shares(frame: pd.DataFrame) -> ArmShares:
    """Counts and shares per arm, and the chi-square goodness-of-fit test against 1/3 each."""
    counts = np.bincount(frame["action"].to_numpy(), minlength=len(ARMS))
    test = stats.chisquare(counts)
    n = max(int(counts.sum()), 1)
    return ArmShares(
        counts={arm: int(c) for arm, c in zip(ARMS, counts, strict=True)},
        shares={arm: float(c / n) for arm, c in zip(ARMS, counts, strict=True)},
        chi2=float(test.statistic),
        p_value=float(test.pvalue),
    )


# --------------------------------------------------------------------------------------------------------
# Uplift per e-mail


@dataclass
class ArmRate:
    """One arm's mean of one outcome with its bootstrap interval."""

    arm: str
    outcome: str
    n: int
    rate: Interval
    full_set: float


@dataclass
class Uplift:
    """Mean outcome of an e-mail arm minus that of No E-Mail, with bootstrap and normal (Welch) intervals."""

    arm: str
    outcome: str
    difference: Interval
    normal: Interval
    relative: float
    full_set: float


def arm_rates(frame: pd.DataFrame, *, n_boot: int = 1_000, seed: int = 0) -> list[ArmRate]:
    """Mean visit, conversion and spend per arm, with percentile bootstrap intervals over customers."""
    out = []
    for a, arm in enumerate(ARMS):
        member = (frame["action"].to_numpy() == a).astype(np.float64)
        for outcome in OUTCOMES:
            y = frame[outcome].to_numpy(dtype=np.float64)
            ci = bootstrap_ci((y * member, member), ratio_of_means, n_boot=n_boot, seed=seed)
            out.append(ArmRate(arm, outcome, int(member.sum()), ci, FULL_SET_RATES[arm][outcome]))
    return out


def uplift_table(frame: pd.DataFrame, *, n_boot: int = 1_000, seed: int = 0) -> list[Uplift]:
    """For each e-mail arm and outcome: mean(arm) - mean(No E-Mail), with 95 % intervals.

    The bootstrap resamples customers (both arms' means on the same resampled rows); the normal interval
    is difference +- 1.96 sqrt(var_a / n_a + var_c / n_c) with sample variances.
    """
    action = frame["action"].to_numpy()
    control = (action == NO_EMAIL).astype(np.float64)
    out = []
    for a, arm in enumerate(ARMS):
        if a == NO_EMAIL:
            continue
        member = (action == a).astype(np.float64)
        for outcome in OUTCOMES:
            y = frame[outcome].to_numpy(dtype=np.float64)
            boot = paired_bootstrap(
                (y * member, member), (y * control, control), ratio_of_means, n_boot=n_boot, seed=seed
            )
            ya, yc = y[member > 0], y[control > 0]
            diff = float(ya.mean() - yc.mean())
            se = math.sqrt(ya.var(ddof=1) / len(ya) + yc.var(ddof=1) / len(yc))
            full = FULL_SET_RATES[arm][outcome] - FULL_SET_RATES[ARMS[NO_EMAIL]][outcome]
            relative = diff / yc.mean() if yc.mean() > 0 else float("nan")
            out.append(
                Uplift(arm, outcome, boot, Interval(diff, diff - 1.96 * se, diff + 1.96 * se), relative, full)
            )
    return out


# --------------------------------------------------------------------------------------------------------
# Features


@dataclass
class Design:
    """The customer features as a matrix: one-hot categoricals and standardised numerics (history in logs).

    Fitted on training rows only (categories unseen there get all-zero columns; means and scales of the
    numerics come from the training rows).
    """

    categories: dict[str, list[str]]
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, frame: pd.DataFrame) -> Design:
        """Categories, means and scales of `frame`'s features."""
        raw = _numeric(frame)
        scale = raw.std(axis=0)
        return cls(
            categories={c: sorted(frame[c].astype(str).unique()) for c in CATEGORICAL_FEATURES},
            mean=raw.mean(axis=0),
            scale=np.where(scale > 0, scale, 1.0),
        )

    @property
    def names(self) -> list[str]:
        """Column names of `transform`'s output."""
        return [*NUMERIC_FEATURES] + [f"{c}={v}" for c in CATEGORICAL_FEATURES for v in self.categories[c]]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """(n, n_features) float32."""
        parts = [(_numeric(frame) - self.mean) / self.scale]
        for c in CATEGORICAL_FEATURES:
            values = frame[c].astype(str).to_numpy()
            parts.append(np.stack([values == v for v in self.categories[c]], axis=1).astype(np.float64))
        return np.concatenate(parts, axis=1).astype(np.float32)


def _numeric(frame: pd.DataFrame) -> np.ndarray:
    raw = frame[list(NUMERIC_FEATURES)].to_numpy(dtype=np.float64).copy()
    j = NUMERIC_FEATURES.index("history")
    raw[:, j] = np.log1p(np.maximum(raw[:, j], 0.0))
    return raw


# --------------------------------------------------------------------------------------------------------
# Learners: each fits on (x, action, propensity, y) and predicts (n, n_actions) expected outcomes.

OutcomeKind = Literal["binary", "continuous"]


@dataclass(frozen=True)
class LGBMParams:
    """LightGBM settings of the T-learner (strongly regularised: conversions are about 1 %)."""

    learning_rate: float = 0.03
    num_leaves: int = 7
    min_child_samples: int = 200
    lambda_l2: float = 10.0
    feature_fraction: float = 0.8
    max_rounds: int = 1_000
    early_stopping_rounds: int = 50
    valid_share: float = 0.2
    num_threads: int = 1


class TLearner:
    """One LightGBM model per action on the rows that received it; predicts every action's outcome."""

    def __init__(self, kind: OutcomeKind, params: LGBMParams | None = None, seed: int = 0) -> None:
        self.kind = kind
        self.params = params or LGBMParams()
        self.seed = seed

    def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> TLearner:
        """Fits one model per action, early-stopped on a stratified inner validation split of its rows.

        `propensity` is unused beyond the check that every action was logged: each arm's rows are a random
        third of the customers, so an unweighted model per arm already stands for everyone.
        """
        del propensity
        p = self.params
        self.models_: list[lgb.Booster | float] = []
        self.rounds_: list[int] = []
        for a in range(len(ARMS)):
            rows = np.flatnonzero(action == a)
            if len(rows) == 0:
                raise ValueError(f"no training rows received action {ARMS[a]!r}")
            ya = y[rows]
            if (self.kind == "binary" and len(np.unique(ya)) < 2) or len(rows) < 50:
                self.models_.append(float(ya.mean()))
                self.rounds_.append(0)
                continue
            strata = (ya > 0).astype(int) if self.kind == "binary" else None
            fit_rows, valid_rows = train_test_split(
                rows, test_size=p.valid_share, random_state=self.seed + a, stratify=strata
            )
            params = {
                "objective": "binary" if self.kind == "binary" else "regression",
                "learning_rate": p.learning_rate,
                "num_leaves": p.num_leaves,
                "min_child_samples": p.min_child_samples,
                "lambda_l2": p.lambda_l2,
                "feature_fraction": p.feature_fraction,
                "feature_fraction_seed": self.seed,
                "bagging_seed": self.seed,
                "seed": self.seed,
                "deterministic": True,
                "force_col_wise": True,
                "num_threads": p.num_threads,
                "verbose": -1,
            }
            train_set = lgb.Dataset(x[fit_rows], label=y[fit_rows])
            valid_set = lgb.Dataset(x[valid_rows], label=y[valid_rows], reference=train_set)
            booster = lgb.train(
                params,
                train_set,
                num_boost_round=p.max_rounds,
                valid_sets=[valid_set],
                callbacks=[lgb.early_stopping(p.early_stopping_rounds, verbose=False)],
            )
            best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
            self.models_.append(lgb.Booster(model_str=booster.model_to_string(num_iteration=best)))
            self.rounds_.append(int(best))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(n, n_actions) predicted outcome of each action."""
        cols = [
            np.full(len(x), m) if isinstance(m, float) else np.asarray(m.predict(x), dtype=np.float64)
            for m in self.models_
        ]
        return np.column_stack(cols)

    def variants(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
        """No ablations."""
        del x
        return {}

    def info(self) -> dict[str, Any]:
        """Boosting rounds per arm."""
        return {"rounds": dict(zip(ACTION_NAMES, self.rounds_, strict=True))}


class ActionOutcomeNet(nn.Module):
    """A shared encoder of the customer's features into a state, and the action-outcome head of
    `predictor.model.JourneyModel`: one linear layer giving a logit of P(outcome | action) per action."""

    def __init__(self, n_features: int, d_model: int = 32, n_actions: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model, d_model),
            nn.GELU(),
        )
        self.norm = nn.LayerNorm(d_model)
        self.action_head = nn.Linear(d_model, n_actions)

    def forward(self, x: Tensor) -> Tensor:
        """(B, n_features) -> (B, n_actions) logits (or raw means for a continuous outcome)."""
        return self.action_head(self.norm(self.encoder(x)))


@dataclass(frozen=True)
class NetParams:
    """Size and training of the model.

    Attributes:
        n_seeds: networks averaged (each with its own initialisation and inner split).
        ipw_clip: largest inverse-propensity weight (as `FitConfig.ipw_clip`).
    """

    d_model: int = 32
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-3
    batch_size: int = 512
    max_epochs: int = 100
    patience: int = 8
    valid_share: float = 0.2
    ipw_clip: float = 50.0
    n_seeds: int = 5


def action_outcome_loss(
    out: Tensor, action: Tensor, propensity: Tensor, y: Tensor, kind: OutcomeKind, ipw_clip: float
) -> Tensor:
    """Inverse-propensity-weighted loss of the logged action's output only, as in `journey_loss`:
    BCE with logits for a binary outcome, squared error for a continuous one (in units of its scale).

    Args:
        out: (B, n_actions) head outputs.
        action: (B,) logged action.
        propensity: (B,) its logging probability.
        y: (B,) observed outcome.
    """
    taken = out.gather(1, action.unsqueeze(1)).squeeze(1)
    weight = (1.0 / propensity).clamp(max=ipw_clip)
    if kind == "binary":
        loss = F.binary_cross_entropy_with_logits(taken, y, reduction="none")
    else:
        loss = (taken - y) ** 2
    return (weight * loss).sum() / weight.sum()


class NetLearner:
    """The model: `ActionOutcomeNet` trained with `action_outcome_loss`, early-stopped on an inner split."""

    def __init__(self, kind: OutcomeKind, params: NetParams | None = None, seed: int = 0) -> None:
        self.kind = kind
        self.params = params or NetParams()
        self.seed = seed

    def fit(self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray) -> NetLearner:
        """Trains `n_seeds` networks with Adam; each keeps the epoch of its lowest inner-validation loss."""
        self.scale_ = float(y.std()) if self.kind == "continuous" and y.std() > 0 else 1.0
        self.nets_: list[ActionOutcomeNet] = []
        self.epochs_: list[int] = []
        self.seconds_: list[float] = []
        for k in range(self.params.n_seeds):
            start = time.perf_counter()
            net, epoch = self._fit_one(x, action, propensity, y / self.scale_, self.seed * 1_000 + k)
            self.seconds_.append(time.perf_counter() - start)
            self.nets_.append(net)
            self.epochs_.append(epoch)
        return self

    def _fit_one(
        self, x: np.ndarray, action: np.ndarray, propensity: np.ndarray, y: np.ndarray, seed: int
    ) -> tuple[ActionOutcomeNet, int]:
        p = self.params
        torch.manual_seed(seed)
        strata = action * 2 + (y > 0)
        fit_rows, valid_rows = train_test_split(
            np.arange(len(x)), test_size=p.valid_share, random_state=seed, stratify=strata
        )
        tensors = [
            torch.from_numpy(np.asarray(v, dtype=dtype))
            for v, dtype in ((x, np.float32), (action, np.int64), (propensity, np.float32), (y, np.float32))
        ]
        xf, af, pf, yf = (t[fit_rows] for t in tensors)
        xv, av, pv, yv = (t[valid_rows] for t in tensors)
        net = ActionOutcomeNet(x.shape[1], p.d_model, len(ARMS), p.dropout)
        optimiser = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        generator = torch.Generator().manual_seed(seed)
        best_loss, best_epoch, best_state = float("inf"), 0, net.state_dict()
        for epoch in range(1, p.max_epochs + 1):
            net.train()
            order = torch.randperm(len(xf), generator=generator)
            for start in range(0, len(order), p.batch_size):
                idx = order[start : start + p.batch_size]
                loss = action_outcome_loss(net(xf[idx]), af[idx], pf[idx], yf[idx], self.kind, p.ipw_clip)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
            net.eval()
            with torch.inference_mode():
                valid_loss = float(action_outcome_loss(net(xv), av, pv, yv, self.kind, p.ipw_clip))
            if valid_loss < best_loss - 1e-6:
                best_loss, best_epoch = valid_loss, epoch
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            elif epoch - best_epoch >= p.patience:
                break
        net.load_state_dict(best_state)
        net.eval()
        return net, best_epoch

    @torch.inference_mode()
    def predict(self, x: np.ndarray, members: int | None = None) -> np.ndarray:
        """(n, n_actions) predicted outcome of each action (the mean over the first `members` networks,
        all by default)."""
        xt = torch.from_numpy(np.asarray(x, dtype=np.float32))
        outs = []
        for net in self.nets_[:members]:
            out = net(xt)
            outs.append((torch.sigmoid(out) if self.kind == "binary" else out * self.scale_).numpy())
        return np.mean(outs, axis=0).astype(np.float64)

    def variants(self, x: np.ndarray) -> dict[str, tuple[np.ndarray, float]]:
        """The ablation of an ensemble: its first network alone (predictions, its fit seconds)."""
        if len(self.nets_) < 2:
            return {}
        return {MODEL_SINGLE: (self.predict(x, members=1), self.seconds_[0])}

    def info(self) -> dict[str, Any]:
        """Best epoch of each network."""
        return {"epochs": self.epochs_}


Learner = TLearner | NetLearner
LearnerFactory = Callable[[int], Learner]


# --------------------------------------------------------------------------------------------------------
# Cross-fitting and policies


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


# --------------------------------------------------------------------------------------------------------
# Evaluation


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
    log: Callable[[str], None] | None = None,
) -> OutcomeResult:
    """Cross-fits the learned policies for one outcome and estimates every policy's value.

    Args:
        frame: from `load_hillstrom`.
        outcome: "visit", "conversion" or "spend".
        folds: outer folds of the cross-fitting.
        inner_folds: folds inside the training folds for the conservative policies' thresholds (< 2: no
            conservative policies).
        seed: seed of the folds, LightGBM, the network and the bootstrap.
        n_boot: bootstrap resamples.
        lgbm: T-learner settings.
        net: model settings.
        learners: which of "t_learner" and "model" to fit (the T-learner is always fitted: it is DR's
            reward model).
        log: progress messages (e.g. `print`).
    """
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}; choose from {OUTCOMES}")
    say = log or (lambda _msg: None)
    kind: OutcomeKind = "binary" if outcome in BINARY_OUTCOMES else "continuous"
    action = frame["action"].to_numpy(dtype=np.int64)
    y = frame[outcome].to_numpy(dtype=np.float64)
    propensity = np.full(len(frame), LOGGING_PROPENSITY)
    logged = LoggedBandit(action=action, propensity=propensity, reward=y, n_actions=len(ARMS))
    fold = fold_ids(action, y, folds, seed)

    # The feature design (categories, scales) is fitted on each fold's training rows.
    x_all = _design_per_fold(frame, fold)

    def t_factory(k: int) -> Learner:
        return TLearner(kind, lgbm, seed=seed + k)

    def net_factory(k: int) -> Learner:
        return NetLearner(kind, net, seed=seed + k)

    factories: dict[str, LearnerFactory] = {"t_learner": t_factory, "model": net_factory}
    names = {"t_learner": (T_LEARNER, T_CONSERVATIVE), "model": (MODEL, MODEL_CONSERVATIVE)}
    policies: dict[str, np.ndarray] = {}
    fit_seconds: dict[str, float] = {}
    details: dict[str, Any] = {"folds": folds, "inner_folds": inner_folds, "rows": len(frame)}
    q_hat = None
    for key in ("t_learner", *[k for k in learners if k != "t_learner"]):
        plain, conservative = names[key]
        say(f"{outcome}: cross-fitting {plain} over {folds} folds")
        pred, seconds, info, variants = _cross_fit_features(factories[key], x_all, action, propensity, y)
        if key == "t_learner":
            q_hat = pred
        if key in learners:
            policies[plain] = pred.argmax(axis=1)
            fit_seconds[plain] = seconds
            details[plain] = {"folds": info}
            for name, (variant_pred, variant_seconds) in variants.items():
                policies[name] = variant_pred.argmax(axis=1)
                fit_seconds[name] = variant_seconds
        if key in learners and inner_folds >= 2:
            say(f"{outcome}: choosing the thresholds of {conservative} ({inner_folds} inner folds)")
            policy, extra, choices = _conservative_features(
                factories[key], pred, x_all, action, propensity, y, inner_folds, seed
            )
            policies[conservative] = policy
            fit_seconds[conservative] = seconds + extra
            details[conservative] = {"folds": choices}
    assert q_hat is not None
    details["q_hat_mean"] = dict(zip(ACTION_NAMES, q_hat.mean(axis=0).tolist(), strict=True))

    kinds = {name: ("model" if name in MODEL_POLICIES else "baseline") for name in policies}
    for name, a in CONSTANTS.items():
        policies[name] = np.full(len(frame), a, dtype=np.int64)
        kinds[name] = "baseline"
        fit_seconds[name] = 0.0
    policies[UNIFORM] = np.full((len(frame), len(ARMS)), 1.0 / len(ARMS))
    kinds[UNIFORM] = "baseline"
    fit_seconds[UNIFORM] = 0.0

    say(f"{outcome}: bootstrap ({n_boot} resamples)")
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
            _shares(np.eye(len(ARMS))[action]),
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


def _design_per_fold(frame: pd.DataFrame, fold: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per outer fold k: (features of all rows with the design fitted on the other folds, its mask)."""
    out = {}
    for k in np.unique(fold):
        design = Design.fit(frame.loc[fold != k])
        out[int(k)] = (design.transform(frame), fold != k)
    return out


def _cross_fit_features(
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


def _conservative_features(
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


# --------------------------------------------------------------------------------------------------------
# The whole run, its report and its files


@dataclass
class BenchmarkResult:
    """One run: the data, the arms, the uplift and the policies of each outcome."""

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


def run_benchmark(
    path: Path | str,
    outcomes: Sequence[str] = ("conversion",),
    *,
    folds: int = 5,
    inner_folds: int = 3,
    seed: int = 0,
    n_boot: int = 1_000,
    lgbm: LGBMParams | None = None,
    net: NetParams | None = None,
    refit_seeds: Sequence[int] = (),
    command: str = "",
    log: Callable[[str], None] | None = None,
) -> BenchmarkResult:
    """Reads the file, measures the uplift per e-mail and evaluates the policies for each outcome.

    Args:
        refit_seeds: further seeds with which the plain learned policies are cross-fitted again (other
            folds, initialisations and inner splits; no conservative policies, no bootstrap), to show how
            much their value moves with the fitting alone.
        (the others as in `evaluate_outcome`.)
    """
    start = time.perf_counter()
    frame = load_hillstrom(path)
    lgbm, net = lgbm or LGBMParams(), net or NetParams()
    results = []
    for o in outcomes:
        result = evaluate_outcome(
            frame,
            o,
            folds=folds,
            inner_folds=inner_folds,
            seed=seed,
            n_boot=n_boot,
            lgbm=lgbm,
            net=net,
            log=log,
        )
        result.refits = [refit_summary(result, seed)]
        for s in refit_seeds:
            if log:
                log(f"{o}: refit with seed {s}")
            again = evaluate_outcome(
                frame, o, folds=folds, inner_folds=0, seed=s, n_boot=0, lgbm=lgbm, net=net, log=None
            )
            result.refits.append(refit_summary(again, s, versus=result.best_constant))
        results.append(result)
    return BenchmarkResult(
        command=command,
        date=dt.date.today().isoformat(),
        data=_display_path(Path(path)),
        rows=len(frame),
        shares=arm_shares(frame),
        rates=arm_rates(frame, n_boot=n_boot, seed=seed),
        uplift=uplift_table(frame, n_boot=n_boot, seed=seed),
        outcomes=results,
        settings={
            "folds": folds,
            "inner_folds": inner_folds,
            "seed": seed,
            "n_boot": n_boot,
            "lightgbm": asdict(lgbm),
            "model": asdict(net),
        },
        seconds=time.perf_counter() - start,
    )


def refit_summary(result: OutcomeResult, seed: int, versus: str | None = None) -> dict[str, Any]:
    """IPS and SNIPS point differences of the plain learned policies against a constant policy.

    Args:
        result: one cross-fitting.
        seed: its seed.
        versus: the constant policy (default: the result's best constant).
    """
    versus = versus or result.best_constant
    base = result.policy(versus).values
    out: dict[str, Any] = {"seed": seed, "versus": versus}
    for name in (MODEL, MODEL_SINGLE, T_LEARNER):
        if any(p.name == name for p in result.policies):
            values = result.policy(name).values
            out[name] = {e: values[e].point - base[e].point for e in ("ips", "snips")}
    return out


def _display_path(path: Path) -> str:
    """The path relative to the repository where it is beside or inside it, else as given."""
    resolved = path.resolve()
    for base, prefix in ((REPO, ""), (REPO.parent, "../")):
        if resolved.is_relative_to(base):
            return prefix + resolved.relative_to(base).as_posix()
    return str(path)


def _scale(outcome: str) -> tuple[float, str, int]:
    """(multiplier, unit, decimals) of an outcome's values in the tables."""
    return (1.0, "$ per customer", 3) if outcome == "spend" else (100.0, "%", 3)


def _share(x: float) -> str:
    """A share in whole percent, "<1%" for a small non-zero share."""
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def _fmt(ci: Interval, outcome: str) -> str:
    m, _, d = _scale(outcome)
    return f"{ci.point * m:.{d}f} [{ci.lo * m:.{d}f}, {ci.hi * m:.{d}f}]"


def _fmt_signed(ci: Interval, outcome: str) -> str:
    m, _, d = _scale(outcome)
    return f"{ci.point * m:+.{d}f} [{ci.lo * m:+.{d}f}, {ci.hi * m:+.{d}f}]"


def verdict_text(result: OutcomeResult) -> str:
    """Which policy is best, and whether the model beats the best constant and the best baseline."""
    o = result.outcome
    lines = [
        f"Best policy by IPS point value: **{result.best_policy}**; best constant policy: "
        f"**{result.best_constant}**; best baseline: **{result.best_baseline}**."
    ]
    for versus in dict.fromkeys((result.best_constant, result.best_baseline)):
        row = next((p for p in result.paired if p.policy == MODEL and p.versus == versus), None)
        if row is None:
            continue
        ips, snips = row.differences["ips"], row.differences["snips"]
        state = {
            "better": "beats",
            "worse": "is worse than",
            "same actions": "takes the same actions as",
        }.get(row.verdict, "is not distinguishable from")
        lines.append(
            f"The model {state} {versus} (IPS {_fmt_signed(ips, o)}, SNIPS {_fmt_signed(snips, o)})."
        )
    model_row = next(
        (p for p in result.paired if p.policy == MODEL and p.versus == result.best_baseline), None
    )
    if model_row is not None and model_row.verdict != "better":
        lines.append("**The model does not (yet) beat the best baseline on this task.**")
        tried = [
            f"the plain network (`{MODEL_SINGLE}`) before averaging several"
            if any(p.name == MODEL_SINGLE for p in result.policies)
            else "",
            f"a threshold that keeps the best constant e-mail unless the gain is large "
            f"(`{MODEL_CONSERVATIVE}`)"
            if any(p.name == MODEL_CONSERVATIVE for p in result.policies)
            else "",
        ]
        tried = [t for t in tried if t]
        if tried:
            lines.append(f"Tried, without a distinguishable gain over it: {'; '.join(tried)}.")
    elif model_row is not None:
        lines.append("**The model beats the best baseline on this task.**")
    return " ".join(lines)


def markdown(result: BenchmarkResult) -> str:
    """The BENCHMARKS.md section, markers included."""
    sh = result.shares
    shares = ", ".join(f"{arm} {sh.counts[arm]:,} ({sh.shares[arm]:.2%})" for arm in ARMS)
    s = result.settings
    lines = [
        MARKER_START,
        "## Next best action on Hillstrom's randomised e-mail test",
        "",
        f"Written by `benchmarks/hillstrom.py` on {result.date} in {result.seconds / 60:.1f} min:",
        "",
        f"    {result.command}",
        "",
        f"Data: `{result.data}`, {result.rows:,} customers. Arms: {shares}; chi-square test of 1/3 each: "
        f"p = {sh.p_value:.2f}, so the logging propensity is 1/3 for everyone. Intervals: 95 % percentile "
        f"bootstrap over customers ({s['n_boot']:,} resamples, seed {s['seed']}).",
        "",
        "### Rates per arm",
        "",
        "| arm | customers | visit % | conversion % | spend $ | full set: visit % / conversion % / spend $ |",
        "|---|---|---|---|---|---|",
    ]
    rates = {(r.arm, r.outcome): r for r in result.rates}
    for arm in ARMS:
        cells = " | ".join(_fmt(rates[(arm, o)].rate, o) for o in OUTCOMES)
        full = FULL_SET_RATES[arm]
        lines.append(
            f"| {arm} | {rates[(arm, 'visit')].n:,} | {cells} | "
            f"{full['visit'] * 100:.2f} / {full['conversion'] * 100:.2f} / {full['spend']:.3f} |"
        )
    lines += [
        "",
        "The full set is the 64,000 customers of SOURCE.md; this file is a 70 % random subset of it.",
        "",
        "### Uplift per e-mail over No E-Mail",
        "",
        "Percentage points for visit and conversion, dollars per customer for spend; the bootstrap resamples "
        "customers and takes both arms' means on the same resample.",
        "",
        "| e-mail | outcome | uplift [95 % bootstrap CI] | normal 95 % CI | relative | full set |",
        "|---|---|---|---|---|---|",
    ]
    for u in result.uplift:
        m, _, d = _scale(u.outcome)
        lines.append(
            f"| {u.arm} | {u.outcome} | {_fmt_signed(u.difference, u.outcome)} | "
            f"[{u.normal.lo * m:+.{d}f}, {u.normal.hi * m:+.{d}f}] | {u.relative:+.0%} | "
            f"{u.full_set * m:+.{d}f} |"
        )
    for o in result.outcomes:
        lines += _outcome_markdown(o)
    lgbm, net = s["lightgbm"], s["model"]
    lines += [
        "",
        "### How the policies were learned, and what was tried",
        "",
        f"- Cross-fitting over {s['folds']} folds (stratified by arm and outcome): each customer's action "
        "comes from models fitted on the other folds; features (one-hot zip code, channel and history "
        "segment; standardised recency, log history, mens, womens, newbie) are fitted on the training folds "
        "too. DR's reward model is the cross-fitted T-learner. Fit seconds: one thread, summed over the "
        "folds; a conservative policy's time includes its learner's outer fits.",
        f"- The model (`{MODEL}`): a 2-layer GELU encoder (width {net['d_model']}, dropout "
        f"{net['dropout']}) -> LayerNorm state -> linear action head with one sigmoid per action, trained "
        "with IPS-weighted BCE on the logged action only (the action term of `journey_loss`; for spend a "
        "linear output and IPS-weighted squared error), AdamW "
        f"(lr {net['lr']}, weight decay {net['weight_decay']}), early stopping on a 20 % inner split; the "
        f"average of {net['n_seeds']} such networks (other initialisations and inner splits). "
        f"`{MODEL_SINGLE}` is its first network alone.",
        f"- `{T_LEARNER}`: one LightGBM model per arm ({lgbm['num_leaves']} leaves, at least "
        f"{lgbm['min_child_samples']} rows per leaf, L2 {lgbm['lambda_l2']}, learning rate "
        f"{lgbm['learning_rate']}), early-stopped on a 20 % inner split of the arm.",
        "- Conservative policies: the training folds' best constant e-mail unless the learner predicts "
        "another action better by more than a threshold, chosen by IPS on the training folds from "
        f"predictions cross-fitted over {s['inner_folds']} inner folds (candidates: 0, quantiles of the "
        "predicted gains, infinity = the constant policy).",
        "- The bootstrap holds the policies and reward models fixed, so its intervals carry the noise of "
        "the evaluation, not of the fitting; the refits above show how far the fitting alone moves a "
        "learned policy's value. The best constant policy is picked by its IPS on all customers, after "
        "seeing the outcomes: a slight advantage for it in the paired comparisons.",
        MARKER_END,
    ]
    return "\n".join(lines)


def _outcome_markdown(o: OutcomeResult) -> list[str]:
    """The policy table, the paired differences, the refits and the verdict of one outcome."""
    _, unit, _ = _scale(o.outcome)
    lines = [
        "",
        f"### Policy value: {o.outcome} ({unit})",
        "",
        "| policy | IPS [95 % CI] | SNIPS [95 % CI] | DR [95 % CI] | send rate | Mens/Womens/none | fit s |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in o.policies:
        sh = p.action_shares
        mix = " / ".join(_share(sh[a]) for a in ACTION_NAMES)
        seconds = "" if p.fit_seconds is None else f"{p.fit_seconds:.1f}"
        if p.kind == "reference":
            cells = f"{_fmt(p.values['ips'], o.outcome)} (observed mean) | | "
        else:
            cells = " | ".join(_fmt(p.values[e], o.outcome) for e in ESTIMATORS)
        name = f"**{p.name}**" if p.name == MODEL else p.name
        lines.append(f"| {name} | {cells} | {p.send_rate:.0%} | {mix} | {seconds} |")
    lines += [
        "",
        f"Paired differences ({unit}; both policies on the same resampled customers; the verdict needs IPS "
        "and SNIPS to agree):",
        "",
        "| policy | versus | actions differ | IPS diff [95 % CI] | SNIPS diff [95 % CI] | DR diff [95 % CI] "
        "| verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for pair in o.paired:
        diffs = " | ".join(_fmt_signed(pair.differences[e], o.outcome) for e in PAIRED_ESTIMATORS)
        lines.append(
            f"| {pair.policy} | {pair.versus} | {_share(pair.disagreement)} | {diffs} | {pair.verdict} |"
        )
    if len(o.refits) > 1:
        m, _, d = _scale(o.outcome)
        names = [n for n in (MODEL, MODEL_SINGLE, T_LEARNER) if n in o.refits[0]]
        lines += [
            "",
            f"Refits: IPS / SNIPS point difference against {o.refits[0]['versus']} when the learned policies "
            "are cross-fitted again with another seed (other folds, initialisations and inner splits):",
            "",
            "| seed | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for r in o.refits:
            cells = " | ".join(
                f"{r[n]['ips'] * m:+.{d}f} / {r[n]['snips'] * m:+.{d}f}" if n in r else "" for n in names
            )
            lines.append(f"| {r['seed']} | {cells} |")
    lines += ["", verdict_text(o)]
    return lines


def update_markdown(path: Path, section: str) -> None:
    """Writes `section` (markers included) between the Hillstrom markers of `path`, keeping the rest."""
    update_section(path, section, MARKER_START, MARKER_END)


def _jsonable(value: Any) -> Any:
    """Intervals as {point, lo, hi}; non-finite floats as strings; containers recursively."""
    if isinstance(value, Interval):
        return {k: _jsonable(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else str(float(value))
    if isinstance(value, np.integer):
        return int(value)
    return value


def to_json(result: BenchmarkResult) -> dict[str, Any]:
    """The run as plain JSON-able data (with versions and the machine)."""
    outcomes = {}
    for o in result.outcomes:
        outcomes[o.outcome] = {
            "policies": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "values": p.values,
                    "send_rate": p.send_rate,
                    "action_shares": p.action_shares,
                    "fit_seconds": p.fit_seconds,
                }
                for p in o.policies
            ],
            "paired": [
                {
                    "policy": p.policy,
                    "versus": p.versus,
                    "differences": p.differences,
                    "verdicts": {e: p.verdict_of(e) for e in PAIRED_ESTIMATORS},
                    "verdict": p.verdict,
                    "actions_differ": p.disagreement,
                }
                for p in o.paired
            ],
            "best_constant": o.best_constant,
            "best_policy": o.best_policy,
            "best_baseline": o.best_baseline,
            "verdict": verdict_text(o),
            "details": o.details,
        }
    return _jsonable(
        {
            "benchmark": "hillstrom",
            "command": result.command,
            "date": result.date,
            "data": result.data,
            "rows": result.rows,
            "arm_shares": asdict(result.shares),
            "rates": [
                {"arm": r.arm, "outcome": r.outcome, "n": r.n, "rate": r.rate, "full_set": r.full_set}
                for r in result.rates
            ],
            "uplift": [
                {
                    "arm": u.arm,
                    "outcome": u.outcome,
                    "difference": u.difference,
                    "normal": u.normal,
                    "relative": u.relative,
                    "full_set": u.full_set,
                }
                for u in result.uplift
            ],
            "outcomes": outcomes,
            "settings": result.settings,
            "seconds": result.seconds,
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "torch": torch.__version__,
                "lightgbm": lgb.__version__,
                "numpy": np.__version__,
                "pandas": pd.__version__,
            },
        }
    )


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Uplift per e-mail and learned next-best-action policies on Hillstrom."
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Hillstrom CSV export")
    p.add_argument(
        "--outcome", nargs="+", choices=OUTCOMES, default=["conversion"], help="reward(s) of the policies"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-fitting folds")
    p.add_argument(
        "--inner-folds",
        type=int,
        default=3,
        help="folds inside the training folds (< 2: no conservative policies)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-boot", type=int, default=1_000, help="bootstrap resamples")
    p.add_argument("--model-seeds", type=int, default=5, help="networks averaged in the model")
    p.add_argument(
        "--refit-seeds",
        type=int,
        nargs="*",
        default=[],
        help="cross-fit the learned policies again with these seeds to show the fitting noise",
    )
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument("--markdown", type=Path, help="write the section into this file between the markers")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark, prints the Markdown section, writes the JSON and optionally the Markdown file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.folds < 2:
        print("--folds must be at least 2", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    command = " ".join([".venv/bin/python benchmarks/hillstrom.py", *map(shlex.quote, argv)])
    try:
        result = run_benchmark(
            args.data,
            args.outcome,
            folds=args.folds,
            inner_folds=args.inner_folds,
            seed=args.seed,
            n_boot=args.n_boot,
            net=NetParams(n_seeds=args.model_seeds),
            refit_seeds=args.refit_seeds,
            command=command,
            log=lambda msg: print(msg, file=sys.stderr, flush=True),
        )
    except (FileNotFoundError, HillstromDataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    section = markdown(result)
    print(section)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(to_json(result), indent=2) + "\n")
    print(f"\nwrote {args.json}", file=sys.stderr)
    if args.markdown:
        update_markdown(args.markdown, section)
        print(f"wrote {args.markdown}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
