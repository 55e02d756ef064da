"""LightGBM on the aggregate features: stage, propensities, unsubscribing, and outcome per action."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from features.encoder import AGGREGATE_NAMES
from features.schema import ACTIONS, STAGES, Action
from predictor.served_heads import AggregateHead
from training.baselines.calibration import Calibration, choose_calibrator
from training.baselines.common import _Saveable
from training.budget import threads
from training.data import FeatureData
from training.interface import Predictions
from training.metrics import expected_calibration_error

log = logging.getLogger(__name__)

NO_SEND = ACTIONS.index(Action.NO_SEND)


# One head: a booster (or a constant where the labels allow no model) and an optional calibrator; its
# `info` records rows, rounds and calibration checks for the report. The service serves the same object.
_Head = AggregateHead


class LightGBMAggregates(_Saveable):
    """LightGBM on the aggregate features: stage, propensities, unsubscribing, and outcome per action.

    * stage: one multiclass model (`stage_proba`);
    * each propensity label of the build (`FeatureData.targets`): a binary model on every row;
    * "unsubscribe": a binary model on the rows with a logged send (not no_send), target = unsubscribed;
    * outcome per action (a T-learner): one binary model per action, no_send included, on the rows whose
      logged action is that action, target = the logged outcome. Rows are weighted by
      min(1 / logged_propensity, ipw_clip), normalised to mean 1 per action: the logging policy sends an
      action mostly to the customers it suits, so unweighted each model would learn the customers it
      already gets; inverse-propensity weights make each arm stand for every customer, where its
      predictions are used. Clipping bounds the weight of a row the policy almost never sent the action
      to (propensity 0.02 -> 50), trading a little bias for much less variance. An action with fewer than
      `min_action_rows` training rows uses the no_send model (its uplift is then zero), recorded in
      `fallback_`; without enough no_send rows, a model pooled over all logged rows stands in.

    Every model stops early on the validation split (same weights). Binary heads are checked for
    calibration on the validation split: with `calibration="auto"`, Platt and isotonic calibrators are
    cross-fitted on its two halves, and the one that lowers the held-out log loss (by more than
    `calibration_min_gain`, relative) is refitted on the whole split; "platt" / "isotonic" force one and
    "none" skips. Calibrating on the later validation window also corrects part of a drift of the base
    rate between the training and the test window. The evidence (ECE before and after, log losses) is
    kept in `heads_[name].info`. The stage head is reported (top-label ECE) but not recalibrated.
    Deterministic: fixed seed, `deterministic=True`, column-wise histograms, `num_threads` threads.

    Args:
        learning_rate: boosting learning rate.
        num_leaves: leaves per tree.
        min_child_samples: rows per leaf at least.
        max_rounds: boosting rounds at most (early stopping usually ends sooner).
        early_stopping_rounds: rounds without improvement of the validation loss before stopping.
        lambda_l2: L2 regularisation of leaf values.
        ipw_clip: largest inverse-propensity weight.
        min_action_rows: training rows an action needs for its own outcome model.
        calibration: "auto", "platt", "isotonic" or "none".
        min_calibration_rows: validation rows (with both labels) a calibrator needs.
        calibration_min_gain: with "auto", the relative drop of the cross-fitted log loss a calibrator
            must bring (0: any held-out improvement; the cross-fit already guards against noise).
        seed: random seed.
        num_threads: LightGBM threads (0: `training.budget.threads()`, the free cores of this process).
    """

    name = "lightgbm_aggregates"

    def __init__(
        self,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        min_child_samples: int = 100,
        max_rounds: int = 1000,
        early_stopping_rounds: int = 50,
        lambda_l2: float = 1.0,
        ipw_clip: float = 50.0,
        min_action_rows: int = 300,
        calibration: Calibration = "auto",
        min_calibration_rows: int = 500,
        calibration_min_gain: float = 0.0,
        seed: int = 0,
        num_threads: int = 2,
    ) -> None:
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.max_rounds = max_rounds
        self.early_stopping_rounds = early_stopping_rounds
        self.lambda_l2 = lambda_l2
        self.ipw_clip = ipw_clip
        self.min_action_rows = min_action_rows
        self.calibration = calibration
        self.min_calibration_rows = min_calibration_rows
        self.calibration_min_gain = calibration_min_gain
        self.seed = seed
        self.num_threads = num_threads

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, train: FeatureData, valid: FeatureData) -> LightGBMAggregates:
        """Trains every head on `train`, stopping early and calibrating on `valid`."""
        if self.calibration not in ("auto", "platt", "isotonic", "none"):
            raise ValueError(f"calibration must be auto, platt, isotonic or none, not {self.calibration!r}")
        n_features = train.aggregates.shape[1]
        self.feature_names_ = (
            list(AGGREGATE_NAMES)
            if n_features == len(AGGREGATE_NAMES)
            else [f"f{i}" for i in range(n_features)]
        )
        self.heads_: dict[str, _Head] = {}
        self.fallback_: dict[str, str] = {}

        def split(data: FeatureData, mask: np.ndarray, label: np.ndarray, weighted: bool = False) -> _Rows:
            weight = None
            if weighted:
                weight = np.minimum(1.0 / data.logged_propensity[mask], self.ipw_clip)
                weight = weight / weight.mean() if len(weight) else weight
            return _Rows(data.aggregates[mask].astype(np.float64), label[mask].astype(np.float64), weight)

        every_t, every_v = np.ones(len(train), dtype=bool), np.ones(len(valid), dtype=bool)
        self.heads_["stage"] = self._fit_head(
            split(train, every_t, train.stage), split(valid, every_v, valid.stage), n_class=len(STAGES)
        )
        for target in train.targets:
            mt, mv = np.isfinite(train.targets[target]), np.isfinite(valid.targets[target])
            self.heads_[target] = self._fit_head(
                split(train, mt, train.targets[target]), split(valid, mv, valid.targets[target])
            )
        sent_t, sent_v = _sent(train), _sent(valid)
        self.heads_["unsubscribe"] = self._fit_head(
            split(train, sent_t, train.unsubscribed), split(valid, sent_v, valid.unsubscribed)
        )

        logged_t, logged_v = _logged_outcome(train), _logged_outcome(valid)
        base = f"outcome_{Action.NO_SEND.value}"
        if (logged_t & (train.logged_action == NO_SEND)).sum() < self.min_action_rows:
            base = "outcome_pooled"
            self.heads_[base] = self._fit_head(
                split(train, logged_t, train.outcome, True), split(valid, logged_v, valid.outcome, True)
            )
        for index, action in enumerate(ACTIONS):
            mt = logged_t & (train.logged_action == index)
            mv = logged_v & (valid.logged_action == index)
            if mt.sum() < self.min_action_rows:
                self.fallback_[action] = base
                log.info("lightgbm: %s has %d logged rows; uses %s", action, mt.sum(), base)
                continue
            self.heads_[f"outcome_{action}"] = self._fit_head(
                split(train, mt, train.outcome, True), split(valid, mv, valid.outcome, True)
            )
        return self

    def _params(self, n_class: int) -> dict[str, Any]:
        params: dict[str, Any] = {
            "objective": "multiclass" if n_class > 2 else "binary",
            "metric": "multi_logloss" if n_class > 2 else "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_data_in_leaf": self.min_child_samples,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.num_threads or threads(),  # 0: the free cores, as the sequence model's
            "verbosity": -1,
        }
        if n_class > 2:
            params["num_class"] = n_class
        return params

    def _fit_head(self, train: _Rows, valid: _Rows, n_class: int = 2) -> _Head:
        info: dict[str, Any] = {"train_rows": len(train.y), "valid_rows": len(valid.y)}
        classes = np.unique(train.y)
        if len(classes) < 2:
            # One label only (or no rows): LightGBM has nothing to split on; the frequency is the model.
            info["model"] = "constant"
            counts = np.bincount(train.y.astype(np.int64), minlength=n_class) if len(train.y) else None
            if n_class > 2:
                freq = counts / counts.sum() if counts is not None else np.full(n_class, 1.0 / n_class)
                return _Head(None, freq.tolist(), None, info)
            return _Head(None, [float(train.y.mean()) if len(train.y) else 0.0], None, info)

        features = self.feature_names_
        dtrain = lgb.Dataset(
            train.x, label=train.y, weight=train.w, feature_name=features, free_raw_data=False
        )
        valid_sets: list[lgb.Dataset] = []
        callbacks: list[Callable[..., Any]] = []
        rounds = self.max_rounds
        if len(valid.y):
            valid_sets = [lgb.Dataset(valid.x, label=valid.y, weight=valid.w, reference=dtrain)]
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)]
        else:
            rounds = min(self.max_rounds, 100)  # nothing to stop on: a modest fixed number of rounds
        booster = lgb.train(
            self._params(n_class), dtrain, num_boost_round=rounds, valid_sets=valid_sets, callbacks=callbacks
        )
        best = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
        # Keep only the trees up to the best round, so that predict, save and load agree exactly.
        booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=best))
        info.update(model="lightgbm", rounds=best)
        head = _Head(booster, None, None, info)
        if len(valid.y):
            raw = head.raw(valid.x)
            # Equal-mass bins: a rare outcome (unsubscribing, well under 1 %) would land in one
            # equal-width bin.
            info["ece_valid_raw"] = expected_calibration_error(valid.y, raw, binning="equal_mass")
            if n_class == 2:
                head.calibrator = choose_calibrator(
                    self.calibration,
                    raw,
                    valid.y,
                    info,
                    min_rows=self.min_calibration_rows,
                    min_gain=self.calibration_min_gain,
                    seed=self.seed,
                )
                if head.calibrator is not None:
                    info["ece_valid_calibrated"] = expected_calibration_error(
                        valid.y, head.predict(valid.x), binning="equal_mass"
                    )
        return head

    # -- prediction ------------------------------------------------------------------------------------

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        """Stage probabilities, propensities and the outcome of each action; no recommendations."""
        x = data.aggregates.astype(np.float64)
        # Every head but stage and the action outcomes is a propensity (the build's targets, unsubscribe).
        names = [n for n in self.heads_ if n != "stage" and not n.startswith("outcome_")]
        propensity = {t: self.heads_[t].predict(x) for t in names}
        outcome = {}
        for action in ACTIONS:
            name = self.fallback_.get(action, f"outcome_{action}")
            if name not in outcome:
                outcome[name] = self.heads_[name].predict(x)
        return Predictions(
            stage_proba=self.heads_["stage"].predict(x).reshape(len(x), len(STAGES)),
            propensity=propensity,
            action_outcome=np.column_stack(
                [outcome[self.fallback_.get(a, f"outcome_{a}")] for a in ACTIONS]
            ).reshape(len(x), len(ACTIONS)),
        )

    # -- persistence -----------------------------------------------------------------------------------

    def served(self, head: str) -> AggregateHead:
        """The fitted head as the composite model serves it: "stage", a propensity head, or
        "outcome_<action>" (the action's own model or its fallback)."""
        if head.startswith("outcome_") and head not in self.heads_:
            head = self.fallback_[head.removeprefix("outcome_")]
        return self.heads_[head]

    def save(self, path: Path) -> None:
        """Writes each booster in LightGBM's text format and everything else to `meta.json`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        heads = {name: head.to_entry(path, name) for name, head in self.heads_.items()}
        self._write_meta(
            path, {"feature_names": self.feature_names_, "fallback": self.fallback_, "heads": heads}
        )

    @classmethod
    def load(cls, path: Path) -> LightGBMAggregates:
        """Reads what `save` wrote."""
        path = Path(path)
        self, fitted = cls._read_meta(path)
        self.feature_names_, self.fallback_ = fitted["feature_names"], fitted["fallback"]
        self.heads_ = {name: AggregateHead.from_entry(entry, path) for name, entry in fitted["heads"].items()}
        return self


@dataclass
class _Rows:
    """The rows of one head: features, labels and optional weights."""

    x: np.ndarray
    y: np.ndarray
    w: np.ndarray | None


def _sent(data: FeatureData) -> np.ndarray:
    """Rows with a logged message (not no_send) and a known unsubscribe outcome."""
    return (data.logged_action >= 0) & (data.logged_action != NO_SEND) & np.isfinite(data.unsubscribed)


def _logged_outcome(data: FeatureData) -> np.ndarray:
    """Rows with a logged decision, its outcome and a positive propensity."""
    propensity = np.nan_to_num(data.logged_propensity, nan=0.0)
    return (data.logged_action >= 0) & np.isfinite(data.outcome) & (propensity > 0)
