"""The data of the Hillstrom benchmark (`benchmarks.hillstrom`): the arms, outcomes and policy names of
the protocol, the file read and validated, its split into train and test rows, the uplift per e-mail, and
the customer features as a matrix."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from features.policy import in_control_group
from stats import Interval, bootstrap_ci, paired_bootstrap, ratio_of_means

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
    """Reads and validates a Hillstrom export; adds `action` (index into ARMS) and `row_id`.

    The export has no customer id, so a row's id is its position in the file (0 for the first row after
    the header): what `split_by_row_id` hashes.

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
    frame["row_id"] = np.arange(len(frame), dtype=np.int64)
    return frame.reset_index(drop=True)


def split_by_row_id(
    frame: pd.DataFrame, test_share: float, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test rows of one file: a row is a test row when sha256 of the salt `hillstrom-split-{seed}`
    and its `row_id`, read as a number in [0, 1), is below `test_share`.

    The rule of the service's control group (`features.policy.in_control_group`): a row's side depends
    on its id and the seed alone, not on the other rows, the row order or a random stream, so the same
    file and seed give the same split on any machine and library version.

    Raises:
        ValueError: `test_share` outside (0, 1).
    """
    if not 0 < test_share < 1:
        raise ValueError(f"the test share must lie strictly between 0 and 1, not {test_share}")
    ids = [str(i) for i in frame["row_id"].tolist()]
    test = in_control_group(ids, test_share, f"hillstrom-split-{seed}")
    return frame.loc[~test].reset_index(drop=True), frame.loc[test].reset_index(drop=True)


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
