"""The journey map's charts of friction: where customers are a step later, how many reach the next stage,
how long they stay in each, and the segments side by side."""

from __future__ import annotations

from typing import Any

import numpy as np

from features.schema import STAGES
from reports.html import figure
from reports.journey_map.figures import OUTCOME_COLORS, Chart, heat_png, layout, traces_by_segment
from reports.journey_map.frames import MapFrames, of_segment
from reports.journey_map.panel import ALL, AT_RISK, FUNNEL, OUTCOMES


def friction_chart(journey: MapFrames) -> Chart:
    import plotly.graph_objects as go

    labels = {
        "advance": "advance",
        "stall": "stall (same stage)",
        "back": "back (earlier stage)",
        "drop": "drop to at_risk",
        "exit": "leave the active base",
    }

    def make(segment: str) -> list[Any]:
        f = of_segment(journey.friction, segment)
        return [
            go.Bar(
                y=f["stage"],
                x=f[o].fillna(0),
                name=labels[o],
                orientation="h",
                legendgroup=o,
                marker={"color": OUTCOME_COLORS[o]},
                text=[f"{v:.0%}" if v >= 0.04 else "" for v in f[o].fillna(0)],
                textposition="inside",
                customdata=f["customers"],
                hovertemplate="%{y}: %{x:.1%} "
                + labels[o]
                + " (of %{customdata:,} customer-steps)<extra></extra>",
            )
            for o in OUTCOMES
        ]

    fig = layout(
        go.Figure(traces_by_segment(journey, make)),
        "Where customers are a step later",
        barmode="stack",
        xaxis={"tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
    )
    f = of_segment(journey.friction, ALL)
    png = figure(8, 3.6)
    ax = png.add_subplot()
    left = np.zeros(len(f))
    for o in OUTCOMES:
        values = f[o].fillna(0).to_numpy()
        ax.barh(f["stage"], values, left=left, color=OUTCOME_COLORS[o], label=labels[o])
        left += values
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of customer-steps")
    ax.set_title("Where customers are a step later (all customers)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    caption = (
        "For the customers in each stage at a cutoff, where they are at the next cutoff: advance along the "
        "funnel awareness -> consideration -> decision -> post_purchase -> loyal (for at_risk: won back into "
        "the funnel), stall in the same stage, go back, drop to at_risk, or leave the active base. A large "
        "stall or drop marks a friction point."
    )
    return Chart("friction", "Friction: where customers stall or drop", caption, fig, png)


def conversion_chart(journey: MapFrames) -> Chart:
    import plotly.graph_objects as go

    k = journey.meta["k"]
    stages = [*FUNNEL[:-1], AT_RISK]
    series = (
        ("next_1", "next stage, one step later"),
        ("next_k", f"next stage within {k} steps"),
        ("advance_k", f"any later stage within {k} steps (at_risk: won back)"),
    )
    colors = ("#9ecae1", "#3182bd", "#31a354")

    def make(segment: str) -> list[Any]:
        f = of_segment(journey.friction, segment).set_index("stage").reindex(stages)
        return [
            go.Bar(
                x=stages,
                y=f[col],
                name=name,
                marker={"color": color},
                legendgroup=col,
                text=[f"{v:.0%}" if np.isfinite(v) else "" for v in f[col]],
                textposition="outside",
                hovertemplate="%{x}: %{y:.1%} " + name + "<extra></extra>",
            )
            for (col, name), color in zip(series, colors, strict=True)
        ]

    fig = layout(
        go.Figure(traces_by_segment(journey, make)),
        "Conversion to the next stage",
        barmode="group",
        yaxis={"tickformat": ".0%", "range": [0, 1.05]},
    )
    f = of_segment(journey.friction, ALL).set_index("stage").reindex(stages)
    png = figure(8, 3.6)
    ax = png.add_subplot()
    x = np.arange(len(stages))
    for i, ((col, name), color) in enumerate(zip(series, colors, strict=True)):
        ax.bar(x + (i - 1) * 0.27, f[col].fillna(0), width=0.27, color=color, label=name)
    ax.set_xticks(x, stages)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of customer-steps")
    ax.set_title("Conversion to the next stage (all customers)")
    ax.legend(fontsize=8)
    step = journey.meta["step_days"]
    caption = (
        f"Share of the customers in each stage who are in the next funnel stage one step ({step:g} days) "
        f"later, who reach it within {k} steps, and who reach any later stage within {k} steps (counted over "
        f"the cutoffs with {k} cutoffs ahead). The lowest bar is where the funnel leaks most."
    )
    return Chart("conversion", "Conversion to the next stage", caption, fig, png)


def time_chart(journey: MapFrames) -> Chart:
    import plotly.graph_objects as go

    def make(segment: str) -> list[Any]:
        t = of_segment(journey.time_in_stage, segment)
        custom = np.stack([t["runs"], t["censored"].fillna(0)], axis=-1)
        return [
            go.Bar(
                x=t["stage"],
                y=t[col],
                name=name,
                marker={"color": color},
                legendgroup=col,
                customdata=custom,
                hovertemplate="%{x}: " + name + " %{y:g} days (%{customdata[0]:,} runs, "
                "%{customdata[1]:.0%} cut by the edge of the data)<extra></extra>",
            )
            for col, name, color in (
                ("median_days", "median", "#3182bd"),
                ("p75_days", "75th percentile", "#9ecae1"),
            )
        ]

    fig = layout(
        go.Figure(traces_by_segment(journey, make)),
        "Time spent in each stage",
        barmode="group",
        yaxis={"title": {"text": "days"}},
    )
    t = of_segment(journey.time_in_stage, ALL)
    png = figure(8, 3.6)
    ax = png.add_subplot()
    x = np.arange(len(t))
    ax.bar(x - 0.2, t["median_days"].fillna(0), width=0.4, color="#3182bd", label="median")
    ax.bar(x + 0.2, t["p75_days"].fillna(0), width=0.4, color="#9ecae1", label="75th percentile")
    ax.set_xticks(x, t["stage"])
    ax.set_ylabel("days")
    ax.set_title("Time spent in each stage (all customers)")
    ax.legend(fontsize=8)
    caption = (
        "Length of each run of consecutive cutoffs a customer spends in one stage, in days (cutoffs x "
        f"{journey.meta['step_days']:g}). Runs cut by the first or last cutoff, or by a gap between the "
        "build's windows, count as seen, so long stays are underestimated (hover for their share)."
    )
    return Chart("time_in_stage", "Time in stage", caption, fig, png)


def segments_chart(journey: MapFrames) -> Chart | None:
    import plotly.graph_objects as go

    if len(journey.segments) < 3:
        return None
    k = journey.meta["k"]
    metrics = (
        ("next_k", f"reach the next stage within {k} steps", ".0%"),
        ("stall", "stall a step later", ".0%"),
        ("drop", "drop to at_risk a step later", ".0%"),
        ("exit", "leave the active base a step later", ".0%"),
        ("median_days", "median days in stage", "g"),
    )
    frames = journey.friction.merge(journey.time_in_stage, on=["segment", "stage"])
    traces, grids = [], {}
    for i, (col, name, fmt) in enumerate(metrics):
        z = (
            frames.pivot_table(index="segment", columns="stage", values=col, aggfunc="first", dropna=False)
            .reindex(index=journey.segments, columns=list(STAGES))
            .to_numpy(dtype=np.float64)
        )
        grids[col] = z
        text = [[format(v, fmt) if np.isfinite(v) else "" for v in row] for row in z]
        traces.append(
            go.Heatmap(
                z=z,
                x=list(STAGES),
                y=journey.segments,
                colorscale="Blues",
                text=text,
                texttemplate="%{text}",
                visible=i == 0,
                name=name,
                colorbar={"tickformat": ".0%" if fmt == ".0%" else ""},
                hovertemplate="%{y} / %{x}: %{text} " + name + "<extra></extra>",
            )
        )
    buttons = [
        {
            "label": name,
            "method": "update",
            "args": [
                {"visible": [j == i for j in range(len(metrics))]},
                {"title.text": f"Segments side by side: {name}"},
            ],
        }
        for i, (_, name, _) in enumerate(metrics)
    ]
    fig = layout(
        go.Figure(traces),
        f"Segments side by side: {metrics[0][1]}",
        yaxis={"autorange": "reversed"},
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}],
    )
    png = heat_png(
        grids["next_k"],
        journey.segments,
        STAGES,
        f"Reach the next stage within {k} steps, by segment",
        ".0%",
        "share",
    )
    caption = (
        f"Every segment of '{journey.meta['segmentation']}' beside the whole base, one figure per measure "
        "(pick it in the menu): the stages where a segment converts worse or drops more than the others."
    )
    return Chart("segments", "Segments side by side", caption, fig, png, by_segment=False)
