"""Statistics shared by evaluation, off-policy estimates, the campaign report and the benchmarks: weighted
averages, bootstrap intervals and the closed-form intervals of proportions."""

from stats.averages import ratio_of_means, weighted_nanmean
from stats.bootstrap import (
    Columns,
    RowStatistic,
    Statistic,
    bootstrap_ci,
    bootstrap_distribution,
    bootstrap_means,
    paired_bootstrap,
)
from stats.intervals import Interval, newcombe_interval, wilson_interval

__all__ = [
    "Columns",
    "Interval",
    "RowStatistic",
    "Statistic",
    "bootstrap_ci",
    "bootstrap_distribution",
    "bootstrap_means",
    "newcombe_interval",
    "paired_bootstrap",
    "ratio_of_means",
    "weighted_nanmean",
    "wilson_interval",
]
