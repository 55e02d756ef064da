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
customers x 20 cutoffs is 400,000 cells), so the map costs far less than scoring the rows does.
`JourneyMap.write` renders a self-contained HTML page (plotly, its JavaScript embedded: no network), a PNG
of each chart (matplotlib) and the frames as CSV; `log_journey_map` puts that folder into the active MLflow
run. `build_journey_map` does it all from a features build and a model.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from matplotlib.figure import Figure

from features.build import SPLITS, input_files, padded_tokens
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.schema import CHANNELS, EVENT_TYPES, SHOP_SENT_EVENTS, STAGES, EventType, Stage
from training.data import FeatureBuild, FeatureData
from training.interface import Predictions

log = logging.getLogger(__name__)

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
BUILTIN_SEGMENTS: tuple[str, ...] = ("acquisition_channel", "value_tier")
# Events that say little about how a customer came: account events and messages the shop sent.
_NOT_ACQUISITION = frozenset({EventType.SIGNUP, EventType.NEWSLETTER_SIGNUP}) | SHOP_SENT_EVENTS

_S = len(STAGES)
_AT_RISK = STAGES.index(AT_RISK)
# Funnel position of each stage code (at_risk: -1).
_RANK = np.array([FUNNEL.index(s) if s in FUNNEL else -1 for s in STAGES], dtype=np.int64)
# The next funnel stage of each stage code (-9: none, for loyal and at_risk).
_NEXT = np.array(
    [STAGES.index(FUNNEL[FUNNEL.index(s) + 1]) if s in FUNNEL[:-1] else -9 for s in STAGES], dtype=np.int64
)
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
DAY_MS = 86_400_000
_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


# -- inputs ----------------------------------------------------------------------------------------------
def _stage_proba(predictor: object, data: FeatureData) -> np.ndarray:
    """(n, len(STAGES)) stage probabilities from a pyfunc, a scorer, or a plain function.

    `k=0` asks the registered pyfunc and the sequence scorer for no top items: the journey map needs the
    stage only, not a ranking of the catalogue for every row.
    """
    predict_features = getattr(predictor, "predict_features", None)
    predict = getattr(predictor, "predict", None)
    if callable(predict_features):
        out = predict_features(data, k=0)
    elif callable(predict):
        out = predict(data, k=0)
    elif callable(predictor):
        out = predictor(data)
    else:
        raise TypeError(f"cannot score stages with {type(predictor).__name__}")
    proba = out.stage_proba if isinstance(out, Predictions) else out
    if proba is None:
        raise ValueError("the model predicts no stage probabilities")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(data), _S):
        raise ValueError(f"stage probabilities of shape {proba.shape}, expected {(len(data), _S)}")
    return proba


def _scoring_data(table: pa.Table, max_len: int, n_items: int) -> FeatureData:
    """Model inputs of some rows without their labels (the map needs the model's stage, not the label's)."""
    n = table.num_rows
    return FeatureData(
        customer_id=np.asarray(table.column("customer_id").to_pylist(), dtype=object),
        cutoff_ms=table.column("cutoff").cast(pa.int64()).to_numpy() // 1000,
        tokens={name: padded_tokens(table, name, max_len).astype(np.int64) for name in TOKEN_FIELDS},
        length=table.column("seq_len").to_numpy().astype(np.int64),
        aggregates=np.column_stack(
            [table.column(a).to_numpy().astype(np.float32) for a in AGGREGATE_NAMES]
        ).reshape(n, len(AGGREGATE_NAMES)),
        stage=np.zeros(n, dtype=np.int64),
        targets={},
        next_items=[],
        logged_action=np.full(n, -1, dtype=np.int64),
        logged_propensity=np.full(n, np.nan),
        outcome=np.full(n, np.nan, dtype=np.float32),
        unsubscribed=np.full(n, np.nan, dtype=np.float32),
        n_items=n_items,
    )


