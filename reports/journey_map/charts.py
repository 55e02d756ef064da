"""The journey map's charts, in the page's order: where customers are (stage mix), how they move (flows)
and what they touch (touchpoints) here; where they stall or drop in `friction_charts`."""

from __future__ import annotations

from typing import Any

import numpy as np

from features.schema import CHANNELS, EVENT_TYPES, STAGES
from reports.html import figure
from reports.journey_map.figures import STAGE_COLORS, Chart, dates, heat_png, layout, rgba, traces_by_segment
from reports.journey_map.frames import MapFrames, of_segment
from reports.journey_map.friction_charts import conversion_chart, friction_chart, segments_chart, time_chart
from reports.journey_map.panel import ALL, ENTERED, LEFT


def _mix_chart(journey: MapFrames) -> Chart:
    import plotly.graph_objects as go

    def make(segment: str) -> list[Any]:
        m = of_segment(journey.mix, segment)
        traces = []
        for stage in STAGES:
            s = m[m["stage"] == stage]
            traces.append(
                go.Scatter(
                    x=dates(s["cutoff"]),
                    y=s["share"],
                    name=stage,
                    mode="lines",
                    stackgroup=f"mix {segment}",
                    line={"width": 0.5, "color": STAGE_COLORS[stage]},
                    fillcolor=STAGE_COLORS[stage],
                    customdata=s["customers"],
                    hovertemplate="%{fullData.name}: %{y:.1%} (%{customdata:,} customers)<extra></extra>",
                )
            )
        return traces

    fig = layout(
        go.Figure(traces_by_segment(journey, make)),
        "Stage mix over time",
        yaxis={"tickformat": ".0%", "range": [0, 1]},
        hovermode="x unified",
    )
    m = of_segment(journey.mix, ALL)
    png = figure(8, 4)
    ax = png.add_subplot()
    shares = [m[m["stage"] == s]["share"].to_numpy() for s in STAGES]
    x = dates(m[m["stage"] == STAGES[0]]["cutoff"])
    ax.stackplot(x, shares, labels=STAGES, colors=[STAGE_COLORS[s] for s in STAGES])
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of customers")
    ax.set_title("Stage mix over time (all customers)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    png.autofmt_xdate()
    caption = (
        "Share of the active customers in each stage at each cutoff, by the model's stage. Customers are in "
        "the base at a cutoff when active in the build's window before it; the build's train, validation "
        "and test windows may leave gaps between cutoffs, which the areas bridge."
    )
    return Chart("stage_mix", "Stage mix over time", caption, fig, png)


def _flows_chart(journey: MapFrames) -> Chart:
    import plotly.graph_objects as go

    sources, targets = [ENTERED, *STAGES], [*STAGES, LEFT]

    def make(segment: str) -> list[Any]:
        t = of_segment(journey.transitions, segment)
        src = t["from_stage"].map({s: i for i, s in enumerate(sources)}).to_numpy()
        dst = t["to_stage"].map({s: i + len(sources) for i, s in enumerate(targets)}).to_numpy()
        labels = [*sources, *targets]
        return [
            go.Sankey(
                arrangement="snap",
                valueformat=",d",
                valuesuffix=" customer-steps",
                node={"label": labels, "color": [STAGE_COLORS[s] for s in labels], "pad": 12},
                link={
                    "source": src,
                    "target": dst,
                    "value": t["customers"].to_numpy(),
                    "color": [rgba(STAGE_COLORS[s], 0.35) for s in t["from_stage"]],
                },
            )
        ]

    fig = layout(go.Figure(traces_by_segment(journey, make)), "Flows between stages, one step apart")
    t = of_segment(journey.transitions, ALL)
    matrix = (
        t.pivot_table(index="from_stage", columns="to_stage", values="customers", aggfunc="sum")
        .reindex(index=sources, columns=targets)
        .fillna(0)
        .to_numpy()
    )
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)
    png = heat_png(
        shares,
        sources,
        targets,
        "Flows one step later (share of each row)",
        ".2f",
        "share of the row's customers",
    )
    png.axes[0].set_xlabel("stage a step later")
    png.axes[0].set_ylabel("stage at a cutoff")
    caption = (
        "Customer-steps from the stage at one cutoff (left) to the stage at the next cutoff (right), summed "
        "over all pairs of cutoffs one step apart. 'entered': not in the active base at the earlier "
        "cutoff; 'left': no longer in it at the later one. The PNG (flows.png) shows the same flows as a "
        "transition matrix, each row as shares, because matplotlib has no practical Sankey for this."
    )
    return Chart("flows", "Flows between stages", caption, fig, png)


def _touchpoint_chart(journey: MapFrames, kind: str) -> Chart | None:
    import plotly.graph_objects as go

    tp = journey.touchpoints[journey.touchpoints["kind"] == kind]
    universe = CHANNELS if kind == "channel" else EVENT_TYPES
    names = [n for n in universe if n in set(of_segment(tp, ALL)["name"])]
    if not names:
        return None

    def matrices(segment: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = of_segment(tp, segment)
        grids = [
            s.pivot_table(index="stage", columns="name", values=v, aggfunc="sum")
            .reindex(index=list(STAGES), columns=names)
            .fillna(0)
            .to_numpy(dtype=np.float64)
            for v in ("share", "events", "per_customer")
        ]
        return grids[0], grids[1], grids[2]

    def make(segment: str) -> list[Any]:
        share, events, per = matrices(segment)
        return [
            go.Heatmap(
                z=share,
                x=names,
                y=list(STAGES),
                colorscale="Blues",
                zmin=0,
                text=[[f"{v:.0%}" if v else "" for v in row] for row in share],
                texttemplate="%{text}",
                customdata=np.stack([events, per], axis=-1),
                colorbar={"tickformat": ".0%"},
                hovertemplate="%{y} / %{x}: %{z:.1%} of the stage's events<br>%{customdata[0]:,} events, "
                "%{customdata[1]:.2f} per customer-step<extra></extra>",
            )
        ]

    what = "channel" if kind == "channel" else "event type"
    title = f"Touchpoints of each stage by {what}"
    fig = layout(go.Figure(traces_by_segment(journey, make)), title, yaxis={"autorange": "reversed"})
    png = heat_png(
        matrices(ALL)[0], STAGES, names, f"{title} (all customers)", ".0%", "share of the stage's events"
    )
    window = journey.meta["window_days"]
    caption = (
        f"Events in the {window:g} days before each cutoff, attributed to the stage the customer was in at "
        f"that cutoff, by {what}: each row shows how a stage's events split (hover for counts and events per "
        "customer-step). Messages the shop sent count as touchpoints too."
    )
    return Chart(f"touchpoints_{kind}", title, caption, fig, png)


def charts(journey: MapFrames) -> list[Chart]:
    """The page's charts in order; touchpoints only with events, the comparison only with segments."""
    made = [
        _mix_chart(journey),
        _flows_chart(journey),
        _touchpoint_chart(journey, "channel"),
        _touchpoint_chart(journey, "event_type"),
        friction_chart(journey),
        conversion_chart(journey),
        time_chart(journey),
        segments_chart(journey),
    ]
    return [c for c in made if c is not None]
