"""The campaign report written out: `campaign_report.html` (plots embedded, no network needed), the PNGs,
one CSV per level and `summary.json`; and the written report logged to MLflow."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.campaign.charts import plot_lift_by_action, plot_rates_by_action, plot_revenue, plot_weekly
from reports.campaign.lift import ALL_GROUPS, CampaignResults, format_headline, lift_rows, percent, points
from reports.html import esc, img, page, png, table


@dataclass(frozen=True)
class ReportFiles:
    """What `write_report` wrote.

    Attributes:
        html: the self-contained report (plots embedded; opens without a network).
        summary: `summary.json`: the headline metrics and how they were computed.
        tables: level -> CSV of its rows.
        plots: name -> PNG (the same images as in the HTML).
    """

    html: Path
    summary: Path
    tables: dict[str, Path] = field(default_factory=dict)
    plots: dict[str, Path] = field(default_factory=dict)

    def all(self) -> list[Path]:
        return [self.html, self.summary, *self.tables.values(), *self.plots.values()]


_PLOTS = {
    "rates_by_action": ("action", plot_rates_by_action, "Rates per action"),
    "lift_by_action": ("overall", plot_lift_by_action, "Incremental conversion per action"),
    "weekly_trend": ("week", plot_weekly, "Weekly trend"),
    "revenue": ("action", plot_revenue, "Revenue"),
}

_SHOWN = {
    "decisions": "decisions",
    "sends": "sends",
    "open_rate": "open",
    "click_rate": "click",
    "unsubscribe_rate": "unsub.",
    "conversion_rate": "conversion",
    "revenue": "revenue",
    "revenue_per_decision": "rev./decision",
    "control_decisions": "control decisions",
    "control_conversion_rate": "control conversion",
    "lift_conversion": "lift conversion [CI]",
    "lift_revenue_per_decision": "lift rev./decision [CI]",
    "incremental_conversions": "incr. conversions",
    "incremental_revenue": "incr. revenue",
}
_MAX_HTML_ROWS = 400


def _display(results: CampaignResults, rows: pd.DataFrame) -> pd.DataFrame:
    """Rows as strings for the HTML: percentages, money and the intervals beside their points."""
    keys = [k for k in results.by if (rows[k] != ALL_GROUPS).any()]
    out = rows[keys].copy()
    for column, title in _SHOWN.items():
        values = rows[column]
        if column.endswith("_rate"):
            digits = 2 if column == "unsubscribe_rate" else 1
            out[title] = [percent(v, digits) for v in values]
        elif column == "lift_conversion":
            out[title] = [
                f"{points(p)} [{points(lo)}, {points(hi)}]" if p == p else "n/a"
                for p, lo, hi in zip(
                    values, rows["lift_conversion_low"], rows["lift_conversion_high"], strict=True
                )
            ]
        elif column == "lift_revenue_per_decision":
            out[title] = [
                f"{p:+,.2f} [{lo:+,.2f}, {hi:+,.2f}]" if p == p else "n/a"
                for p, lo, hi in zip(values, rows["lift_revenue_low"], rows["lift_revenue_high"], strict=True)
            ]
        elif column.startswith(("revenue", "incremental")):
            out[title] = values.map(lambda v: "n/a" if v != v else f"{v:,.2f}")
        else:
            out[title] = values.map(lambda v: f"{int(v):,}")
    return out


def write_report(
    results: CampaignResults,
    out_dir: str | Path,
    *,
    title: str = "Campaign results",
    notes: Sequence[str] = (),
) -> ReportFiles:
    """Writes `campaign_report.html` (plots embedded as base64 PNGs, no network needed), the PNGs, one CSV
    per level and `summary.json` into `out_dir`.

    Args:
        results: of `campaign_results`.
        out_dir: folder (created).
        title: the page's title.
        notes: extra lines for the "how it was computed" section (e.g. where the outcomes came from).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables: dict[str, Path] = {}
    for level in results.levels:
        path = out / f"campaign_{level}.csv"
        results.level(level).to_csv(path, index=False)
        tables[level] = path

    plots: dict[str, Path] = {}
    images: list[tuple[str, bytes]] = []
    for name, (needs, draw, caption) in _PLOTS.items():
        if needs not in results.levels:
            continue
        data = png(draw(results))
        path = out / f"{name}.png"
        path.write_bytes(data)
        plots[name] = path
        images.append((caption, data))

    method = _method_notes(results) + list(notes)
    summary = {
        "headline": results.headline(),
        "period": list(results.period),
        "by": list(results.by),
        "per_action_lift": results.per_action_lift,
        "n_boot": results.n_boot,
        "seed": results.seed,
        "alpha": results.alpha,
        "conversion_interval": "Newcombe hybrid score (method 10), decisions as units",
        "revenue_interval": "percentile bootstrap, customers resampled within each arm",
        "per_action": _per_action_metrics(results),
        "notes": method,
    }
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(_finite(summary), indent=2) + "\n")

    html_path = out / "campaign_report.html"
    html_path.write_text(_html(results, title, images, method))
    return ReportFiles(html_path, summary_path, tables, plots)


