"""Heads served from the aggregates alone: a LightGBM booster, a logistic regression or a BG/NBD model,
with an optional calibrator, as the composite model (`predictor.composite`) serves them where they beat the
network.

These are the inference halves of the baselines of `training.baselines` (`LightGBMAggregates`,
`LogisticRF` and `BGNBD` fit them and predict through them), so a baseline scores the same in the
evaluation and in the service. They read the encoder's aggregate matrix (`predictor.predictor.
aggregate_matrix`: `AGGREGATE_NAMES` order) and nothing else. LightGBM is imported only when a booster is
loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.encoder import AGGREGATE_NAMES

_EPS = 1e-6


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.asarray(np.log(p / (1 - p)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64))))


@dataclass
class Calibrator:
    """A monotone map of a binary head's probabilities, fitted on the validation split.

    Stored as plain numbers: Platt keeps (slope, intercept) on the logit; isotonic keeps the step function's
    knots, applied by linear interpolation and clipped at the ends, as `IsotonicRegression(
    out_of_bounds="clip")` does. `training.baselines.calibration` fits it.
    """

    method: str
    x: list[float]
    y: list[float]

    def apply(self, proba: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return sigmoid(self.x[0] * logit(proba) + self.y[0])
        return np.asarray(np.interp(proba, self.x, self.y))


@dataclass
class Linear:
    """A logistic regression on log1p of some aggregates (clipped at 0), standardised.

    Attributes:
        columns: indices of the inputs in the aggregate matrix.
        mean, scale: the standardisation fitted on the training rows.
        coef, intercept: the regression.
    """

    columns: list[int]
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def inputs(self, aggregates: np.ndarray) -> np.ndarray:
        """The standardised inputs, (n, len(columns))."""
        x = np.log1p(np.maximum(np.asarray(aggregates, dtype=np.float64)[:, self.columns], 0.0))
        return np.asarray((x - np.asarray(self.mean)) / np.asarray(self.scale))

    def proba(self, aggregates: np.ndarray) -> np.ndarray:
        return sigmoid(self.inputs(aggregates) @ np.asarray(self.coef) + self.intercept)


def rfm_inputs(aggregates: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frequency, recency, T) of each row in days, as the buy-till-you-die models (and pymc-marketing's
    CLV models) define them.

    frequency: repeat purchase days (`n_purchase_days` - 1, at least 0: a basket of many invoice lines is
    one purchase); T: the customer's age at the cutoff (`tenure_days`, counted from the first event, which
    is the first purchase where purchases are all there is, as in UCI Online Retail); recency: the age at the
    last purchase, T - `days_since_last_purchase`, 0 without a repeat purchase, within [0, T]. Both day
    counts are capped at 365 by the encoder (`NEVER_DAYS`), so a customer older than a year has T = 365.
    A customer who never bought has frequency 0: the model has no state for "not yet a buyer".
    """
    agg = np.asarray(aggregates, dtype=np.float64)
    frequency = np.maximum(agg[:, AGGREGATE_NAMES.index("n_purchase_days")] - 1.0, 0.0)
    age = np.maximum(agg[:, AGGREGATE_NAMES.index("tenure_days")], 0.0)
    last = age - agg[:, AGGREGATE_NAMES.index("days_since_last_purchase")]
    recency = np.where(frequency > 0, np.clip(last, 0.0, age), 0.0)
    return frequency, recency, age


