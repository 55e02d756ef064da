"""The journey map: where customers are, how they move, what they touch and where they stall or drop.

A marketer reads it to see where the journey leaks (DESIGN.md, "Who uses it"): from the model's stage of
every customer at every weekly cutoff of a features build, and from the events the build read, it derives

* the stage mix over time (customers per stage at each cutoff, and the mean stage probability);
* the flows between stages from one cutoff to the next (for a Sankey), with customers who enter the active
  base (`entered`) and who leave it (`left`: no row at the next cutoff, i.e. inactive for the build's
  `active_within_days`);
* the touchpoints of each stage: the events of the window before each cutoff (one step, a week by
  default), by channel and by event type, attributed to the stage the customer was in at that cutoff;
* the friction points: for each stage, what happens one step later (advance along the funnel
  awareness -> consideration -> decision -> post_purchase -> loyal, stall, go back, drop to at_risk, leave)
  and whether the customer reaches the next stage within k steps; and the time spent in each stage (runs
  of consecutive cutoffs in one stage, in days);

for the whole base and per segment (a built-in segmentation of the events, or the user's own mapping).

Everything is computed on a dense customer x cutoff matrix of stage codes with numpy (a build of 20,000
customers x 20 cutoffs is 400,000 cells; `panel`), so the map costs far less than scoring the rows does.
`JourneyMap.write` renders a self-contained HTML page (plotly, its JavaScript embedded: no network), a PNG
of each chart (matplotlib) and the frames as CSV; `log_journey_map` puts that folder into the active MLflow
run. `build_journey_map` does it all from a features build and a model.

Modules, in the order data flows: `events` and `segments` (inputs beside the stages), `panel` (the matrix
and the frames computed on it), `frames` (the map's frames and headlines), `compute`
(`compute_journey_map`), `figures`, `charts` and `friction_charts` (the charts), `render` (the page and its
files), `pipeline` (scoring a build with a registered predictor, end to end, MLflow).
"""

from reports.journey_map.charts import charts
from reports.journey_map.compute import JourneyMap, compute_journey_map
from reports.journey_map.events import Events
from reports.journey_map.figures import OUTCOME_COLORS, STAGE_COLORS, Chart
from reports.journey_map.frames import MapFrames, headlines
from reports.journey_map.panel import ALL, AT_RISK, DAY_MS, ENTERED, FUNNEL, LEFT, OUTCOMES
from reports.journey_map.pipeline import (
    ModelInputs,
    StageModel,
    build_journey_map,
    fetch_journey_map,
    log_journey_map,
    registered_journey_map,
    stage_assignments,
)
from reports.journey_map.render import MapPaths
from reports.journey_map.segments import BUILTIN_SEGMENTS, acquisition_channel, read_segments, value_tier

__all__ = [
    "ALL",
    "AT_RISK",
    "BUILTIN_SEGMENTS",
    "DAY_MS",
    "ENTERED",
    "FUNNEL",
    "LEFT",
    "OUTCOMES",
    "OUTCOME_COLORS",
    "STAGE_COLORS",
    "Chart",
    "Events",
    "JourneyMap",
    "MapFrames",
    "MapPaths",
    "ModelInputs",
    "StageModel",
    "acquisition_channel",
    "build_journey_map",
    "charts",
    "compute_journey_map",
    "fetch_journey_map",
    "headlines",
    "log_journey_map",
    "read_segments",
    "registered_journey_map",
    "stage_assignments",
    "value_tier",
]