def stage_assignments(
    predictor: object,
    build: FeatureBuild,
    splits: Sequence[str] = SPLITS,
    *,
    max_customers: int | None = None,
    seed: int = 0,
    chunk_rows: int = 32_768,
) -> pd.DataFrame:
    """The model's stage of every customer at every cutoff of a features build.

    Only the model's inputs are read, optionally of a seeded sample of customers (whole customers, so that
    their flows stay intact), and scored in chunks so that memory stays flat: the padded tokens of a chunk
    are its only dense copy. Scoring is the cost (the map itself takes about a second for 200,000 rows):
    on two busy CPU cores the demo's model scores one to three thousand rows a second.

    Args:
        predictor: something that gives stage probabilities for a `FeatureData`: a registered
            `JourneyPyfunc` (`predict_features`), a `Scorer` (`predict`), or a function returning
            `Predictions` or an (n, len(STAGES)) array.
        build: the features build whose rows are scored.
        splits: the splits to score (every cutoff by default: the map is about time).
        max_customers: score at most this many customers, drawn with `seed`; None: all of them.
        seed: the sample's seed.
        chunk_rows: rows scored at once.

    Returns:
        One row per (customer, cutoff): customer_id, cutoff (UTC), split, stage, and `proba_<stage>` for
        every stage, sorted by customer and cutoff.
    """
    rows = ds.dataset(str(build.path / "rows"), format="parquet")
    wanted = pc.field("split").isin(list(splits))
    if max_customers is not None:
        # Customers in a sorted order first, so that a seed draws the same sample from any file layout.
        ids = pc.unique(rows.to_table(columns=["customer_id"], filter=wanted).column("customer_id"))
        ids = ids.take(pc.sort_indices(ids))
        if len(ids) > max_customers:
            keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_customers, replace=False))
            wanted &= pc.field("customer_id").isin(ids.take(pa.array(keep)))
    columns = [
        "customer_id",
        "cutoff",
        "split",
        "seq_len",
        *(f"tok_{n}" for n in TOKEN_FIELDS),
        *AGGREGATE_NAMES,
    ]
    table = rows.to_table(columns=columns, filter=wanted)
    probas = [
        _stage_proba(predictor, _scoring_data(table.slice(lo, chunk_rows), build.max_len, build.n_items))
        for lo in range(0, table.num_rows, chunk_rows)
    ]
    proba = np.concatenate(probas) if probas else np.zeros((0, _S))
    frame = pd.DataFrame(
        {
            "customer_id": np.asarray(table.column("customer_id").to_pylist(), dtype=object),
            "cutoff": pd.to_datetime(table.column("cutoff").cast(pa.int64()).to_numpy(), unit="us", utc=True),
            "split": np.asarray(table.column("split").to_pylist(), dtype=object),
            "stage": np.asarray(STAGES, dtype=object)[proba.argmax(axis=1)] if len(proba) else [],
        }
    )
    for j, stage in enumerate(STAGES):
        frame[f"proba_{stage}"] = proba[:, j]
    return frame.sort_values(["customer_id", "cutoff"], ignore_index=True)


def _codes(values: pa.Array | pa.ChunkedArray, vocabulary: pa.Array) -> np.ndarray:
    """Position of each value in `vocabulary` (-1 where absent), hashing each distinct value once."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        inner = _codes(values.dictionary, vocabulary)
        indices = values.indices.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = inner[indices] if len(inner) else np.full(len(indices), -1, dtype=np.int64)
        if values.null_count:
            out[values.is_null().to_numpy(zero_copy_only=False)] = -1
        return out
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = values.cast(pa.string())
    found = pc.index_in(values, value_set=vocabulary.cast(pa.string()))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


@dataclass
class Events:
    """The events of the customers on a journey map, as compact code arrays (about 20 bytes an event).

    Attributes:
        customer: (m,) index into the map's customers.
        ts_ms: (m,) epoch milliseconds.
        event_type: (m,) index into `EVENT_TYPES` (-1: not in the contract).
        channel: (m,) index into `CHANNELS` (-1: unknown).
        value: (m,) the event's value (NaN where none).
    """

    customer: np.ndarray
    ts_ms: np.ndarray
    event_type: np.ndarray
    channel: np.ndarray
    value: np.ndarray

    def __len__(self) -> int:
        return len(self.customer)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, customers: np.ndarray) -> Events:
        """Events of a contract frame (customer_id, ts, event_type, channel[, value]) for these customers."""
        return cls.from_table(pa.Table.from_pandas(frame, preserve_index=False), customers)

    @classmethod
    def from_table(cls, table: pa.Table | pa.RecordBatch, customers: np.ndarray) -> Events:
        vocabulary = pa.array(customers.astype(str), pa.string())
        customer = _codes(table.column("customer_id"), vocabulary)
        keep = customer >= 0
        ts = table.column("ts")
        if not pa.types.is_timestamp(ts.type):
            raise ValueError(f"events: ts must be a timestamp column, not {ts.type}")
        # Naive timestamps are UTC, as everywhere in the event contract; floored to milliseconds.
        raw = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)
        ts_ms = raw * 1000 if ts.type.unit == "s" else raw // _PER_MS[ts.type.unit]
        event_type = _codes(table.column("event_type"), pa.array(EVENT_TYPES))
        names = table.schema.names
        channel = (
            _codes(table.column("channel"), pa.array(CHANNELS))
            if "channel" in names
            else np.full(table.num_rows, -1, dtype=np.int64)
        )
        value = (
            table.column("value").cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
            if "value" in names
            else np.full(table.num_rows, np.nan)
        )
        return cls(
            customer=customer[keep].astype(np.int32),
            ts_ms=ts_ms[keep].astype(np.int64),
            event_type=event_type[keep].astype(np.int8),
            channel=channel[keep].astype(np.int8),
            value=value[keep].astype(np.float32),
        )

    @classmethod
    def read(cls, path: Path, customers: np.ndarray, batch_rows: int = 1_000_000) -> Events:
        """Streams a Parquet file or folder of events, keeping only these customers' events."""
        dataset = ds.dataset([str(f) for f in input_files(path)], format="parquet")
        wanted = ["customer_id", "ts", "event_type", "channel", "value"]
        columns = [c for c in wanted if c in dataset.schema.names]
        parts = [
            cls.from_table(b, customers) for b in dataset.to_batches(columns=columns, batch_size=batch_rows)
        ]
        return cls.concat(parts)

    @classmethod
    def concat(cls, parts: list[Events]) -> Events:
        if not parts:
            empty = np.zeros(0)
            return cls(
                empty.astype(np.int32),
                empty.astype(np.int64),
                empty.astype(np.int8),
                empty.astype(np.int8),
                empty.astype(np.float32),
            )
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__dataclass_fields__))


