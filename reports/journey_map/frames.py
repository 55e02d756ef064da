"""The frames of a journey map and the findings a marketer reads first in them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reports.journey_map.panel import ALL, AT_RISK, FUNNEL


@dataclass
class MapFrames:
    """The frames of a journey map, each with a `segment` column (`ALL` for the whole base).

    Attributes:
        mix: segment, cutoff, split, stage, customers, share (of the segment's customers at that cutoff),
            mean_proba (mean probability of the stage; NaN without probabilities).
        transitions: segment, from_stage (a stage or `ENTERED`), to_stage (a stage or `LEFT`), customers:
            moves between consecutive cutoffs, summed over all pairs of cutoffs one step apart.
        touchpoints: segment, stage, kind ("channel" or "event_type"), name, events, share (of the stage's
            events of that kind), per_customer (events per customer-step in the stage).
        friction: segment, stage, customers (customer-steps from the stage with a next cutoff), the
            one-step outcome shares advance, stall, back, drop, exit (they sum to 1), next_1 (to the next
            funnel stage in one step), next_k and advance_k (the next / any later funnel stage within k
            steps, over customer-steps with k cutoffs ahead); for at_risk, advance means won back into the
            funnel, and next_* are NaN, as for loyal.
        time_in_stage: segment, stage, runs, median_days, p75_days, mean_days, censored (share of runs cut
            by the edge of the cutoffs, whose length is a lower bound).
        headlines: the main findings in words.
        meta: what the map was made from and its settings (k, step_days, window_days, notes, ...).
        segments: the segments in display order, `ALL` first.
    """

    mix: pd.DataFrame
    transitions: pd.DataFrame
    touchpoints: pd.DataFrame
    friction: pd.DataFrame
    time_in_stage: pd.DataFrame
    headlines: list[str]
    meta: dict[str, Any]
    segments: list[str] = field(default_factory=lambda: [ALL])

    def frames(self) -> dict[str, pd.DataFrame]:
        return {
            "mix": self.mix,
            "transitions": self.transitions,
            "touchpoints": self.touchpoints,
            "friction": self.friction,
            "time_in_stage": self.time_in_stage,
        }


def of_segment(frame: pd.DataFrame, segment: str) -> pd.DataFrame:
    """The rows of one segment of a map's frame."""
    return frame[frame["segment"] == segment]


def headlines(journey: MapFrames, min_customers: int = 20) -> list[str]:
    """The findings a marketer reads first: where the funnel leaks, stalls and drops, in words.

    Stages with fewer than `min_customers` customer-steps are not singled out (their shares are noise).
    """
    meta = journey.meta
    k, step = meta["k"], meta["step_days"]
    lines = [
        f"{meta['customers']:,} customers at {meta['cutoffs']} cutoffs ({meta['first_cutoff']} .. "
        f"{meta['last_cutoff']}, every {step:g} days)."
    ]
    mix = journey.mix[journey.mix["segment"] == ALL]
    last = mix[mix["cutoff"] == mix["cutoff"].max()].sort_values("share", ascending=False)
    if len(last) and last["customers"].sum():
        top = last.iloc[0]
        lines.append(f"At the last cutoff most customers are in {top['stage']} ({top['share']:.0%}).")
    f = journey.friction[
        (journey.friction["segment"] == ALL) & (journey.friction["customers"] >= min_customers)
    ]
    f = f.set_index("stage")
    funnel = f[f.index.isin(FUNNEL[:-1])]
    leak = funnel["next_k"].dropna()
    if len(leak):
        stage = str(leak.idxmin())
        nxt = FUNNEL[FUNNEL.index(stage) + 1]
        lines.append(
            f"Biggest leak: only {leak.min():.0%} of {stage} customers reach {nxt} within {k} steps "
            f"({k * step:g} days)."
        )
        if journey.meta.get("segmentation") and len(journey.segments) > 2:
            by = journey.friction[
                (journey.friction["stage"] == stage)
                & (journey.friction["segment"] != ALL)
                & (journey.friction["customers"] >= min_customers)
            ].dropna(subset=["next_k"])
            rates = by.set_index("segment")["next_k"]
            if len(rates) > 1 and rates.max() > rates.min():
                lo, hi = str(rates.idxmin()), str(rates.idxmax())
                lines.append(
                    f"By {journey.meta['segmentation']}: {stage} -> {nxt} within {k} steps ranges from "
                    f"{rates[lo]:.0%} ({lo}) to {rates[hi]:.0%} ({hi})."
                )
    in_funnel = f[f.index.isin(FUNNEL)]
    if len(in_funnel):
        stalls, drops = in_funnel["stall"], in_funnel["drop"]
        stage = str(stalls.idxmax())
        times = of_segment(journey.time_in_stage, ALL).set_index("stage")["median_days"]
        lines.append(
            f"Customers stall most in {stage}: {float(stalls[stage]):.0%} are still there a step later "
            f"(median time in stage {float(times[stage]):g} days)."
        )
        stage = str(drops.idxmax())
        if drops.max() > 0:
            lines.append(
                f"Most drops to at_risk come from {stage}: {float(drops[stage]):.0%} of its customers "
                "a step later."
            )
    if AT_RISK in f.index:
        row = f.loc[AT_RISK, ["advance", "advance_k", "exit"]].astype(float)
        won, won_k, left = (float(v) for v in row.to_numpy())
        # Shares over customer-steps that have k cutoffs ahead: none when the data is shorter than k steps.
        within = (
            f", {won_k:.0%} within {k} steps"
            if np.isfinite(won_k)
            else f" (too few cutoffs to look {k} ahead)"
        )
        lines.append(
            f"{won:.0%} of at_risk customers are won back into the funnel a step later{within}; "
            f"{left:.0%} leave the active base."
        )
    return lines