@dataclass
class BGNBD:
    """A fitted BG/NBD buy-till-you-die model (Fader, Hardie & Lee 2005): its four parameters (days), and
    the window of the head it answers: P(a purchase in the `days` after the cutoff)."""

    r: float
    alpha: float
    a: float
    b: float
    days: float

    def probability_alive(self, aggregates: np.ndarray) -> np.ndarray:
        """(n,) P(alive at the cutoff | frequency, recency, T) (Fader, Hardie & Lee 2008): 1 without a repeat
        purchase, since the model lets a customer leave only right after a repeat purchase."""
        x, t_x, age = rfm_inputs(aggregates)
        # log P(dead) / P(alive) for a repeat buyer; b + x - 1 >= b > 0 there.
        odds = np.log(self.a / (self.b + np.maximum(x, 1) - 1))
        log_odds_dead = (self.r + x) * np.log((self.alpha + age) / (self.alpha + t_x)) + odds
        return np.asarray(np.where(x > 0, sigmoid(-log_odds_dead), 1.0))

    def probability_no_purchase(self, aggregates: np.ndarray, days: float) -> np.ndarray:
        """(n,) P(no purchase in (T, T + days]) (Fader & Hardie 2019, eq. 34 with y = 0): gone, or alive
        with a rate whose posterior is Gamma(r + x, alpha + T) and no arrival in the window."""
        x, _, age = rfm_inputs(aggregates)
        alive = self.probability_alive(aggregates)
        quiet = np.exp((self.r + x) * np.log((self.alpha + age) / (self.alpha + age + days)))
        return np.asarray(1.0 - alive + alive * quiet)

    def proba(self, aggregates: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - self.probability_no_purchase(aggregates, self.days), 1e-9, 1 - 1e-9)


@dataclass
class AggregateHead:
    """One prediction target served from the aggregates: a LightGBM booster, a logistic regression, or a
    constant where the labels allowed no model; then an optional calibrator (binary heads).

    `info` is the fit's record (rows, rounds, calibration checks) for the reports; `predict` gives (n,)
    probabilities for a binary head and (n, n_classes) for a multiclass one.
    """

    booster: Any | None = None  # lightgbm.Booster
    constant: list[float] | None = None
    calibrator: Calibrator | None = None
    info: dict[str, Any] = field(default_factory=dict)
    linear: Linear | None = None
    bgnbd: BGNBD | None = None

    def raw(self, x: np.ndarray) -> np.ndarray:
        if self.linear is not None:
            return self.linear.proba(x)
        if self.bgnbd is not None:
            return self.bgnbd.proba(x)
        if self.booster is None:
            assert self.constant is not None, "an aggregate head needs a booster, a regression or a constant"
            value = np.asarray(self.constant, dtype=np.float64)
            return np.tile(value, (len(x), 1)) if len(value) > 1 else np.full(len(x), value[0])
        return np.asarray(self.booster.predict(np.asarray(x, dtype=np.float64)), dtype=np.float64)

    def predict(self, x: np.ndarray) -> np.ndarray:
        proba = self.raw(x)
        return self.calibrator.apply(proba) if self.calibrator is not None else proba

    # -- persistence: `entry` is JSON; a booster is a LightGBM text file beside it ------------------------
    def to_entry(self, folder: Path, name: str) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "constant": self.constant,
            "info": self.info,
            "calibrator": asdict(self.calibrator) if self.calibrator is not None else None,
            "linear": asdict(self.linear) if self.linear is not None else None,
            "bgnbd": asdict(self.bgnbd) if self.bgnbd is not None else None,
        }
        if self.booster is not None:
            folder.mkdir(parents=True, exist_ok=True)
            entry["model_file"] = f"{name}.txt"
            self.booster.save_model(str(folder / f"{name}.txt"))
        return entry

    @classmethod
    def from_entry(cls, entry: dict[str, Any], folder: Path) -> AggregateHead:
        booster = None
        if entry.get("model_file"):
            import lightgbm as lgb  # only where a booster is served

            booster = lgb.Booster(model_file=str(folder / entry["model_file"]))
        calibrator = Calibrator(**entry["calibrator"]) if entry.get("calibrator") else None
        linear = Linear(**entry["linear"]) if entry.get("linear") else None
        bgnbd = BGNBD(**entry["bgnbd"]) if entry.get("bgnbd") else None
        return cls(booster, entry.get("constant"), calibrator, entry.get("info", {}), linear, bgnbd)
