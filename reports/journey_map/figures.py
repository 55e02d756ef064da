"""What every chart of the journey map is made of: an interactive figure (plotly) for the page and a PNG
(matplotlib, on its own canvas) beside it, in the map's colours, with one set of traces per segment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reports.html import figure
from reports.journey_map.frames import MapFrames
from reports.journey_map.panel import ALL, ENTERED, LEFT

STAGE_COLORS: dict[str, str] = {
    "awareness": "#6baed6",
    "consideration": "#9e9ac8",
    "decision": "#fd8d3c",
    "post_purchase": "#74c476",
    "loyal": "#238b45",
    "at_risk": "#de2d26",
    ENTERED: "#bdbdbd",
    LEFT: "#636363",
}
OUTCOME_COLORS: dict[str, str] = {
    "advance": "#31a354",
    "stall": "#fdd0a2",
    "back": "#9ecae1",
    "drop": "#de2d26",
    "exit": "#636363",
}


@dataclass
class Chart:
    """One chart of the page: its interactive figure (plotly) and its PNG (matplotlib)."""

    key: str
    title: str
    caption: str
    figure: Any
    png: Figure | None
    by_segment: bool = True


def rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def dates(values: pd.Series) -> list[Any]:
    return list(pd.DatetimeIndex(pd.to_datetime(values, utc=True)).tz_convert(None).to_pydatetime())


def layout(fig: Any, title: str, **extra: Any) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=440,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.15},
        **extra,
    )
    return fig


def traces_by_segment(journey: MapFrames, make: Callable[[str], list[Any]]) -> list[Any]:
    """The traces of every segment; only the whole base's are visible until the page's selector says."""
    traces = []
    for segment in journey.segments:
        for trace in make(segment):
            trace.update(meta=segment, visible=segment == ALL)
            traces.append(trace)
    return traces


def heat_png(
    z: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, fmt: str, label: str
) -> Figure:
    fig = figure(1.6 + 0.55 * len(cols), 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    image = ax.imshow(z, cmap="Blues", aspect="auto")
    fig.colorbar(image, ax=ax, label=label)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_title(title)
    threshold = np.nanmax(z) / 2 if z.size and np.isfinite(z).any() else 0
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            if np.isfinite(z[i, j]):
                ax.text(
                    j,
                    i,
                    format(z[i, j], fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if z[i, j] > threshold else "black",
                )
    return fig
