"""`journey report` and the demo's last step: a decision log in, the campaign report out (and in MLflow).

One function over the steps the notebooks call one by one: `load_decision_log`, `campaign_results`,
`write_report`, `log_report`; it also says on the page where the outcomes and the stages came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from reports.campaign.lift import CampaignResults, campaign_results
from reports.campaign.log import load_decision_log
from reports.campaign.render import ReportFiles, log_report, write_report


@dataclass(frozen=True)
class CampaignReport:
    """What `campaign_report` made: the figures, the files, and the MLflow run (None: not logged)."""

    results: CampaignResults
    files: ReportFiles
    run_id: str | None


def provenance_notes(log: pd.DataFrame) -> list[str]:
    """Lines for the report on where a loaded decision log's outcomes and stages came from."""
    notes = []
    window = log.attrs.get("window_days")
    if window is not None:
        notes.append(f"Outcomes from the events: a purchase within {window:g} days converts.")
    if log.attrs.get("stage_source") != "log":
        notes.append(f"Stage: {log.attrs.get('stage_source')} (the decision log has no stage of its own).")
    return notes


def campaign_report(
    decisions: Path,
    out: Path,
    *,
    events: Path | None = None,
    window_days: float | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    log_to_mlflow: bool = True,
) -> CampaignReport:
    """Campaign results per action, stage and week, and the lift against the control group, written to
    `out` (`campaign_report.html`, its plots and CSVs) and logged to MLflow (experiment journey-campaigns).

    Args:
        decisions: `journey decisions export` output, or a simulated shop (folder).
        events: events to derive the outcomes from (a shop's events/ by default).
        window_days: a purchase within this many days converts (see `load_decision_log`).

    Raises:
        FileNotFoundError, ValueError: no such log, or not a decision log (`load_decision_log`).
    """
    log = load_decision_log(decisions, events, window_days=window_days)
    results = campaign_results(log, n_boot=n_boot, seed=seed)
    files = write_report(results, out, notes=provenance_notes(log))
    run_id = None
    if log_to_mlflow:
        params = {"decisions": str(decisions), "window_days": log.attrs.get("window_days")}
        run_id = log_report(out, params=params)
    return CampaignReport(results, files, run_id)
