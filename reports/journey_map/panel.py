"""The stage assignments as a dense customer x cutoff matrix of stage codes, and the frames of a journey map
computed on it with numpy (a build of 20,000 customers x 20 cutoffs is 400,000 cells): stage mix, flows
between cutoffs, friction one and k steps later, time in stage and touchpoints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.schema import CHANNELS, EVENT_TYPES, STAGES, Stage
from reports.journey_map.events import Events

# The funnel a customer is meant to move along; at_risk sits outside it (the drop).
FUNNEL: tuple[str, ...] = (
    Stage.AWARENESS.value,
    Stage.CONSIDERATION.value,
    Stage.DECISION.value,
    Stage.POST_PURCHASE.value,
    Stage.LOYAL.value,
)
AT_RISK = Stage.AT_RISK.value
ENTERED = "entered"  # a flow's source: no row at the previous cutoff, a row at this one
LEFT = "left"  # a flow's target: a row at this cutoff, none at the next (inactive, out of the active base)
ALL = "all customers"  # the segment that is the whole base
OUTCOMES: tuple[str, ...] = ("advance", "stall", "back", "drop", "exit")
DAY_MS = 86_400_000

_S = len(STAGES)
_AT_RISK = STAGES.index(AT_RISK)
# Funnel position of each stage code (at_risk: -1).
_RANK = np.array([FUNNEL.index(s) if s in FUNNEL else -1 for s in STAGES], dtype=np.int64)
# The next funnel stage of each stage code (-9: none, for loyal and at_risk).
_NEXT = np.array(
    [STAGES.index(FUNNEL[FUNNEL.index(s) + 1]) if s in FUNNEL[:-1] else -9 for s in STAGES], dtype=np.int64
)


@dataclass
class Panel:
    """The stage frame as a dense (customer, cutoff) matrix of stage codes (-1: no row)."""

    customers: np.ndarray  # (C,) ids, sorted
    grid_ms: np.ndarray  # (T,) cutoffs, sorted
    split: np.ndarray  # (T,) split of each cutoff
    step_ms: int
    codes: np.ndarray  # (C, T + 1) int8; the extra last column is all -1, the target of a missing offset
    row_customer: np.ndarray  # (n,) per input row
    row_cutoff: np.ndarray  # (n,)
    row_stage: np.ndarray  # (n,)
    proba: np.ndarray | None  # (n, S)

    @property
    def n_cutoffs(self) -> int:
        return len(self.grid_ms)

    def offset(self, steps: int) -> np.ndarray:
        """(T,) column of the cutoff `steps` steps after (before, if negative) each one; T where none."""
        target = self.grid_ms + steps * self.step_ms
        pos = np.searchsorted(self.grid_ms, target)
        found = (pos < len(self.grid_ms)) & (self.grid_ms[np.minimum(pos, len(self.grid_ms) - 1)] == target)
        return np.where(found, pos, len(self.grid_ms))


def panel_of(stages: pd.DataFrame) -> Panel:
    missing = {"customer_id", "cutoff", "stage"} - set(stages.columns)
    if missing:
        raise ValueError(f"stage assignments lack column(s) {', '.join(sorted(missing))}")
    if stages.empty:
        raise ValueError("no stage assignments: the map needs at least one customer at one cutoff")
    unknown = set(stages["stage"].unique()) - set(STAGES)
    if unknown:
        raise ValueError(
            f"unknown stage(s) {', '.join(map(str, sorted(unknown)))}; known: {', '.join(STAGES)}"
        )
    customers, row_customer = np.unique(stages["customer_id"].astype(str).to_numpy(), return_inverse=True)
    cut = pd.to_datetime(stages["cutoff"], utc=True).dt.as_unit("ms").astype("int64").to_numpy()
    grid, row_cutoff = np.unique(cut, return_inverse=True)
    row_stage = pd.Categorical(stages["stage"], categories=STAGES).codes.astype(np.int64)
    codes = np.full((len(customers), len(grid) + 1), -1, dtype=np.int8)
    codes[row_customer, row_cutoff] = row_stage
    if (codes[:, :-1] >= 0).sum() != len(stages):
        raise ValueError("stage assignments hold a customer twice at one cutoff")
    # The smallest gap is one step: a build's cutoffs are regular within a split, wider between splits.
    step = int(np.diff(grid).min()) if len(grid) > 1 else 7 * DAY_MS
    split = np.full(len(grid), "", dtype=object)
    if "split" in stages.columns:
        split[row_cutoff] = stages["split"].astype(str).to_numpy()
    proba_cols = [f"proba_{s}" for s in STAGES]
    proba = stages[proba_cols].to_numpy(dtype=np.float64) if set(proba_cols) <= set(stages.columns) else None
    return Panel(customers, grid, split, step, codes, row_customer, row_cutoff, row_stage, proba)


def mix_frame(panel: Panel, rows: np.ndarray, segment: str) -> pd.DataFrame:
    t, s = panel.row_cutoff[rows], panel.row_stage[rows]
    T = panel.n_cutoffs
    counts = np.bincount(t * _S + s, minlength=T * _S).reshape(T, _S)
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    if panel.proba is not None:
        sums = np.stack(
            [np.bincount(t, weights=panel.proba[rows, j], minlength=T) for j in range(_S)], axis=1
        )
        mean_proba = np.divide(sums, totals, out=np.full(sums.shape, np.nan), where=totals > 0)
    else:
        mean_proba = np.full(counts.shape, np.nan)
    return pd.DataFrame(
        {
            "segment": segment,
            "cutoff": pd.to_datetime(np.repeat(panel.grid_ms, _S), unit="ms", utc=True),
            "split": np.repeat(panel.split, _S),
            "stage": np.tile(np.asarray(STAGES, dtype=object), T),
            "customers": counts.ravel(),
            "share": share.ravel(),
            "mean_proba": mean_proba.ravel(),
        }
    )


def _steps(codes: np.ndarray, panel: Panel) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) codes of every pair of cutoffs one step apart (-1: no row), flattened."""
    nxt = panel.offset(1)
    have = np.flatnonzero(nxt < panel.n_cutoffs)
    return codes[:, have].ravel().astype(np.int64), codes[:, nxt[have]].ravel().astype(np.int64)


