"""Bootstrap intervals of row-level statistics: percentile, paired, and many means on one set of resamples.

A resample of n rows with replacement is the same as weighting each row by the number of times it was
drawn, so the bootstrap draws those counts and calls the statistic with them (`sample_weight`), never
copying the data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from stats.averages import weighted_nanmean
from stats.intervals import Interval

Statistic = Callable[..., float]

Columns = np.ndarray | tuple[np.ndarray, ...]


def _as_columns(data: Columns) -> tuple[np.ndarray, ...]:
    columns = data if isinstance(data, tuple) else (data,)
    n = {len(c) for c in columns}
    if len(n) != 1:
        raise ValueError(f"row-aligned columns differ in length: {sorted(n)}")
    return columns


@lru_cache(maxsize=16)
def _resample_weights(n: int, n_boot: int, seed: tuple[int, int]) -> np.ndarray:
    """(n_boot, n) how many times each row is drawn in each resample of n rows with replacement.

    Cached (read-only, at most 16 chunks of ~1M float32): one evaluation asks for the same resamples of the
    same rows for dozens of metrics, and drawing them costs more than most statistics.
    """
    rng = np.random.default_rng(list(seed))
    out = np.empty((n_boot, n), dtype=np.float32)  # counts are small integers: exact in float32
    for b in range(n_boot):
        out[b] = np.bincount(rng.integers(0, n, n), minlength=n)
    out.flags.writeable = False
    return out


def _weight_chunks(n: int, n_boot: int, seed: int) -> Iterator[tuple[int, np.ndarray]]:
    """(first resample index, (chunk, n) weights) for all n_boot resamples, in chunks that bound memory at
    about 1M counts for any n. The same (n, n_boot, seed) always gives the same resamples."""
    if n == 0 or n_boot <= 0:
        return
    chunk = max(1, min(n_boot, 1_000_000 // n))
    for start in range(0, n_boot, chunk):
        yield start, _resample_weights(n, min(chunk, n_boot - start), (seed, start))


def _one_blas_thread() -> AbstractContextManager[object]:
    """Limits BLAS to one thread where threadpoolctl (a scikit-learn dependency) is installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _percentiles(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = stats[np.isfinite(stats)]
    if finite.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _boot_stats(
    columns_list: Sequence[tuple[np.ndarray, ...]],
    statistics: Sequence[Statistic],
    signs: Sequence[float],
    n_boot: int,
    seed: int,
) -> tuple[float, np.ndarray]:
    """Point and bootstrap draws of sum_j sign_j * statistic_j(columns_j), the same resamples for every j."""
    n = len(columns_list[0][0])
    point = sum(s * stat(*cols) for cols, stat, s in zip(columns_list, statistics, signs, strict=True))
    if n == 0 or n_boot <= 0:
        return float(point), np.array([])
    draws = np.empty(n_boot)
    for start, weights in _weight_chunks(n, n_boot, seed):
        for b, w in enumerate(weights):
            draws[start + b] = sum(
                s * stat(*cols, sample_weight=w)
                for cols, stat, s in zip(columns_list, statistics, signs, strict=True)
            )
    return float(point), draws


def bootstrap_ci(
    data: Columns,
    statistic: Statistic | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """A statistic of row-level data with its percentile bootstrap interval (rows resampled with replacement).

    Args:
        data: (n,) per-row values, or a tuple of row-aligned arrays (for example labels and scores).
        statistic: f(*columns, sample_weight=None | (n,) weights) -> float; a resample is passed as the
            number of times each row was drawn. Default: `weighted_nanmean` of one column (the mean of
            per-row values, NaN rows left out).
        n_boot: resamples; 0 gives the point estimate with NaN bounds.
        seed: random seed (the same seed and n give the same resamples, so intervals of different metrics
            on the same rows are comparable).
        alpha: 1 - coverage of the interval.

    Returns:
        (point, lo, hi): the statistic on all rows and the alpha/2, 1 - alpha/2 percentiles of its
        resampled values (resamples where it is undefined, e.g. AUC of one class, are left out).
    """
    columns = _as_columns(data)
    point, draws = _boot_stats([columns], [statistic or weighted_nanmean], [1.0], n_boot, seed)
    return Interval(point, *_percentiles(draws, alpha))


def bootstrap_distribution(
    data: Columns, statistic: Statistic | None = None, *, n_boot: int = 200, seed: int = 0
) -> tuple[float, np.ndarray]:
    """The statistic on all rows and its (n_boot,) values on the resamples of `bootstrap_ci`.

    For summaries other than a percentile interval, such as the mean error of an estimator over
    resamples (the Open Bandit paper's protocol).
    """
    return _boot_stats([_as_columns(data)], [statistic or weighted_nanmean], [1.0], n_boot, seed)


def paired_bootstrap(
    data_a: Columns,
    data_b: Columns,
    statistic_a: Statistic | None = None,
    statistic_b: Statistic | None = None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """statistic_a(a) - statistic_b(b) on the same rows, with a paired bootstrap interval.

    Both sides are computed on the same resampled rows, so the interval of the difference is much narrower
    than the two separate intervals suggest when the scorers err on the same rows.

    Args:
        data_a: row-level data of the first scorer (see `bootstrap_ci`).
        data_b: row-level data of the second, row-aligned with `data_a`.
        statistic_a: statistic of a (default: mean of per-row values).
        statistic_b: statistic of b (default: `statistic_a`).
        n_boot: resamples.
        seed: random seed.
        alpha: 1 - coverage.

    Returns:
        (difference, lo, hi).
    """
    cols_a, cols_b = _as_columns(data_a), _as_columns(data_b)
    if len(cols_a[0]) != len(cols_b[0]):
        raise ValueError(f"paired data must have the same rows: {len(cols_a[0])} vs {len(cols_b[0])}")
    stat_a = statistic_a or weighted_nanmean
    stat_b = statistic_b or stat_a
    point, draws = _boot_stats([cols_a, cols_b], [stat_a, stat_b], [1.0, -1.0], n_boot, seed)
    return Interval(point, *_percentiles(draws, alpha))


def bootstrap_means(
    values: dict[str, np.ndarray], *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
) -> dict[str, Interval]:
    """`bootstrap_ci` of the mean of many per-row columns at once (the same resamples for all of them).

    Equal to calling `bootstrap_ci(v, n_boot=n_boot, seed=seed, alpha=alpha)` on each column, but the
    resamples are drawn once and applied as one matrix product.

    Args:
        values: name -> (n,) per-row values (NaN rows left out of that column's mean), all of length n.

    Returns:
        name -> (mean, lo, hi).
    """
    if not values:
        return {}
    names = list(values)
    matrix = np.column_stack([np.asarray(values[k], dtype=np.float64) for k in names])  # (n, m)
    ok = ~np.isnan(matrix)
    filled = np.where(ok, matrix, 0.0)
    mask = ok.astype(np.float64)
    n = len(matrix)
    points = [weighted_nanmean(matrix[:, j]) for j in range(len(names))]
    draws = np.empty((max(n_boot, 0), len(names)))
    # One BLAS thread: a threaded product of this size gains little and stalls on a busy machine.
    with _one_blas_thread(), np.errstate(invalid="ignore", divide="ignore"):
        for start, weights in _weight_chunks(n, n_boot, seed):
            w = weights.astype(np.float64)
            den = w @ mask  # (chunk, m)
            draws[start : start + len(w)] = np.where(den > 0, (w @ filled) / den, np.nan)
    return {k: Interval(points[j], *_percentiles(draws[:, j], alpha)) for j, k in enumerate(names)}


@dataclass(frozen=True)
class RowStatistic:
    """Row-level data and the statistic that turns it into a metric: what a paired comparison needs.

    Attributes:
        columns: row-aligned arrays.
        statistic: f(*columns, sample_weight=...) -> float (a module-level function, so results pickle).
    """

    columns: tuple[np.ndarray, ...]
    statistic: Statistic = weighted_nanmean

    def __len__(self) -> int:
        return len(self.columns[0])

    def value(self) -> float:
        """The statistic on all rows."""
        return float(self.statistic(*self.columns))

    def ci(self, *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05) -> Interval:
        """The statistic with its bootstrap interval."""
        return bootstrap_ci(self.columns, self.statistic, n_boot=n_boot, seed=seed, alpha=alpha)

    def minus(
        self, other: RowStatistic, *, n_boot: int = 200, seed: int = 0, alpha: float = 0.05
    ) -> Interval:
        """self - other on the same rows, with a paired bootstrap interval."""
        return paired_bootstrap(
            self.columns,
            other.columns,
            self.statistic,
            other.statistic,
            n_boot=n_boot,
            seed=seed,
            alpha=alpha,
        )
