"""Campaign results: what the engine's e-mails did, and what they earned beyond the control group.

A marketer asks two questions of a campaign: how did the messages do (sends, open, click, conversion and
unsubscribe rates, revenue) and did they earn their keep, that is how many conversions and how much revenue
would not have happened without them. The second question needs the control group: a stable random share
of customers who are sent nothing (`serving.scoring`, `features.sim.SimConfig.control_share`). Because
membership is random across customers, the control decisions of a stage and week show what the treated
decisions of that stage and week would have done without e-mails, and the difference is the lift.

Modules: `log` (the decision log and its outcomes, from the service's export or a simulated shop), `lift`
(rates, revenue and lifts per group, with their intervals), `charts` (the plots) and `render` (the report's
files, and MLflow).
"""

from reports.campaign.charts import plot_lift_by_action, plot_rates_by_action, plot_revenue, plot_weekly
from reports.campaign.lift import DEFAULT_BY, CampaignResults, campaign_results, format_headline
from reports.campaign.log import LOG_COLUMNS, REQUIRED_COLUMNS, load_decision_log, outcomes_from_events
from reports.campaign.render import ReportFiles, log_report, write_report

__all__ = [
    "DEFAULT_BY",
    "LOG_COLUMNS",
    "REQUIRED_COLUMNS",
    "CampaignResults",
    "ReportFiles",
    "campaign_results",
    "format_headline",
    "load_decision_log",
    "log_report",
    "outcomes_from_events",
    "plot_lift_by_action",
    "plot_rates_by_action",
    "plot_revenue",
    "plot_weekly",
    "write_report",
]
