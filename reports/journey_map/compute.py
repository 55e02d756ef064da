"""The journey map of some stage assignments: the frames of the whole base and of every segment, and the
headlines a marketer reads first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from reports.journey_map.events import Events
from reports.journey_map.frames import MapFrames, headlines
from reports.journey_map.panel import (
    ALL,
    DAY_MS,
    friction_frame,
    mix_frame,
    panel_of,
    time_in_stage_frame,
    touchpoints_frame,
    transitions_frame,
)
from reports.journey_map.render import MapPaths, write_map
from reports.journey_map.segments import cap_segments, segment_labels


@dataclass
class JourneyMap(MapFrames):
    """A journey map: its frames (`MapFrames`), and the page, PNGs and CSVs they make (`write`)."""

    def write(self, out_dir: Path) -> MapPaths:
        """Writes journey_map.html (self-contained), a PNG per chart, the frames as CSV and summary.json."""
        return write_map(self, Path(out_dir))


def compute_journey_map(
    stages: pd.DataFrame,
    events: pd.DataFrame | Path | None = None,
    segments: str | Path | pd.Series | dict[str, str] | None = None,
    *,
    k: int = 4,
    window_days: float | None = None,
    max_segments: int = 8,
    meta: dict[str, Any] | None = None,
) -> JourneyMap:
    """The journey map of some stage assignments (`stage_assignments`, or any such frame).

    Args:
        stages: one row per (customer_id, cutoff) with its stage; optional `split` and `proba_<stage>`.
        events: the events (a contract frame, or a Parquet file or folder) for touchpoints and built-in
            segments; None leaves touchpoints out.
        segments: "acquisition_channel" or "value_tier" (built from the events), a CSV / Parquet file of
            customer_id,segment, or a mapping customer_id -> segment; None: the whole base only.
        k: the horizon, in steps between cutoffs, of `next_k` and `advance_k`.
        window_days: the touchpoint window before each cutoff (default: one step, so that every event
            counts once).
        max_segments: the largest segments are kept, the rest become "other".
        meta: extra entries for `JourneyMap.meta` (model, features, notes, ...).

    Raises:
        ValueError: the frame lacks a column, holds an unknown stage or a customer twice at a cutoff, or
            `k` < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    panel = panel_of(stages)
    meta = dict(meta or {})
    notes: list[str] = list(meta.pop("notes", []))
    window_ms = round(window_days * DAY_MS) if window_days else panel.step_ms
    ev: Events | None = None
    if isinstance(events, pd.DataFrame):
        ev = Events.from_frame(events, panel.customers)
    elif events is not None:
        ev = Events.read(Path(events), panel.customers)

    name, labels, seg_notes = segment_labels(segments, ev, panel.customers)
    notes += seg_notes
    names = [ALL]
    segment_of = np.zeros(len(panel.customers), dtype=np.int64)
    if labels is not None:
        labels = cap_segments(labels, max_segments)
        order = pd.Series(labels).value_counts()
        names += [str(s) for s in order.index]
        segment_of = pd.Categorical(labels, categories=list(order.index)).codes.astype(np.int64) + 1

    parts: dict[str, list[pd.DataFrame]] = {"mix": [], "transitions": [], "friction": [], "time": []}
    for g, segment in enumerate(names):
        in_segment = np.ones(len(panel.customers), dtype=bool) if g == 0 else segment_of == g
        codes = panel.codes[in_segment]
        parts["mix"].append(mix_frame(panel, np.flatnonzero(in_segment[panel.row_customer]), segment))
        parts["transitions"].append(transitions_frame(codes, panel, segment))
        parts["friction"].append(friction_frame(codes, panel, k, segment))
        parts["time"].append(time_in_stage_frame(codes, panel, segment))
    mix = pd.concat(parts["mix"], ignore_index=True)
    touchpoints = touchpoints_frame(
        ev if ev is not None else Events.concat([]), panel, window_ms, segment_of, names, mix
    )
    if ev is None:
        notes.append("no events given: touchpoints left out")
    step_days = panel.step_ms / DAY_MS
    if events is not None and not isinstance(events, pd.DataFrame):
        meta.setdefault("events_path", str(events))
    meta.setdefault("created_at", pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC"))
    meta.update(
        {
            "customers": len(panel.customers),
            "rows": len(stages),
            "cutoffs": panel.n_cutoffs,
            "first_cutoff": pd.Timestamp(panel.grid_ms[0], unit="ms", tz="UTC").date().isoformat(),
            "last_cutoff": pd.Timestamp(panel.grid_ms[-1], unit="ms", tz="UTC").date().isoformat(),
            "step_days": step_days,
            "window_days": window_ms / DAY_MS,
            "k": k,
            "segmentation": name,
            "events": len(ev) if ev is not None else 0,
            "notes": notes,
        }
    )
    journey = JourneyMap(
        mix=mix,
        transitions=pd.concat(parts["transitions"], ignore_index=True),
        touchpoints=touchpoints,
        friction=pd.concat(parts["friction"], ignore_index=True),
        time_in_stage=pd.concat(parts["time"], ignore_index=True),
        headlines=[],
        meta=meta,
        segments=names,
    )
    journey.headlines = headlines(journey)
    return journey