# -- segments --------------------------------------------------------------------------------------------
def acquisition_channel(events: Events, n_customers: int) -> np.ndarray:
    """Channel of each customer's first own action: how they came to the shop.

    Sign-ups and messages the shop sent are skipped (many sources, the simulator among them, record every
    sign-up on the web, which would put everyone in one segment); a customer with nothing else falls back
    to their first event. Customers without events get "unknown".
    """
    out = np.full(n_customers, "unknown", dtype=object)
    if not len(events):
        return out
    skipped = np.isin(events.event_type, [EVENT_TYPES.index(e) for e in _NOT_ACQUISITION])
    # By customer, own actions before skipped events, then by time: each customer's first row wins.
    order = np.lexsort((events.ts_ms, skipped, events.customer))
    customer = events.customer[order]
    first = np.flatnonzero(np.r_[True, customer[1:] != customer[:-1]])
    channel_names = np.array([*CHANNELS, "unknown"], dtype=object)  # code -1 (no channel) -> "unknown"
    out[customer[first]] = channel_names[events.channel[order[first]]]
    return out


def value_tier(events: Events, n_customers: int) -> np.ndarray:
    """Each customer's purchase value over the whole input, in tiers: no purchase, then low / mid / high
    thirds of the buyers.

    Descriptive, not point in time: it uses purchases after early cutoffs too, which is what a marketer
    means by "our high-value customers".
    """
    purchase = events.event_type == EVENT_TYPES.index(EventType.PURCHASE)
    total = np.bincount(
        events.customer[purchase], weights=np.nan_to_num(events.value[purchase]), minlength=n_customers
    )
    bought = np.bincount(events.customer[purchase], minlength=n_customers) > 0
    out = np.full(n_customers, "no purchase", dtype=object)
    if bought.any():
        low, high = np.quantile(total[bought], [1 / 3, 2 / 3])
        tiers = np.where(total <= low, "low value", np.where(total <= high, "mid value", "high value"))
        out[bought] = tiers[bought]
    return out


def read_segments(path: Path) -> pd.Series:
    """A user's segmentation: a CSV or Parquet file with customer_id and segment columns.

    Raises:
        ValueError: the file has no customer_id column, or no segment column besides it.
    """
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    if "customer_id" not in frame.columns:
        raise ValueError(f"{path}: no customer_id column")
    others = [c for c in frame.columns if c != "customer_id"]
    column = "segment" if "segment" in frame.columns else (others[0] if len(others) == 1 else None)
    if column is None:
        raise ValueError(f"{path}: no segment column (columns: {', '.join(map(str, frame.columns))})")
    return pd.Series(frame[column].astype(str).to_numpy(), index=frame["customer_id"].astype(str).to_numpy())


def _cap_segments(labels: np.ndarray, max_segments: int) -> np.ndarray:
    """Keeps the largest segments and puts the rest in "other", so that the page stays readable."""
    counts = pd.Series(labels).value_counts()
    if len(counts) <= max_segments:
        return labels
    keep = set(counts.index[: max_segments - 1])
    return np.where(pd.Series(labels).isin(keep).to_numpy(), labels, "other")


# -- the map ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapPaths:
    """What `JourneyMap.write` wrote."""

    folder: Path
    html: Path
    pngs: dict[str, Path]
    csvs: dict[str, Path]
    summary: Path


@dataclass
class JourneyMap:
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

    def write(self, out_dir: Path) -> MapPaths:
        """Writes journey_map.html (self-contained), a PNG per chart, the frames as CSV and summary.json."""
        return _write(self, Path(out_dir))


