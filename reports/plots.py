"""Figures of an evaluation, for MLflow (`mlflow.log_figure`) and notebooks.

Each function returns a `matplotlib.figure.Figure` drawn on an Agg canvas created inside the function:
nothing touches pyplot's global state or backend, so the functions are safe in a server, a test or a
notebook, and a figure is freed as soon as it is no longer referenced (`reports.html.figure`). Inputs come
from `training.results.EvaluationResult.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from features.schema import STAGES
from reports.html import figure
from stats import Interval

if TYPE_CHECKING:
    from training.metrics import ReliabilityCurve
    from training.results import EvaluationResult


def plot_confusion(
    confusion: np.ndarray, labels: Sequence[str], *, normalize: bool = True, title: str = "Stage"
) -> Figure:
    """Confusion matrix as a heat map: true class on the rows, predicted class on the columns.

    Args:
        confusion: (S, S) counts.
        labels: S class names.
        normalize: show each row as shares of its true class (counts otherwise).
        title: the axes title.
    """
    c = np.asarray(confusion, dtype=np.float64)
    if normalize:
        totals = c.sum(axis=1, keepdims=True)
        c = np.divide(c, totals, out=np.zeros_like(c), where=totals > 0)
    fig = figure(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels))
    ax = fig.add_subplot()
    image = ax.imshow(c, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(image, ax=ax, label="share of true class" if normalize else "rows")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = c.max() / 2 if c.size else 0
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            text = f"{c[i, j]:.2f}" if normalize else f"{int(c[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if c[i, j] > threshold else "black")  # fmt: skip
    return fig


def plot_reliability(curves: Mapping[str, ReliabilityCurve], *, title: str = "Calibration") -> Figure:
    """Reliability diagram: observed share of positives against the mean predicted probability per bin,
    one line per scorer, the diagonal for perfect calibration, and the rows per bin below.

    Args:
        curves: scorer name -> its curve for one target.
        title: the axes title (name the target).
    """
    fig = figure(5.5, 6.0)
    ax, hist = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for name, curve in curves.items():
        seen = curve.count > 0
        ax.plot(curve.mean_predicted[seen], curve.fraction_positive[seen], marker="o", label=name)
        centres = (curve.edges[:-1] + curve.edges[1:]) / 2
        hist.step(centres, curve.count, where="mid", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("observed share of positives")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    hist.set_xlabel("mean predicted probability")
    hist.set_ylabel("rows")
    hist.set_yscale("log")
    return fig


def plot_recall_at_k(
    curves: Mapping[str, Mapping[int, Interval | float]],
    *,
    metric: str = "Recall",
    title: str = "Recommendations",
) -> Figure:
    """Recall@K (or another @K metric) against K, one line per scorer, intervals as shaded bands.

    Args:
        curves: scorer name -> K -> value or Interval.
        metric: the y label's metric name.
        title: the axes title.
    """
    fig = figure(6.0, 4.0)
    ax = fig.add_subplot()
    for name, points in curves.items():
        ks = sorted(points)
        values = [points[k] for k in ks]
        point = [v.point if isinstance(v, Interval) else float(v) for v in values]
        (line,) = ax.plot(ks, point, marker="o", label=name)
        if all(isinstance(v, Interval) and np.isfinite(v.lo) for v in values):
            lo = [v.lo for v in values if isinstance(v, Interval)]
            hi = [v.hi for v in values if isinstance(v, Interval)]
            ax.fill_between(ks, lo, hi, alpha=0.2, color=line.get_color())
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric}@K")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_policy_values(
    values: Mapping[str, Mapping[str, Interval]],
    true_values: Mapping[str, float] | None = None,
    *,
    title: str = "Policy value",
    ylabel: str = "conversion rate",
) -> Figure:
    """Estimated value of each policy with its interval (points with error bars), one marker series per
    estimator or scorer, and the true value as a black bar where it is known (simulated data).

    Args:
        values: series name (an estimator such as "snips", or a scorer) -> policy -> Interval.
        true_values: policy -> true value.
        title: the axes title.
        ylabel: the y label.
    """
    policies: list[str] = []
    for series in values.values():
        policies.extend(p for p in series if p not in policies)
    if true_values:
        policies.extend(p for p in true_values if p not in policies)
    fig = figure(max(6.0, 1.0 + 0.9 * len(policies)), 4.5)
    ax = fig.add_subplot()
    x = np.arange(len(policies))
    n_series = max(len(values), 1)
    width = 0.7 / n_series
    for s, (name, series) in enumerate(values.items()):
        offset = (s - (n_series - 1) / 2) * width
        at = [i for i, p in enumerate(policies) if p in series]
        points = [series[policies[i]] for i in at]
        y = np.array([v.point for v in points])
        lo = np.array([v.lo for v in points])
        hi = np.array([v.hi for v in points])
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)])
        ax.errorbar(x[at] + offset, y, yerr=err, fmt="o", capsize=3, label=name)
    if true_values:
        at = [i for i, p in enumerate(policies) if p in true_values]
        ax.hlines([true_values[policies[i]] for i in at], x[at] - 0.4, x[at] + 0.4,
                  colors="black", linewidth=2, label="true value")  # fmt: skip
    ax.set_xticks(x, policies, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def evaluation_figures(results: Sequence[EvaluationResult], *, estimator: str = "snips") -> dict[str, Figure]:
    """Every figure for several scorers' `EvaluationResult`s, keyed by a file name for `mlflow.log_figure`.

    Confusion matrices per scorer (hindsight and, on simulated data, latent stage), one reliability diagram
    per propensity target, one Recall@K plot, policy values per scorer (all estimators) and the chosen
    estimator's values of all scorers side by side.
    """
    figures: dict[str, Figure] = {}
    evaluated = list(results)
    for r in evaluated:
        if r.plots.confusion is not None:
            figures[f"confusion_{r.name}.png"] = plot_confusion(
                r.plots.confusion, STAGES, title=f"{r.name}: stage vs hindsight label"
            )
        if r.plots.confusion_true is not None:
            figures[f"confusion_true_{r.name}.png"] = plot_confusion(
                r.plots.confusion_true, STAGES, title=f"{r.name}: stage vs latent stage"
            )
        if r.plots.policy_values:
            figures[f"policy_values_{r.name}.png"] = plot_policy_values(
                r.plots.policy_values, r.plots.true_values, title=f"{r.name}: policy value"
            )
    targets = sorted({t for r in evaluated for t in r.plots.reliability})
    for t in targets:
        curves = {r.name: r.plots.reliability[t] for r in evaluated if t in r.plots.reliability}
        figures[f"reliability_{t}.png"] = plot_reliability(curves, title=f"Calibration: {t}")
    recall = {r.name: r.plots.recall_at_k for r in evaluated if r.plots.recall_at_k}
    if recall:
        figures["recall_at_k.png"] = plot_recall_at_k(recall)
    by_scorer = {
        r.name: r.plots.policy_values[estimator] for r in evaluated if estimator in r.plots.policy_values
    }
    if by_scorer:
        truth = next((r.plots.true_values for r in evaluated if r.plots.true_values), None)
        figures[f"policy_values_{estimator}.png"] = plot_policy_values(
            by_scorer, truth, title=f"Policy value ({estimator.upper()}) by scorer"
        )
    return figures
