"""Weighted averages of per-row values: the statistics the bootstrap resamples by weighting rows."""

from __future__ import annotations

import numpy as np


def unthreaded_dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) without BLAS: a threaded BLAS dot stalls for milliseconds on a busy machine, and the
    bootstrap calls this thousands of times."""
    return float(np.add.reduce(np.asarray(a, dtype=np.float64) * b))


def weighted_nanmean(values: np.ndarray, sample_weight: np.ndarray | None = None) -> float:
    """sum_i w_i v_i / sum_i w_i over the rows where v_i is not NaN (NaN if there is none).

    Args:
        values: (n,) per-row values; NaN marks a row that does not count (for example no relevant item).
        sample_weight: (n,) non-negative weights, 1 if None.
    """
    values = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(values)
    if not ok.all():
        values = np.where(ok, values, 0.0)
        w = ok.astype(np.float64) if sample_weight is None else np.where(ok, sample_weight, 0.0)
    else:
        w = np.ones(len(values)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = w.sum()
    if total <= 0:
        return float("nan")
    return unthreaded_dot(w, values) / total


def ratio_of_means(
    numerator: np.ndarray, denominator: np.ndarray, sample_weight: np.ndarray | None = None
) -> float:
    """sum_i w_i a_i / sum_i w_i b_i (NaN if the denominator is 0), as in self-normalised estimators.

    Args:
        numerator: (n,) a_i.
        denominator: (n,) b_i.
        sample_weight: (n,) non-negative weights, 1 if None.
    """
    w = np.ones(len(numerator)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    den = unthreaded_dot(w, denominator)
    if den == 0:
        return float("nan")
    return unthreaded_dot(w, numerator) / den