@dataclass
class _Panel:
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


def _panel(stages: pd.DataFrame) -> _Panel:
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
    return _Panel(customers, grid, split, step, codes, row_customer, row_cutoff, row_stage, proba)


def _mix(panel: _Panel, rows: np.ndarray, segment: str) -> pd.DataFrame:
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


def _steps(codes: np.ndarray, panel: _Panel) -> tuple[np.ndarray, np.ndarray]:
    """(from, to) codes of every pair of cutoffs one step apart (-1: no row), flattened."""
    nxt = panel.offset(1)
    have = np.flatnonzero(nxt < panel.n_cutoffs)
    return codes[:, have].ravel().astype(np.int64), codes[:, nxt[have]].ravel().astype(np.int64)


def _transitions(codes: np.ndarray, panel: _Panel, segment: str) -> pd.DataFrame:
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


def _friction(codes: np.ndarray, panel: _Panel, k: int, segment: str) -> pd.DataFrame:
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


def _runs(codes: np.ndarray, panel: _Panel) -> pd.DataFrame:
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


def _time_in_stage(codes: np.ndarray, panel: _Panel, segment: str) -> pd.DataFrame:
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


def _attribute(events: Events, panel: _Panel, window_ms: int) -> tuple[np.ndarray, np.ndarray]:
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


def _touchpoints(
    events: Events,
    panel: _Panel,
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


def _segment_labels(
    spec: str | Path | pd.Series | dict[str, str] | None, events: Events | None, customers: np.ndarray
) -> tuple[str | None, np.ndarray | None, list[str]]:
    """(name of the segmentation, label per customer, notes) for a segmentation spec."""
    if spec is None:
        return None, None, []
    if isinstance(spec, str) and spec in BUILTIN_SEGMENTS:
        if events is None:
            return None, None, [f"segments by {spec} left out: they need the events"]
        labels = (acquisition_channel if spec == "acquisition_channel" else value_tier)(
            events, len(customers)
        )
        return spec, labels, []
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.exists():
            raise ValueError(
                f"segments {spec!r}: neither {' nor '.join(BUILTIN_SEGMENTS)} "
                "nor an existing CSV or Parquet file"
            )
        mapping, name = read_segments(path), path.stem
    else:
        mapping, name = pd.Series(spec), "segment"
    mapping.index = mapping.index.astype(str)
    mapping = mapping[~mapping.index.duplicated(keep="last")]
    labels = mapping.reindex(customers).fillna("unknown").astype(str).to_numpy(dtype=object)
    unknown = float(np.mean(labels == "unknown"))
    notes = (
        [f"{unknown:.0%} of the customers have no segment in the mapping (shown as unknown)"]
        if unknown
        else []
    )
    return name, labels, notes


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
    panel = _panel(stages)
    meta = dict(meta or {})
    notes: list[str] = list(meta.pop("notes", []))
    window_ms = round(window_days * DAY_MS) if window_days else panel.step_ms
    ev: Events | None = None
    if isinstance(events, pd.DataFrame):
        ev = Events.from_frame(events, panel.customers)
    elif events is not None:
        ev = Events.read(Path(events), panel.customers)

    name, labels, seg_notes = _segment_labels(segments, ev, panel.customers)
    notes += seg_notes
    names = [ALL]
    segment_of = np.zeros(len(panel.customers), dtype=np.int64)
    if labels is not None:
        labels = _cap_segments(labels, max_segments)
        order = pd.Series(labels).value_counts()
        names += [str(s) for s in order.index]
        segment_of = pd.Categorical(labels, categories=list(order.index)).codes.astype(np.int64) + 1

    parts: dict[str, list[pd.DataFrame]] = {"mix": [], "transitions": [], "friction": [], "time": []}
    for g, segment in enumerate(names):
        in_segment = np.ones(len(panel.customers), dtype=bool) if g == 0 else segment_of == g
        codes = panel.codes[in_segment]
        parts["mix"].append(_mix(panel, np.flatnonzero(in_segment[panel.row_customer]), segment))
        parts["transitions"].append(_transitions(codes, panel, segment))
        parts["friction"].append(_friction(codes, panel, k, segment))
        parts["time"].append(_time_in_stage(codes, panel, segment))
    mix = pd.concat(parts["mix"], ignore_index=True)
    touchpoints = _touchpoints(
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


def headlines(journey: JourneyMap, min_customers: int = 20) -> list[str]:
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
        times = _of(journey.time_in_stage, ALL).set_index("stage")["median_days"]
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


# -- rendering -------------------------------------------------------------------------------------------
@dataclass
class _Chart:
    """One chart of the page: its interactive figure (plotly) and its PNG (matplotlib)."""

    key: str
    title: str
    caption: str
    figure: Any
    png: Figure | None
    by_segment: bool = True


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _of(frame: pd.DataFrame, segment: str) -> pd.DataFrame:
    return frame[frame["segment"] == segment]


def _dates(values: pd.Series) -> list[Any]:
    return list(pd.DatetimeIndex(pd.to_datetime(values, utc=True)).tz_convert(None).to_pydatetime())


def _layout(fig: Any, title: str, **extra: Any) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=440,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.15},
        **extra,
    )
    return fig


