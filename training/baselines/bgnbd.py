"""BG/NBD, the buy-till-you-die model (Fader, Hardie & Lee 2005), as a baseline of the purchase propensities.

Four numbers for a whole customer base: purchase rates lambda ~ Gamma(r, rate alpha) while a customer is
"alive", and after each repeat purchase a dropout with probability p ~ Beta(a, b). From a customer's
frequency, recency and age alone it gives the probability of a purchase in the next h days, which is what
the purchase heads predict; a propensity model that cannot beat it has learned nothing beyond recency and
frequency. The parameters are fitted by pymc-marketing's `BetaGeoModel` (maximum likelihood: its MAP under
flat priors; `lifetimes` is archived); the predictions are closed forms of the four numbers, so that a saved
model is plain numbers and scoring needs neither PyMC nor PyTensor.
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pandas as pd

from predictor.served_heads import BGNBD as ServedBGNBD
from predictor.served_heads import AggregateHead, Calibrator, rfm_inputs
from training.baselines.calibration import Calibration, choose_calibrator
from training.baselines.common import _Saveable
from training.data import FeatureData
from training.interface import Predictions

log = logging.getLogger(__name__)

PARAMS = ("r", "alpha", "a", "b")
_PURCHASE = re.compile(r"purchase_(\d+)d")


def latest_rows(data: FeatureData) -> np.ndarray:
    """Positions of each customer's latest cutoff, in row order. The model is fitted on one row per
    customer: the rows of one customer at several cutoffs share their history, and counting it once per
    cutoff would weigh long-lived customers many times."""
    frame = pd.DataFrame({"customer": data.customer_id, "cutoff": data.cutoff_ms})
    last = frame.sort_values("cutoff", kind="stable").drop_duplicates("customer", keep="last")
    return np.sort(last.index.to_numpy())


class BGNBD(_Saveable):
    """BG/NBD fitted on the training customers; one head per purchase window of the build.

    Heads: each `purchase_<h>d` label of the build, as 1 - P(no purchase in (T, T + h]), then optionally
    calibrated on the validation split. `churn_<d>d` is left out (`skipped_` says why): it means no activity
    of any kind in d days (`features.labels`), and the model knows purchases only. So are "unsubscribe" and
    the other labels. The four parameters are fitted on each training customer's latest cutoff with at
    least one day of history (a seeded sample of `max_customers` at most: four numbers need no more).
    Without `min_customers` such customers, or without a repeat purchase among them, the fit is degenerate
    and there are no heads.

    Args:
        calibration: per head, on the validation split ("auto", "platt", "isotonic" or "none": as
            `LightGBMAggregates`; a Platt map keeps the model's ranking).
        min_customers: customers the fit needs.
        max_customers: customers the fit reads at most.
        min_calibration_rows: labelled validation rows (both labels) a calibrator needs.
        seed: seed of the sample and of the calibration's halves.
    """

    name = "bg_nbd"

    def __init__(
        self,
        calibration: Calibration = "platt",
        min_customers: int = 50,
        max_customers: int = 200_000,
        min_calibration_rows: int = 500,
        seed: int = 0,
    ) -> None:
        self.calibration = calibration
        self.min_customers = min_customers
        self.max_customers = max_customers
        self.min_calibration_rows = min_calibration_rows
        self.seed = seed

    def fit(self, train: FeatureData, valid: FeatureData) -> BGNBD:
        """Fits the four parameters on `train`'s customers, then each head's calibrator on `valid`."""
        if self.calibration not in get_args(Calibration):
            raise ValueError(
                f"bg_nbd: calibration must be one of {get_args(Calibration)}, not {self.calibration!r}"
            )
        if self.min_customers < 1 or self.max_customers < self.min_customers:
            raise ValueError(
                f"bg_nbd: min_customers ({self.min_customers}) must be at least 1 and at most max_customers "
                f"({self.max_customers})"
            )
        self.params_: dict[str, float] = {}
        self.heads_: dict[str, dict[str, Any]] = {}
        self.skipped_: dict[str, str] = {}
        horizons = {t: int(m.group(1)) for t in train.targets if (m := _PURCHASE.fullmatch(t))}
        for target in (*train.targets, "unsubscribe"):
            if target not in horizons:
                self.skipped_[target] = (
                    "the label means no activity of any kind, not no purchase"
                    if target.startswith("churn_")
                    else "not a purchase window"
                )
        if not horizons:  # nothing to predict: no fit (PyMC takes seconds to import)
            self.n_customers_ = 0
            return self
        frequency, recency, age = rfm_inputs(train.aggregates[latest_rows(train)])
        known = age > 0
        self.n_customers_ = int(known.sum())
        if self.n_customers_ < self.min_customers or not np.any(frequency[known] > 0):
            repeat = int(np.sum(frequency[known] > 0))
            reason = f"{self.n_customers_} training customers, {repeat} repeat buyers"
            self.skipped_.update(dict.fromkeys(horizons, reason))
            log.info("bg_nbd: no heads (%s)", reason)
            return self
        rows = np.flatnonzero(known)
        if len(rows) > self.max_customers:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, self.max_customers, replace=False))
            self.n_customers_ = len(rows)
        self.params_ = fit_parameters(frequency[rows], recency[rows], age[rows])
        log.info("bg_nbd: %s on %d customers", self.params_, self.n_customers_)
        for target, h in horizons.items():
            label = np.asarray(valid.targets.get(target, np.full(len(valid), np.nan)), dtype=np.float64)
            raw = 1.0 - self.probability_no_purchase(valid, h)
            known_v = np.isfinite(label)
            info: dict[str, Any] = {"valid_rows": int(known_v.sum())}
            calibrator = choose_calibrator(
                self.calibration, raw[known_v], label[known_v], info,
                min_rows=self.min_calibration_rows, min_gain=0.0, seed=self.seed,
            )  # fmt: skip
            self.heads_[target] = {"horizon_days": h, "calibrator": calibrator, "info": info}
        return self

    def _model(self, days: float) -> ServedBGNBD:
        return ServedBGNBD(**{k: float(self.params_[k]) for k in PARAMS}, days=float(days))

    def probability_alive(self, data: FeatureData) -> np.ndarray:
        """(n,) P(alive at the cutoff) (`predictor.served_heads.BGNBD.probability_alive`)."""
        return self._model(0.0).probability_alive(data.aggregates)

    def probability_no_purchase(self, data: FeatureData, days: float) -> np.ndarray:
        """(n,) P(no purchase in (T, T + days]) (`predictor.served_heads.BGNBD.probability_no_purchase`)."""
        return self._model(days).probability_no_purchase(data.aggregates, days)

    def served(self, target: str) -> AggregateHead:
        """A fitted head as the composite model serves it (and as `predict` scores it)."""
        head = self.heads_[target]
        return AggregateHead(calibrator=head["calibrator"], info={"model": "bg_nbd"},
                             bgnbd=self._model(head["horizon_days"]))  # fmt: skip

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        """The probability of a purchase in each head's window, calibrated where a calibrator was fitted."""
        return Predictions(propensity={t: self.served(t).predict(data.aggregates) for t in self.heads_})

    def save(self, path: Path) -> None:
        """Writes everything (the four parameters, each head's window and calibrator) to `meta.json`."""
        heads = {
            t: {**h, "calibrator": None if h["calibrator"] is None else asdict(h["calibrator"])}
            for t, h in self.heads_.items()
        }
        fitted = {
            "params": self.params_,
            "heads": heads,
            "skipped": self.skipped_,
            "n_customers": self.n_customers_,
        }
        self._write_meta(Path(path), fitted)

    @classmethod
    def load(cls, path: Path) -> BGNBD:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        self.params_, self.skipped_ = fitted["params"], fitted["skipped"]
        self.n_customers_ = fitted["n_customers"]
        self.heads_ = {
            t: {**h, "calibrator": None if h["calibrator"] is None else Calibrator(**h["calibrator"])}
            for t, h in fitted["heads"].items()
        }
        return self


def fit_parameters(frequency: np.ndarray, recency: np.ndarray, age: np.ndarray) -> dict[str, float]:
    """Maximum-likelihood r, alpha, a, b: pymc-marketing's `BetaGeoModel` fitted by MAP (L-BFGS on the log
    parameters) under flat priors, so that the prior does not pull them (its default priors suit time in
    weeks, not days). PyTensor compiles the likelihood with the C compiler, once, then caches it in
    ~/.pytensor (on 40,000 customers and two busy cores: 64 s the first time, 7 s after; without a compiler
    PyTensor falls back to Python and took 530 s). Imported here: importing PyMC takes 13 s.
    """
    import pytensor
    from pymc_extras.prior import Prior
    from pymc_marketing.clv import BetaGeoModel

    if not pytensor.config.cxx:
        log.warning("bg_nbd: PyTensor has no C compiler (g++); the fit runs in Python, about 80 times slower")
    frame = pd.DataFrame(
        {"customer_id": np.arange(len(frequency)), "frequency": frequency, "recency": recency, "T": age}
    )
    model = BetaGeoModel(model_config={k: Prior("HalfFlat") for k in PARAMS})
    posterior = model.fit(data=frame, method="map", progressbar=False)["posterior"]
    return {k: float(np.asarray(posterior[k]).ravel()[0]) for k in PARAMS}
