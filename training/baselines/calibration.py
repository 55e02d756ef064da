"""Calibrating a binary head on the validation split: Platt or isotonic, stored as plain numbers.

`choose_calibrator` picks the method (or none) as `LightGBMAggregates` documents it; its evidence (the
held-out log losses) goes to the head's `info`.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from predictor.served_heads import Calibrator, logit

Calibration = Literal["auto", "platt", "isotonic", "none"]
_EPS = 1e-6


def _log_loss(proba: np.ndarray, label: np.ndarray) -> float:
    p = np.clip(proba, _EPS, 1 - _EPS)
    return float(-np.mean(label * np.log(p) + (1 - label) * np.log(1 - p)))


def fit_calibrator(method: str, proba: np.ndarray, label: np.ndarray) -> Calibrator:
    """Fits `method` ("platt" or "isotonic") on raw probabilities and 0/1 labels; the result is the
    inference side's `predictor.served_heads.Calibrator` (plain numbers, no pickled sklearn object)."""
    if method == "platt":
        z = logit(proba)[:, None]
        model = LogisticRegression(C=1e6, solver="lbfgs", max_iter=1000).fit(z, label.astype(int))
        return Calibrator("platt", [float(model.coef_[0, 0])], [float(model.intercept_[0])])
    if method == "isotonic":
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(proba, label)
        return Calibrator("isotonic", iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())
    raise ValueError(f"unknown calibration method {method!r}")


def choose_calibrator(
    calibration: Calibration,
    raw: np.ndarray,
    label: np.ndarray,
    info: dict[str, Any],
    *,
    min_rows: int,
    min_gain: float,
    seed: int,
) -> Calibrator | None:
    """The calibrator to use, if any; the evidence goes to `info`.

    Args:
        calibration: "auto" (cross-fit Platt and isotonic on the two halves of the rows, keep the one that
            lowers the held-out log loss by more than `min_gain`, relative), "platt", "isotonic" or "none".
        raw: (n,) the head's raw probabilities on the validation split.
        label: (n,) its 0/1 labels.
        info: the head's record, written to.
        min_rows: rows (with both labels) a calibrator needs.
        min_gain: with "auto", the relative drop of the cross-fitted log loss a calibrator must bring.
        seed: seed of the halves.
    """
    info["calibration"] = "none"
    if calibration == "none":
        return None
    if len(label) < min_rows or len(np.unique(label)) < 2:
        info["calibration_skipped"] = "too few validation rows or one label only"
        return None
    if calibration in ("platt", "isotonic"):
        info["calibration"] = calibration
        return fit_calibrator(calibration, raw, label)
    # auto: cross-fit each method on the two halves of the validation split.
    half = np.random.default_rng(seed).permutation(len(label)) % 2 == 0
    info["logloss_valid_raw"] = _log_loss(raw, label)
    best, choice = info["logloss_valid_raw"] * (1 - min_gain), "none"
    for method in ("platt", "isotonic"):
        held_out = np.empty(len(label))
        for fold in (half, ~half):
            if len(np.unique(label[~fold])) < 2:
                held_out[fold] = raw[fold]
                continue
            held_out[fold] = fit_calibrator(method, raw[~fold], label[~fold]).apply(raw[fold])
        loss = _log_loss(held_out, label)
        info[f"logloss_valid_crossfit_{method}"] = loss
        if loss < best:
            best, choice = loss, method
    info["calibration"] = choice
    return None if choice == "none" else fit_calibrator(choice, raw, label)