def _finite(value: Any) -> Any:
    """NaN and infinities as null, so that summary.json is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _per_action_metrics(results: CampaignResults) -> dict[str, dict[str, float]]:
    rows = lift_rows(results, "action")
    if not len(rows):
        return {}
    return {
        str(r["action"]): {
            "lift_conversion": float(r["lift_conversion"]),
            "lift_conversion_low": float(r["lift_conversion_low"]),
            "lift_conversion_high": float(r["lift_conversion_high"]),
            "lift_revenue_per_decision": float(r["lift_revenue_per_decision"]),
        }
        for _, r in rows.iterrows()
    }


def _method_notes(results: CampaignResults) -> list[str]:
    pct = f"{100 * (1 - results.alpha):.0f}%"
    notes = [
        "Treated = every decision outside the control group (including the policy's own no_send); control ="
        " the stable random control group, sent nothing. Lift = treated minus control, per decision, within"
        " the same stage and week" + (" and intended action." if results.per_action_lift else "."),
        f"Conversion lift: {pct} Newcombe hybrid score interval (decisions as units); the customer bootstrap"
        " interval is in the CSVs (lift_conversion_boot_low/high).",
        f"Revenue lift: {pct} percentile bootstrap over customers ({results.n_boot} resamples, seed"
        f" {results.seed}): a customer's decisions stay together.",
        "Open, click and unsubscribe rates are per send; conversion and revenue per decision.",
    ]
    if not results.per_action_lift:
        notes.append(
            "No per-action lift: the control decisions do not record the action the policy intended, and"
            " comparing the customers sent an action with all control customers would mix the policy's"
            " targeting into the lift."
        )
    return notes


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { background: #f0f0f0; }
.headline { font-size: 1.1em; background: #f6f9ff; border: 1px solid #cdd; padding: 0.8em 1.2em; }
img { max-width: 100%; border: 1px solid #eee; margin-bottom: 1em; }
"""


def _html(results: CampaignResults, title: str, images: list[tuple[str, bytes]], notes: list[str]) -> str:
    headline = "<br>".join(esc(line) for line in format_headline(results).splitlines())
    parts = [
        f"<h1>{esc(title)}</h1>",
        f'<div class="headline">{headline}</div>',
        "<h2>Plots</h2>",
    ]
    for caption, data in images:
        parts.append(f"<h3>{esc(caption)}</h3>")
        parts.append(img(data, caption))
    parts.append("<h2>Tables</h2>")
    for level in results.levels:
        rows = results.level(level)
        heading = "Overall" if level == "overall" else "By " + level.replace("_", ", ")
        shown = _display(results, rows.head(_MAX_HTML_ROWS))
        html_table = table(list(shown.columns), shown.itertuples(index=False))
        more = (
            f"<p>First {_MAX_HTML_ROWS} of {len(rows):,} rows; all in campaign_{level}.csv.</p>"
            if len(rows) > _MAX_HTML_ROWS
            else ""
        )
        if len(results.by) > 1 and level == "_".join(results.by):
            parts.append(f"<details><summary><b>{esc(heading)}</b></summary>{html_table}{more}</details>")
        else:
            parts.append(f"<h3>{esc(heading)}</h3>{html_table}{more}")
    parts.append("<h2>How it was computed</h2><ul>")
    parts += [f"<li>{esc(n)}</li>" for n in notes]
    parts.append("</ul>")
    return page(title, _CSS, parts)


# ----------------------------------------------------------------------------------------------------------
# MLflow
# ----------------------------------------------------------------------------------------------------------


def log_report(
    out_dir: str | Path,
    *,
    experiment: str = "journey-campaigns",
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Logs a written report to MLflow: its files as artifacts under `campaign_report/`, the headline
    figures as metrics (`lift/conversion`, `lift/revenue_per_decision`, `rates/open`, ..., and
    `lift/conversion/<action>` where per-action lifts exist).

    Into the active run if there is one (a training or demo run that wants its campaign beside it; the
    settings then go in as tags so that they never clash with the run's own parameters), else into a new
    run of `experiment` in the project's store (`predictor.registry.configure`).

    Args:
        out_dir: a folder written by `write_report`.
        experiment: experiment of a new run.
        run_name: name of a new run.
        params: extra settings to record (the decision log's path, the window, ...).

    Returns:
        The run id.
    """
    import mlflow

    out = Path(out_dir)
    summary_path = out / "summary.json"
    if not summary_path.exists():
        raise ValueError(f"{out}: no summary.json; write the report first (write_report)")
    summary = json.loads(summary_path.read_text())
    metrics = {k: float(v) for k, v in summary["headline"].items() if v is not None}
    for action, figures in summary.get("per_action", {}).items():
        for key, metric in (
            ("lift_conversion", "lift/conversion"),
            ("lift_revenue_per_decision", "lift/revenue"),
        ):
            if figures.get(key) is not None:
                metrics[f"{metric}/{action}"] = figures[key]
    settings = {
        "by": ",".join(summary["by"]),
        "n_boot": summary["n_boot"],
        "seed": summary["seed"],
        "alpha": summary["alpha"],
        "per_action_lift": summary["per_action_lift"],
        "period": " .. ".join(summary["period"]),
        **(params or {}),
    }
    own = mlflow.active_run() is None
    if own:
        from predictor.registry import configure

        configure(experiment)
    run = mlflow.start_run(run_name=run_name or "campaign-report") if own else mlflow.active_run()
    assert run is not None
    try:
        if own:
            mlflow.log_params({f"campaign.{k}": v for k, v in settings.items()})
        else:
            mlflow.set_tags({f"campaign.{k}": str(v) for k, v in settings.items()})
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out), artifact_path="campaign_report")
    finally:
        if own:
            mlflow.end_run()
    return str(run.info.run_id)
