"""Calibration: the reliability curve (equal-width bins) and the expected calibration error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from stats.averages import unthreaded_dot


@dataclass(frozen=True)
class ReliabilityCurve:
    """Calibration by equal-width bins of the predicted probability.

    Attributes:
        edges: (n_bins + 1,) bin edges on [0, 1].
        count: (n_bins,) rows (or weight) per bin.
        mean_predicted: (n_bins,) mean predicted probability per bin, NaN where empty.
        fraction_positive: (n_bins,) observed share of positives per bin, NaN where empty.
    """

    edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray


def _bins(p: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin b holds b/n_bins <= p < (b+1)/n_bins; p = 1 falls in the last bin."""
    return np.clip(np.floor(np.asarray(p, dtype=np.float64) * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability_curve(
    y: np.ndarray, p: np.ndarray, n_bins: int = 10, sample_weight: np.ndarray | None = None
) -> ReliabilityCurve:
    """Per equal-width bin of p: the number of rows, mean(p) and mean(y) (a reliability diagram's data)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    b = _bins(p, n_bins)
    count = np.bincount(b, weights=w, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(count > 0, np.bincount(b, weights=w * p, minlength=n_bins) / count, np.nan)
        frac = np.where(count > 0, np.bincount(b, weights=w * y, minlength=n_bins) / count, np.nan)
    return ReliabilityCurve(np.linspace(0.0, 1.0, n_bins + 1), count, mean_p, frac)


def expected_calibration_error(
    y: np.ndarray,
    p: np.ndarray,
    n_bins: int = 10,
    sample_weight: np.ndarray | None = None,
    *,
    binning: Literal["equal_width", "equal_mass"] = "equal_width",
) -> float:
    """ECE = sum_b (n_b / N) * |mean(y)_b - mean(p)_b| over `n_bins` bins of p.

    Binary: `p` is (n,) P(y = 1) and bins are over it. Multiclass: `p` is (n, C) and the top-label ECE is
    returned (bins over the largest probability, against whether its class is right).

    Bins: "equal_width" cuts [0, 1] into `n_bins` equal intervals (those of `reliability_curve`; empty bins
    contribute nothing), as the evaluation reports it. "equal_mass" cuts the rows, sorted by p, into
    `n_bins` groups of (nearly) equal size, so that rare outcomes (unsubscribing: well under 1 %) do not all
    land in one bin; the LightGBM baseline checks its calibration with it.

    Args:
        y: (n,) 0/1 labels, or class indices for (n, C) probabilities.
        p: predicted probabilities, (n,) or (n, C).
        n_bins: number of bins.
        sample_weight: optional (n,) row weights.
        binning: "equal_width" or "equal_mass".

    Returns:
        The weighted mean gap between predicted and observed rates; NaN without rows.
    """
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 2:
        label = np.asarray(y)
        y, p = (p.argmax(axis=1) == label).astype(np.float64), p.max(axis=1)
    if binning == "equal_mass":
        return _equal_mass_ece(np.asarray(y), p, n_bins, sample_weight)
    if binning != "equal_width":
        raise ValueError(f"binning must be equal_width or equal_mass, not {binning!r}")
    curve = reliability_curve(y, p, n_bins, sample_weight)
    total = curve.count.sum()
    if total <= 0:
        return float("nan")
    gap = np.abs(np.nan_to_num(curve.fraction_positive - curve.mean_predicted))
    return unthreaded_dot(curve.count / total, gap)


def _equal_mass_ece(y: np.ndarray, p: np.ndarray, n_bins: int, sample_weight: np.ndarray | None) -> float:
    """The ECE over bins of (nearly) equal row counts, rows sorted by p (ties kept in row order)."""
    if len(y) == 0:
        return float("nan")
    hit = y.astype(np.float64)
    w = np.ones(len(p)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    bins = np.array_split(order, min(n_bins, len(order)))
    total = w.sum()
    ece = 0.0
    for idx in bins:
        wb = w[idx].sum()
        if wb > 0:
            ece += wb / total * abs(np.average(p[idx], weights=w[idx]) - np.average(hit[idx], weights=w[idx]))
    return float(ece)
