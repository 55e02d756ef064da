"""The campaign report's plots: rates per action, incremental conversion and revenue with their intervals,
and the weekly trend, each a matplotlib figure on its own canvas (`reports.html.figure`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.campaign.lift import CampaignResults, lift_rows
from reports.html import figure


def plot_rates_by_action(results: CampaignResults) -> Figure:
    """Open, click, unsubscribe (per send) and conversion (per decision) rate per action."""
    rows = results.level("action")
    panels = [
        ("open_rate", "open rate (per send)"),
        ("click_rate", "click rate (per send)"),
        ("unsubscribe_rate", "unsubscribe rate (per send)"),
        ("conversion_rate", "conversion rate (per decision)"),
    ]
    fig = figure(12, 1.2 + 0.35 * max(len(rows), 2))
    axes = fig.subplots(1, len(panels), sharey=True)
    y = np.arange(len(rows))
    for ax, (column, title) in zip(axes, panels, strict=True):
        ax.barh(y, 100 * rows[column].fillna(0.0), color="tab:blue")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("%")
        if column == "conversion_rate":
            _control_marks(ax, results, rows, "control_conversion_rate", 100.0)
    axes[0].set_yticks(y, rows["action"])
    axes[0].invert_yaxis()
    fig.suptitle("Rates per action (treated decisions)")
    return fig


def _control_marks(ax: Any, results: CampaignResults, rows: pd.DataFrame, column: str, scale: float) -> None:
    """The control group's value beside each action's bar where per-action lifts exist, else one line."""
    if results.per_action_lift:
        ax.scatter(scale * rows[column], np.arange(len(rows)), marker="D", color="tab:red", zorder=3,
                   label="control, same intended action")  # fmt: skip
    elif not np.isnan(results.overall[column]):
        ax.axvline(scale * results.overall[column], color="tab:red", linestyle="--", label="control group")
    else:
        return
    ax.legend(fontsize=8, loc="lower right")


def _lift_panel(ax: Any, labels: list[str], point: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    y = np.arange(len(labels))
    # A percentile interval need not contain its point; error bars cannot be negative.
    err = np.clip(np.nan_to_num(np.vstack([point - lo, hi - point])), 0.0, None)
    ax.errorbar(point, y, xerr=err, fmt="o", capsize=3, color="tab:blue")
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()


def plot_lift_by_action(results: CampaignResults) -> Figure:
    """Incremental conversion (percentage points) per action against the control group, with the Newcombe
    interval as error bars; the overall lift on top."""
    rows = lift_rows(results, "action")
    overall = results.overall
    labels = ["overall", *rows["action"]] if len(rows) else ["overall"]
    pick = [overall, *(r for _, r in rows.iterrows())]
    point = np.array([100 * r["lift_conversion"] for r in pick])
    lo = np.array([100 * r["lift_conversion_low"] for r in pick])
    hi = np.array([100 * r["lift_conversion_high"] for r in pick])
    fig = figure(7, 1.4 + 0.35 * len(labels))
    ax = fig.add_subplot()
    _lift_panel(ax, labels, point, lo, hi)
    ax.set_xlabel(f"incremental conversion, pp ({100 * (1 - results.alpha):.0f}% Newcombe interval)")
    title = "Incremental conversion vs the control group"
    if not results.per_action_lift:
        title += "\n(per action: needs intended_action of control decisions)"
    ax.set_title(title)
    return fig


def plot_weekly(results: CampaignResults) -> Figure:
    """Per week: sends and decisions, conversion of treated and control decisions, and the lift."""
    rows = results.level("week")
    x = np.arange(len(rows))
    fig = figure(11, 3.4)
    ax_n, ax_c, ax_l = fig.subplots(1, 3)
    ax_n.bar(x - 0.2, rows["decisions"], width=0.4, label="decisions")
    ax_n.bar(x + 0.2, rows["sends"], width=0.4, label="sends")
    ax_n.set_title("decisions and sends")
    ax_n.legend(fontsize=8)
    ax_c.plot(x, 100 * rows["conversion_rate"], marker="o", label="treated")
    ax_c.plot(x, 100 * rows["control_conversion_rate"], marker="o", label="control")
    ax_c.set_title("conversion rate, %")
    ax_c.legend(fontsize=8)
    ax_l.plot(x, 100 * rows["lift_conversion"], marker="o", color="tab:green")
    ax_l.fill_between(x, 100 * rows["lift_conversion_low"], 100 * rows["lift_conversion_high"], alpha=0.25,
                      color="tab:green", label=f"{100 * (1 - results.alpha):.0f}% Newcombe")  # fmt: skip
    ax_l.axhline(0.0, color="grey", linewidth=1)
    ax_l.set_title("incremental conversion, pp")
    ax_l.legend(fontsize=8)
    step = max(1, len(rows) // 8)
    for ax in (ax_n, ax_c, ax_l):
        ax.set_xticks(x[::step], rows["week"].iloc[::step], rotation=45, ha="right", fontsize=8)
        ax.set_xlabel("week (Monday)")
    fig.suptitle("Weekly trend")
    return fig


def plot_revenue(results: CampaignResults) -> Figure:
    """Revenue per decision per action (control group as a line) and incremental revenue per decision with
    the customer bootstrap interval."""
    rows = results.level("action")
    lifts = lift_rows(results, "action")
    overall = results.overall
    fig = figure(12, 1.4 + 0.35 * max(len(rows), 2))
    ax_r, ax_l = fig.subplots(1, 2)
    y = np.arange(len(rows))
    ax_r.barh(y, rows["revenue_per_decision"], color="tab:blue")
    _control_marks(ax_r, results, rows, "control_revenue_per_decision", 1.0)
    ax_r.set_yticks(y, rows["action"])
    ax_r.invert_yaxis()
    ax_r.set_title("revenue per decision")
    pick = [overall, *(r for _, r in lifts.iterrows())]
    labels = ["overall", *lifts["action"]] if len(lifts) else ["overall"]
    _lift_panel(
        ax_l,
        labels,
        np.array([r["lift_revenue_per_decision"] for r in pick]),
        np.array([r["lift_revenue_low"] for r in pick]),
        np.array([r["lift_revenue_high"] for r in pick]),
    )
    ax_l.set_title(f"incremental revenue per decision\n({100 * (1 - results.alpha):.0f}% customer bootstrap)")
    fig.suptitle("Revenue")
    return fig
