"""What an evaluation returns, and how several are compared and shown side by side.

`EvaluationResult` holds one scorer's metrics on one split (names: `training.evaluate`), the row-level data
behind them and the data of its plots; `compare` takes a paired difference of two results on the same rows;
`results_table` and `markdown_table` put several results side by side, followed by the line that says who was
evaluated (`population_line`): a figure means little without its population.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stats import Interval, RowStatistic
from training.metrics import ReliabilityCurve

# MLflow's rule for metric keys (mlflow.utils.validation, the stricter Windows variant: no colon).
_VALID_NAME = re.compile(r"^[/\w.\- ]+$")
_LO, _HI = "_lo", "_hi"
# Metrics that count rows, shown without decimals.
_COUNTS = ("n_rows", "n_decisions")


def is_valid_metric_name(name: str) -> bool:
    """True if MLflow accepts `name` as a metric key on every platform.

    Letters, digits, `_ - . /` and spaces, and no path tricks ("a//b", "./a", "a/", leading "/").
    """
    import posixpath

    return bool(_VALID_NAME.match(name)) and posixpath.normpath(name) == name and not name.startswith("/")


@dataclass
class PlotData:
    """What the plots of one scorer need.

    Attributes:
        confusion: (S, S) counts, hindsight stage (rows) vs predicted (columns).
        confusion_true: (S, S) counts against the latent stage (simulated data).
        reliability: target -> calibration curve.
        recall_at_k: K -> Recall@K with its interval.
        policy_values: estimator -> policy -> Interval (logging under "value").
        true_values: policy -> true value (simulated data).
    """

    confusion: np.ndarray | None = None
    confusion_true: np.ndarray | None = None
    reliability: dict[str, ReliabilityCurve] = field(default_factory=dict)
    recall_at_k: dict[int, Interval] = field(default_factory=dict)
    policy_values: dict[str, dict[str, Interval]] = field(default_factory=dict)
    true_values: dict[str, float] = field(default_factory=dict)


@dataclass
class EvaluationResult:
    """The evaluation of one scorer on one split.

    Attributes:
        name: the scorer's name (a column of `results_table`).
        metrics: metric name -> value (see the module doc for the names).
        rows: metric name -> the row-level data and statistic behind it, for `compare`.
        plots: data for `reports.plots`.
        info: anything that is not a number (the best constant action, skipped K, row counts).
    """

    name: str
    metrics: dict[str, float] = field(default_factory=dict)
    rows: dict[str, RowStatistic] = field(default_factory=dict)
    plots: PlotData = field(default_factory=PlotData)
    info: dict[str, Any] = field(default_factory=dict)

    def interval(self, metric: str) -> Interval:
        """The metric with its interval (NaN bounds where it has none)."""
        return Interval(
            self.metrics[metric],
            self.metrics.get(metric + _LO, float("nan")),
            self.metrics.get(metric + _HI, float("nan")),
        )

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """The finite metrics, names prefixed (e.g. "popularity/"), ready for `mlflow.log_metrics`."""
        return {prefix + k: float(v) for k, v in self.metrics.items() if np.isfinite(v)}

    def put(self, name: str, value: float | Interval) -> None:
        """Records a metric; an `Interval` also records its bounds as `<name>_lo` and `<name>_hi`."""
        if isinstance(value, Interval):
            self.metrics[name] = value.point
            self.metrics[name + _LO] = value.lo
            self.metrics[name + _HI] = value.hi
        else:
            self.metrics[name] = float(value)


# --------------------------------------------------------------------------------------------------------
# Several scorers


def compare(
    a: EvaluationResult,
    b: EvaluationResult,
    metric: str,
    *,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """metric(a) - metric(b) with a paired bootstrap interval over the same rows.

    Args:
        a: one scorer's result.
        b: another's, on the same split.
        metric: a name in both results' `rows` (metrics with row-level data; not coverage or counts).

    Raises:
        KeyError: a result lacks the metric's row-level data.
        ValueError: the two were evaluated on different rows.
    """
    return a.rows[metric].minus(b.rows[metric], n_boot=n_boot, seed=seed, alpha=alpha)


def _base_names(results: Sequence[EvaluationResult]) -> list[str]:
    names: dict[str, None] = {}
    for r in results:
        for k in r.metrics:
            if not (k.endswith(_LO) or k.endswith(_HI)) or k[:-3] not in r.metrics:
                names[k] = None
    return list(names)


def results_table(
    results: Sequence[EvaluationResult],
    metrics: Sequence[str] | None = None,
    *,
    digits: int = 4,
) -> pd.DataFrame:
    """Scorers side by side: one row per metric, one column per scorer, cells "value [lo, hi]".

    Args:
        results: the scorers' results (their names become the columns).
        metrics: the rows, in order (default: every metric of any result, `_lo` / `_hi` folded in).
        digits: decimals shown.

    Returns:
        A frame of strings ("" where a scorer lacks the metric), index named "metric".
    """
    names = list(metrics) if metrics is not None else _base_names(results)

    def cell(r: EvaluationResult, m: str) -> str:
        if m not in r.metrics or not np.isfinite(r.metrics[m]):
            return "" if m not in r.metrics else "nan"
        v = r.metrics[m]
        text = f"{int(v):d}" if m.endswith(_COUNTS) else f"{v:.{digits}f}"
        lo, hi = r.metrics.get(m + _LO), r.metrics.get(m + _HI)
        if lo is not None and hi is not None and np.isfinite(lo) and np.isfinite(hi):
            text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
        return text

    columns = {}
    for r in results:
        column = r.name
        i = 2
        while column in columns:  # two results of the same name stay apart
            column, i = f"{r.name} ({i})", i + 1
        columns[column] = [cell(r, m) for m in names]
    frame = pd.DataFrame(columns, index=pd.Index(names, name="metric"))
    frame.attrs["population"] = population_line(results)
    return frame


def population_line(results: Sequence[EvaluationResult]) -> str:
    """Who the results were computed on, in one line ("" when unknown), e.g. "Population: test window,
    2 cutoffs, 12,345 customer-cutoffs with history before the cutoff (active 7,001, lapsed 4,900, new 444)".

    Results on different rows (they should not be, side by side) give one line each, joined by " | ".
    """
    lines: dict[str, None] = {}
    for r in results:
        pop = r.info.get("population")
        if not pop:
            continue
        n_cut = pop["n_cutoffs"]
        parts = [f"{pop['split']} window"] if pop.get("split") else []
        parts += [f"{n_cut:,} cutoff{'' if n_cut == 1 else 's'}", f"{pop['n_rows']:,} customer-cutoffs"]
        line = "Population: " + ", ".join(parts)
        if pop.get("rule"):
            line += f" {pop['rule']}"
        if pop.get("segments"):
            line += " (" + ", ".join(f"{g} {n:,}" for g, n in pop["segments"].items()) + ")"
        for head, part in (pop.get("heads") or {}).items():
            if part["rows"]:  # a head without labelled rows has no figure to qualify
                line += f"; {head} on the {part['rows']:,} {part['who']}"
        lines[line] = None
    return " | ".join(lines)


def markdown_table(frame: pd.DataFrame) -> str:
    """A frame of strings as a GitHub Markdown table (index as the first column), followed by the
    population line of `results_table` when the frame carries one."""
    header = [str(frame.index.name or ""), *map(str, frame.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join([str(idx), *(str(v) for v in row)]) + " |")
    if frame.attrs.get("population"):
        lines += ["", str(frame.attrs["population"])]
    return "\n".join(lines)
