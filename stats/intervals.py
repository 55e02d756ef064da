"""A point estimate with its interval, and the closed-form intervals of proportions (Wilson, Newcombe)."""

from __future__ import annotations

from statistics import NormalDist
from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A point estimate with a two-sided (1 - alpha) interval."""

    point: float
    lo: float
    hi: float


def _z(alpha: float) -> float:
    return NormalDist().inv_cdf(1 - alpha / 2)


def wilson_interval(successes: float, n: float, alpha: float = 0.05) -> Interval:
    """The Wilson score interval of a proportion; NaN for n = 0.

    Args:
        successes: x.
        n: trials.
        alpha: 1 - coverage.

    Returns:
        (x / n, lo, hi).
    """
    if n <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    z = _z(alpha)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return Interval(float(p), float(centre - half), float(centre + half))


def newcombe_interval(x1: float, n1: float, x2: float, n2: float, alpha: float = 0.05) -> Interval:
    """Newcombe's hybrid score interval of p1 - p2 (Newcombe 1998, method 10); NaN if n1 or n2 is 0.

    With Wilson intervals (l1, u1) and (l2, u2) of the two proportions and d = p1 - p2:
    lo = d - sqrt((p1 - l1)^2 + (u2 - p2)^2), hi = d + sqrt((u1 - p1)^2 + (p2 - l2)^2).

    Returns:
        (p1 - p2, lo, hi).
    """
    if n1 <= 0 or n2 <= 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    p1, l1, u1 = wilson_interval(x1, n1, alpha)
    p2, l2, u2 = wilson_interval(x2, n2, alpha)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(float(d), float(lo), float(hi))