def _traces_by_segment(journey: JourneyMap, make: Callable[[str], list[Any]]) -> list[Any]:
    """The traces of every segment; only the whole base's are visible until the page's selector says."""
    traces = []
    for segment in journey.segments:
        for trace in make(segment):
            trace.update(meta=segment, visible=segment == ALL)
            traces.append(trace)
    return traces


def _figure(fig: Any) -> Figure:
    """A matplotlib figure on its own Agg canvas (no pyplot state), as `training.plots` draws them."""
    from training.plots import _figure as agg_figure

    return agg_figure(*fig)


def _heat_png(
    z: np.ndarray, rows: Sequence[str], cols: Sequence[str], title: str, fmt: str, label: str
) -> Figure:
    fig = _figure((1.6 + 0.55 * len(cols), 1.2 + 0.45 * len(rows)))
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


def _mix_chart(journey: JourneyMap) -> _Chart:
    import plotly.graph_objects as go

    def make(segment: str) -> list[Any]:
        m = _of(journey.mix, segment)
        traces = []
        for stage in STAGES:
            s = m[m["stage"] == stage]
            traces.append(
                go.Scatter(
                    x=_dates(s["cutoff"]),
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

    fig = _layout(
        go.Figure(_traces_by_segment(journey, make)),
        "Stage mix over time",
        yaxis={"tickformat": ".0%", "range": [0, 1]},
        hovermode="x unified",
    )
    m = _of(journey.mix, ALL)
    png = _figure((8, 4))
    ax = png.add_subplot()
    shares = [m[m["stage"] == s]["share"].to_numpy() for s in STAGES]
    x = _dates(m[m["stage"] == STAGES[0]]["cutoff"])
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
    return _Chart("stage_mix", "Stage mix over time", caption, fig, png)


def _flows_chart(journey: JourneyMap) -> _Chart:
    import plotly.graph_objects as go

    sources, targets = [ENTERED, *STAGES], [*STAGES, LEFT]

    def make(segment: str) -> list[Any]:
        t = _of(journey.transitions, segment)
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
                    "color": [_rgba(STAGE_COLORS[s], 0.35) for s in t["from_stage"]],
                },
            )
        ]

    fig = _layout(go.Figure(_traces_by_segment(journey, make)), "Flows between stages, one step apart")
    t = _of(journey.transitions, ALL)
    matrix = (
        t.pivot_table(index="from_stage", columns="to_stage", values="customers", aggfunc="sum")
        .reindex(index=sources, columns=targets)
        .fillna(0)
        .to_numpy()
    )
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.full(matrix.shape, np.nan), where=totals > 0)
    png = _heat_png(
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
    return _Chart("flows", "Flows between stages", caption, fig, png)


def _touchpoint_chart(journey: JourneyMap, kind: str) -> _Chart | None:
    import plotly.graph_objects as go

    tp = journey.touchpoints[journey.touchpoints["kind"] == kind]
    universe = CHANNELS if kind == "channel" else EVENT_TYPES
    names = [n for n in universe if n in set(_of(tp, ALL)["name"])]
    if not names:
        return None

    def matrices(segment: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = _of(tp, segment)
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
    fig = _layout(go.Figure(_traces_by_segment(journey, make)), title, yaxis={"autorange": "reversed"})
    png = _heat_png(
        matrices(ALL)[0], STAGES, names, f"{title} (all customers)", ".0%", "share of the stage's events"
    )
    window = journey.meta["window_days"]
    caption = (
        f"Events in the {window:g} days before each cutoff, attributed to the stage the customer was in at "
        f"that cutoff, by {what}: each row shows how a stage's events split (hover for counts and events per "
        "customer-step). Messages the shop sent count as touchpoints too."
    )
    return _Chart(f"touchpoints_{kind}", title, caption, fig, png)


def _friction_chart(journey: JourneyMap) -> _Chart:
    import plotly.graph_objects as go

    labels = {
        "advance": "advance",
        "stall": "stall (same stage)",
        "back": "back (earlier stage)",
        "drop": "drop to at_risk",
        "exit": "leave the active base",
    }

    def make(segment: str) -> list[Any]:
        f = _of(journey.friction, segment)
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

    fig = _layout(
        go.Figure(_traces_by_segment(journey, make)),
        "Where customers are a step later",
        barmode="stack",
        xaxis={"tickformat": ".0%", "range": [0, 1]},
        yaxis={"autorange": "reversed"},
    )
    f = _of(journey.friction, ALL)
    png = _figure((8, 3.6))
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
    return _Chart("friction", "Friction: where customers stall or drop", caption, fig, png)


def _conversion_chart(journey: JourneyMap) -> _Chart:
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
        f = _of(journey.friction, segment).set_index("stage").reindex(stages)
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

    fig = _layout(
        go.Figure(_traces_by_segment(journey, make)),
        "Conversion to the next stage",
        barmode="group",
        yaxis={"tickformat": ".0%", "range": [0, 1.05]},
    )
    f = _of(journey.friction, ALL).set_index("stage").reindex(stages)
    png = _figure((8, 3.6))
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
    return _Chart("conversion", "Conversion to the next stage", caption, fig, png)


def _time_chart(journey: JourneyMap) -> _Chart:
    import plotly.graph_objects as go

    def make(segment: str) -> list[Any]:
        t = _of(journey.time_in_stage, segment)
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

    fig = _layout(
        go.Figure(_traces_by_segment(journey, make)),
        "Time spent in each stage",
        barmode="group",
        yaxis={"title": {"text": "days"}},
    )
    t = _of(journey.time_in_stage, ALL)
    png = _figure((8, 3.6))
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
    return _Chart("time_in_stage", "Time in stage", caption, fig, png)


def _segments_chart(journey: JourneyMap) -> _Chart | None:
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
    fig = _layout(
        go.Figure(traces),
        f"Segments side by side: {metrics[0][1]}",
        yaxis={"autorange": "reversed"},
        updatemenus=[{"buttons": buttons, "x": 1.0, "xanchor": "right", "y": 1.15, "yanchor": "top"}],
    )
    png = _heat_png(
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
    return _Chart("segments", "Segments side by side", caption, fig, png, by_segment=False)


def charts(journey: JourneyMap) -> list[_Chart]:
    """The page's charts in order; touchpoints only with events, the comparison only with segments."""
    made = [
        _mix_chart(journey),
        _flows_chart(journey),
        _touchpoint_chart(journey, "channel"),
        _touchpoint_chart(journey, "event_type"),
        _friction_chart(journey),
        _conversion_chart(journey),
        _time_chart(journey),
        _segments_chart(journey),
    ]
    return [c for c in made if c is not None]


def _table(frame: pd.DataFrame, columns: dict[str, str], percent: set[str]) -> str:
    """An HTML table with one body row per (segment, stage); rows of other segments start hidden."""
    head = "".join(f"<th>{html.escape(label)}</th>" for label in columns.values())
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for col in columns:
            v = r[col]
            if isinstance(v, float | np.floating):
                text = "" if not np.isfinite(v) else f"{v:.1%}" if col in percent else f"{v:.1f}"
            else:
                text = f"{v:,}" if isinstance(v, int | np.integer) else str(v)
            cells.append(f"<td>{html.escape(text)}</td>")
        hidden = "" if r["segment"] == ALL else " hidden"
        rows.append(f'<tr data-segment="{html.escape(str(r["segment"]))}"{hidden}>{"".join(cells)}</tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1100px;
color:#222;padding:0 16px}
h1{margin-bottom:4px} .meta{color:#555;font-size:14px} .caption{color:#444;font-size:14px;max-width:900px}
section{margin:28px 0} .chart{border:1px solid #eee;border-radius:6px}
.selector{position:sticky;top:0;background:#fff;padding:8px 0;border-bottom:1px solid #ddd;z-index:10}
table{border-collapse:collapse;font-size:13px} th,td{border-bottom:1px solid #eee;padding:4px 8px;
text-align:right} th:first-child,td:first-child,th:nth-child(2),td:nth-child(2){text-align:left}
.notes li{color:#555;font-size:14px}
"""

_SCRIPT = """
(function () {
  var select = document.getElementById('segment');
  if (!select) { return; }
  function show(segment) {
    document.querySelectorAll('.chart[data-by-segment] .plotly-graph-div').forEach(function (div) {
      if (!div.data) { return; }
      Plotly.restyle(div, {visible: div.data.map(function (t) { return t.meta === segment; })});
    });
    document.querySelectorAll('tr[data-segment]').forEach(function (row) {
      row.hidden = row.dataset.segment !== segment;
    });
  }
  select.addEventListener('change', function () { show(select.value); });
  // A link can open the page on one segment: journey_map.html#segment=web
  var wanted = decodeURIComponent((window.location.hash.match(/segment=([^&]*)/) || [])[1] || '');
  if (wanted && Array.prototype.some.call(select.options, function (o) { return o.value === wanted; })) {
    select.value = wanted;
    show(wanted);
  }
})();
"""


def _html(journey: JourneyMap, made: list[_Chart]) -> str:
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    meta = journey.meta
    esc = html.escape
    facts = [
        f"model: {meta.get('model', 'unknown')}",
        f"features: {meta.get('features', 'given frame')}",
        f"events: {meta.get('events_path', 'given frame' if meta.get('events') else 'none')}",
        f"{meta['customers']:,} customers, {meta['rows']:,} customer-cutoffs, {meta['events']:,} events",
        f"made {meta.get('created_at', '')}",
    ]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(meta.get('title', 'Journey map'))}</title><style>{_STYLE}</style>",
        # Plotly's JavaScript is embedded once: the page opens without any network.
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
        f"<h1>{esc(meta.get('title', 'Journey map'))}</h1>",
        f"<p class='meta'>{' &middot; '.join(esc(f) for f in facts)}</p>",
        "<section id='headlines'><h2>Headlines</h2><ul>",
        *(f"<li>{esc(line)}</li>" for line in journey.headlines),
        "</ul>",
    ]
    if meta.get("notes"):
        parts += ["<ul class='notes'>", *(f"<li>{esc(n)}</li>" for n in meta["notes"]), "</ul>"]
    parts.append("</section>")
    if len(journey.segments) > 1:
        options = "".join(f"<option value='{esc(s)}'>{esc(s)}</option>" for s in journey.segments)
        parts.append(
            f"<div class='selector'><label>Segment ({esc(str(meta['segmentation']))}): "
            f"<select id='segment'>{options}</select></label> "
            "<span class='meta'>switches every chart and table below "
            "but the side-by-side comparison</span></div>"
        )
    config = {"displaylogo": False, "responsive": True}
    for chart in made:
        div = pio.to_html(
            chart.figure, include_plotlyjs=False, full_html=False, div_id=f"chart-{chart.key}", config=config
        )
        flag = " data-by-segment='1'" if chart.by_segment else ""
        parts += [
            f"<section id='{chart.key}'><h2>{esc(chart.title)}</h2>",
            f"<p class='caption'>{esc(chart.caption)}</p>",
            f"<div class='chart' data-chart='{chart.key}'{flag}>{div}</div></section>",
        ]
    k = meta["k"]
    friction_cols = {
        "segment": "segment",
        "stage": "stage",
        "customers": "customer-steps",
        "advance": "advance",
        "stall": "stall",
        "back": "back",
        "drop": "drop",
        "exit": "leave",
        "next_1": "next, 1 step",
        "next_k": f"next, {k} steps",
        "advance_k": f"any later, {k} steps",
    }
    time_cols = {
        "segment": "segment",
        "stage": "stage",
        "runs": "runs",
        "median_days": "median days",
        "p75_days": "p75 days",
        "mean_days": "mean days",
        "censored": "cut by the edges",
    }
    parts += [
        "<section id='tables'><h2>Friction in numbers</h2>",
        _table(journey.friction, friction_cols, set(OUTCOMES) | {"next_1", "next_k", "advance_k"}),
        "<h2>Time in stage in numbers</h2>",
        _table(journey.time_in_stage, time_cols, {"censored"}),
        "<p class='caption'>The frames behind every chart are beside this page as CSV (mix.csv, "
        "transitions.csv, touchpoints.csv, friction.csv, time_in_stage.csv), each chart as a PNG, and "
        "summary.json holds these headlines and settings.</p></section>",
        f"<script type='text/javascript'>{_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


def _write(journey: JourneyMap, out_dir: Path) -> MapPaths:
    out_dir.mkdir(parents=True, exist_ok=True)
    made = charts(journey)
    pngs: dict[str, Path] = {}
    for chart in made:
        if chart.png is not None:
            pngs[chart.key] = out_dir / f"{chart.key}.png"
            chart.png.savefig(pngs[chart.key], dpi=110)
    csvs = {name: out_dir / f"{name}.csv" for name in journey.frames()}
    for name, frame in journey.frames().items():
        frame.to_csv(csvs[name], index=False)
    page = out_dir / "journey_map.html"
    page.write_text(_html(journey, made), encoding="utf-8")
    summary = out_dir / "summary.json"
    summary.write_text(
        json.dumps(
            {
                "headlines": journey.headlines,
                "meta": journey.meta,
                "segments": journey.segments,
                "charts": [c.key for c in made],
            },
            indent=2,
            default=str,
        )
    )
    return MapPaths(out_dir, page, pngs, csvs, summary)


# -- end to end ------------------------------------------------------------------------------------------
def _events_of(build: FeatureBuild) -> Path | None:
    """The build's input events as its manifest records them, or None where they are no longer there."""
    recorded = Path(build.manifest["input"]["events"])
    for candidate in (recorded, build.path / recorded):
        if candidate.exists():
            return candidate
    return None


def build_journey_map(
    features: Path,
    predictor: object,
    out_dir: Path,
    *,
    events: Path | None = None,
    segments: str | Path | pd.Series | dict[str, str] | None = "acquisition_channel",
    max_customers: int | None = None,
    seed: int = 0,
    k: int = 4,
    window_days: float | None = None,
    max_segments: int = 8,
    model: str = "",
) -> tuple[JourneyMap, MapPaths]:
    """Scores a features build with a model, maps the journeys and writes the page, PNGs and CSVs.

    Used by `journey map`, by every training run and by the demo.

    Args:
        features: the features build (its rows at every cutoff are scored).
        predictor: the model: a registered pyfunc, a `Scorer`, or a function (see `stage_assignments`).
        out_dir: where to write (journey_map.html, *.png, *.csv, summary.json).
        events: the events for touchpoints and built-in segments; default: the build's input, as its
            manifest records it (the map says so when they are gone).
        segments: see `compute_journey_map`; None: the whole base only.
        max_customers: map a seeded sample of this many customers (the page says so); None: all.
        seed: the sample's seed.
        k: the horizon of the within-k-steps conversion.
        window_days: the touchpoint window before a cutoff (default: one step).
        max_segments: segments beyond the largest ones are grouped as "other".
        model: how to name the model on the page.
    """
    build = FeatureBuild.open(Path(features))
    stages = stage_assignments(predictor, build, max_customers=max_customers, seed=seed)
    total = int(sum(build.manifest["rows"].get(s, 0) for s in SPLITS))
    notes = []
    if len(stages) < total:
        notes.append(
            f"a seeded sample (seed {seed}) of {stages['customer_id'].nunique():,} customers "
            f"({len(stages):,} of the build's {total:,} customer-cutoffs) is mapped, to keep it cheap"
        )
    events_path = Path(events) if events is not None else _events_of(build)
    if events_path is None:
        notes.append(
            f"the build's input events ({build.manifest['input']['events']}) are no longer there: "
            "touchpoints and event-based segments are left out"
        )
    meta = {
        "title": "Journey map",
        "model": model or type(predictor).__name__,
        "features": str(Path(features)),
        "events_path": str(events_path) if events_path else "none",
        "features_digest": build.manifest["input"].get("digest", ""),
        "notes": notes,
    }
    journey = compute_journey_map(
        stages, events_path, segments, k=k, window_days=window_days, max_segments=max_segments, meta=meta
    )
    return journey, journey.write(Path(out_dir))


def log_journey_map(journey: JourneyMap | MapPaths, artifact_path: str = "journey_map") -> str:
    """Logs a journey map's folder to the active MLflow run; returns the page's artifact path.

    A `JourneyMap` not yet written is written to a temporary folder first. The run gets the tag
    `journey_map` with the page's path, so that a reviewer finds it from the run's overview.
    """
    import mlflow

    if isinstance(journey, MapPaths):
        mlflow.log_artifacts(str(journey.folder), artifact_path)
    else:
        with tempfile.TemporaryDirectory(prefix="journey-map-") as tmp:
            mlflow.log_artifacts(str(journey.write(Path(tmp)).folder), artifact_path)
    page = f"{artifact_path}/journey_map.html"
    mlflow.set_tag("journey_map", page)
    return page


def fetch_journey_map(run_id: str, out_dir: Path, artifact_path: str = "journey_map") -> Path:
    """Downloads the journey map a training run logged; returns the page's local path.

    What the demo shows after training: the map of the run's own model, without scoring the build again.
    """
    import mlflow

    out_dir.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact_path, dst_path=str(out_dir)
    )
    return Path(local) / "journey_map.html"


def registered_journey_map(
    features: Path, model: str, out_dir: Path, **options: Any
) -> tuple[JourneyMap, MapPaths]:
    """The journey map of a registered `journey-scorer` (an alias such as champion, or a version).

    Raises:
        ValueError: no such alias or version in the registry.
    """
    from mlflow.exceptions import MlflowException

    from predictor.registry import load_registered
    from training.registry import MODEL_NAME, configure, resolve_version

    configure()
    try:
        version = resolve_version(model)
        pyfunc = load_registered(MODEL_NAME, version=version).pyfunc
    except MlflowException as exc:
        raise ValueError(f"no {MODEL_NAME} {model!r} in the registry ({exc.message})") from exc
    label = f"{MODEL_NAME} version {version}" + ("" if model.isdigit() else f" (@{model})")
    return build_journey_map(features, pyfunc, out_dir, model=label, **options)