def transitions_frame(codes: np.ndarray, panel: Panel, segment: str) -> pd.DataFrame:
    a, b = _steps(codes, panel)
    seen = (a >= 0) | (b >= 0)
    # Code _S stands for ENTERED as a source and for LEFT as a target.
    a, b = np.where(a[seen] < 0, _S, a[seen]), np.where(b[seen] < 0, _S, b[seen])
    counts = np.bincount(a * (_S + 1) + b, minlength=(_S + 1) ** 2).reshape(_S + 1, _S + 1)
    sources = np.asarray([*STAGES, ENTERED], dtype=object)
    targets = np.asarray([*STAGES, LEFT], dtype=object)
    i, j = np.nonzero(counts)
    return pd.DataFrame(
        {"segment": segment, "from_stage": sources[i], "to_stage": targets[j], "customers": counts[i, j]}
    )


def _advances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether each move a -> b goes forward: to a later funnel stage, or for at_risk back into the funnel."""
    rank_a = _RANK[a]
    rank_b = np.where(b >= 0, _RANK[np.maximum(b, 0)], -2)
    return np.where(rank_a >= 0, rank_b > rank_a, rank_b >= 0)


def _share(stage: np.ndarray, flag: np.ndarray, n: np.ndarray) -> np.ndarray:
    hits = np.bincount(stage, weights=flag.astype(np.float64), minlength=_S)
    return np.divide(hits, n, out=np.full(_S, np.nan), where=n > 0)


def friction_frame(codes: np.ndarray, panel: Panel, k: int, segment: str) -> pd.DataFrame:
    a, b = _steps(codes, panel)
    a, b = a[a >= 0], b[a >= 0]
    n = np.bincount(a, minlength=_S).astype(np.float64)
    funnel = _RANK[a] >= 0
    rank_b = np.where(b >= 0, _RANK[np.maximum(b, 0)], -2)
    out = pd.DataFrame({"segment": segment, "stage": STAGES, "customers": n.astype(np.int64)})
    out["advance"] = _share(a, _advances(a, b), n)
    out["stall"] = _share(a, b == a, n)
    out["back"] = _share(a, funnel & (rank_b >= 0) & (rank_b < _RANK[a]), n)
    out["drop"] = _share(a, funnel & (b == _AT_RISK), n)
    out["exit"] = _share(a, b < 0, n)
    out["next_1"] = _share(a, b == _NEXT[a], n)

    # Within k steps: only customer-steps with a cutoff k steps ahead, so that the end of the data does
    # not read as friction. A customer who leaves and comes back within k steps counts as reaching.
    ahead = [panel.offset(j) for j in range(1, k + 1)]
    have = np.flatnonzero(ahead[-1] < panel.n_cutoffs)
    base = codes[:, have].ravel().astype(np.int64)
    keep = base >= 0
    base = base[keep]
    reach_next = np.zeros(len(base), dtype=bool)
    reach_any = np.zeros(len(base), dtype=bool)
    for cols in ahead:
        to = codes[:, cols[have]].ravel().astype(np.int64)[keep]
        reach_next |= to == _NEXT[base]
        reach_any |= _advances(base, to)
    n_k = np.bincount(base, minlength=_S).astype(np.float64)
    out["next_k"] = _share(base, reach_next, n_k)
    out["advance_k"] = _share(base, reach_any, n_k)
    # Loyal has no later stage and at_risk no "next" one: say so rather than show a zero.
    no_next = _NEXT < 0
    out.loc[no_next, ["next_1", "next_k"]] = np.nan
    out.loc[out["stage"] == FUNNEL[-1], "advance_k"] = np.nan
    return out


def _runs(codes: np.ndarray, panel: Panel) -> pd.DataFrame:
    """Every run of consecutive cutoffs (one step apart) that a customer spends in one stage."""
    T = panel.n_cutoffs
    cells = codes[:, :T]
    prev, nxt = panel.offset(-1), panel.offset(1)
    valid = cells >= 0
    start = valid & (codes[:, prev] != cells)
    end = valid & (codes[:, nxt] != cells)
    _, t = np.nonzero(valid)  # row-major: a run's cells are consecutive here
    first, last = start[valid], end[valid]
    lengths = np.bincount(np.cumsum(first) - 1) if first.any() else np.zeros(0, dtype=np.int64)
    # A run that touches the first or last cutoff (or a gap between splits) may be longer than seen.
    censored = (prev[t[first]] == T) | (nxt[t[last]] == T)
    return pd.DataFrame(
        {
            "stage": cells[valid][first].astype(np.int64),
            "days": lengths * panel.step_ms / DAY_MS,
            "censored": censored,
        }
    )


def time_in_stage_frame(codes: np.ndarray, panel: Panel, segment: str) -> pd.DataFrame:
    runs = _runs(codes, panel)
    grouped = runs.groupby("stage")
    stats = pd.DataFrame(
        {
            "runs": grouped.size(),
            "median_days": grouped["days"].median(),
            "p75_days": grouped["days"].quantile(0.75),
            "mean_days": grouped["days"].mean(),
            "censored": grouped["censored"].mean(),
        }
    ).reindex(range(_S))
    stats["runs"] = stats["runs"].fillna(0).astype(np.int64)
    stats.insert(0, "stage", STAGES)
    stats.insert(0, "segment", segment)
    return stats.reset_index(drop=True)


def _attribute(events: Events, panel: Panel, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """(event index, cutoff column) of every event in the window before a cutoff: [cutoff - window, cutoff).

    Strictly before the cutoff, as the model's inputs are; an event falls in several windows only when the
    window is longer than the step between cutoffs.
    """
    first = np.searchsorted(panel.grid_ms, events.ts_ms, side="right")  # first cutoff after the event
    idx, cols = [], []
    for j in range(len(panel.grid_ms)):
        col = first + j
        ok = col < panel.n_cutoffs
        ok[ok] &= panel.grid_ms[col[ok]] - events.ts_ms[ok] <= window_ms
        if not ok.any():
            break
        idx.append(np.flatnonzero(ok))
        cols.append(col[ok])
    if not idx:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(idx), np.concatenate(cols)


def touchpoints_frame(
    events: Events,
    panel: Panel,
    window_ms: int,
    segment_of: np.ndarray,
    segments: list[str],
    mix: pd.DataFrame,
) -> pd.DataFrame:
    idx, col = _attribute(events, panel, window_ms)
    customer = events.customer[idx].astype(np.int64)
    stage = panel.codes[customer, col].astype(np.int64)
    seen = stage >= 0
    idx, customer, stage = idx[seen], customer[seen], stage[seen]
    # Customer-steps per (segment, stage): the denominator of events per customer-step.
    steps = mix.groupby(["segment", "stage"])["customers"].sum()
    frames = []
    for kind, names, codes in (
        ("channel", CHANNELS, events.channel[idx]),
        ("event_type", EVENT_TYPES, events.event_type[idx]),
    ):
        ok = codes >= 0
        K = len(names)
        for g, segment in enumerate(segments):
            mask = ok if segment == ALL else ok & (segment_of[customer] == g)
            counts = np.bincount(stage[mask] * K + codes[mask], minlength=_S * K).reshape(_S, K)
            totals = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
            denom = np.array([steps.get((segment, s), 0) for s in STAGES], dtype=np.float64)[:, None]
            per_customer = np.divide(counts, denom, out=np.zeros(counts.shape), where=denom > 0)
            i, j = np.nonzero(counts)
            frames.append(
                pd.DataFrame(
                    {
                        "segment": segment,
                        "stage": np.asarray(STAGES, dtype=object)[i],
                        "kind": kind,
                        "name": np.asarray(names, dtype=object)[j],
                        "events": counts[i, j],
                        "share": share[i, j],
                        "per_customer": per_customer[i, j],
                    }
                )
            )
    columns = ["segment", "stage", "kind", "name", "events", "share", "per_customer"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
