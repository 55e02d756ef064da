"""Per-customer snapshots at cutoffs: a build's settings, its split of cutoffs in time, and the work on one
bucket of customers that both engines run (pandas in this process, Spark's `applyInPandas`).

For each customer at each cutoff: the last `max_len` events before the cutoff, encoded by
`features.encoder.encode_prepared` (the one encoder), aggregates, and hindsight labels.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features.arrays import prefix_sum, to_epoch_ms
from features.config import from_settings, load_settings
from features.encoder import (
    AGGREGATE_NAMES,
    TOKEN_FIELDS,
    EncoderConfig,
    PreparedEvents,
    encode_prepared,
    prepare,
)
from features.history import list_columns
from features.labels import LabelConfig, hindsight_labels
from features.schema import EVENT_TYPES, SHOP_SENT_EVENTS
from features.sessions import SessionConfig, session_rows, session_windows
from features.vocab import Vocabulary

SPLITS = ("train", "valid", "test")
# How rows are made (BuildConfig `mode`): every customer at weekly cutoffs, or a row per session prefix.
MODES = ("grid", "sessions")
VOCAB_UNTIL = ("valid_start", "last_cutoff")
# Where a customer stands at a cutoff (BuildConfig: `new_within_days`, `active_within_days`).
SEGMENTS = ("active", "lapsed", "new")
EVENT_READ_COLUMNS = (
    "customer_id",
    "ts",
    "event_type",
    "channel",
    "item_id",
    "category",
    "value",
    "message_type",
)
DICTIONARY_COLUMNS = ("customer_id", "event_type", "channel", "item_id", "category", "message_type")
DAY = pd.Timedelta(days=1)
# Event type codes (`PreparedEvents.event_type`) of the messages the shop sent: not the customer's activity.
_SHOP_SENT_CODES = np.array(sorted(EVENT_TYPES.index(e) for e in SHOP_SENT_EVENTS), dtype=np.int16)


@dataclass(frozen=True)
class BuildConfig:
    """Settings of one features build; load with `from_yaml` and CLI overrides, logged whole.

    Attributes:
        mode: `grid` (the default): a row per customer at cutoffs every `cutoff_every_days`; `sessions`: a
            row per session prefix, the target the next item (click streams; `features.sessions`, whose
            settings are `sessions`, a `SessionConfig`). The grid settings below (cutoffs, warm-up, the
            activity filter) do not apply to sessions; `test_start` and `valid_start` do.
        cutoff_every_days: days between cutoffs.
        warmup_days: the first cutoff comes this long after the first event (unless `first_cutoff`).
        first_cutoff: date of the first cutoff (ISO); cutoffs are at midnight UTC. When unset and a
            decision log is given, cutoffs fall on the log's main decision weekday, from its first
            decision day on, so that each logged decision is labelled at the cutoff of its day.
        test_start: first test cutoff (ISO date); default: the last `n_test_cutoffs` labelled cutoffs.
        valid_start: first validation cutoff; default: the last `n_valid_cutoffs` cutoffs whose label
            window ends before the test starts.
        active_within_days: a customer is `active` at a cutoff with an event of their own (not a message
            the shop sent them) in this many days before it; the window of the activity filter
            (`active_only_splits`) and of the segments.
        active_only_splits: splits whose rows are limited to active customers (the activity filter keeps
            training on the customers a send can reach, and the build small). Every other split gets a
            row for every customer with at least one event before the cutoff, so that its figures
            include the lapsed customers that win-back exists for. Whatever the split, a decision
            logged for a customer at a cutoff gives a row. Default: training only; list every split
            for the old population (active customers everywhere).
        new_within_days: a customer whose first event is this recent (or not yet there: a row only for a
            logged decision) is in the segment `new` at the cutoff. Every row has a `segment` (SEGMENTS):
            `new`, else `active` (an event in `active_within_days`), else `lapsed` (history, but no
            event in `active_within_days`).
        item_min_count: items seen fewer times in the training window map to out-of-vocabulary.
        vocab_until: where the vocabulary window ends: `valid_start` (the default: only events before the
            first validation cutoff, so that selection and evaluation never see an item from their own
            windows) or `last_cutoff` (events before the last labelled cutoff: the refit before
            registration, `training.refit`, whose model is fine-tuned on every labelled row and may then
            recommend every item seen before that cutoff).
        bucket_events: target events per bucket (sets the number of buckets, and so the memory).
        n_buckets: fixed number of buckets instead.
        workers: processes of the pandas engine (0: one per core).
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    mode: str = "grid"
    sessions: SessionConfig = field(default_factory=SessionConfig)
    cutoff_every_days: int = 7
    warmup_days: int = 28
    first_cutoff: str | None = None
    test_start: str | None = None
    valid_start: str | None = None
    n_test_cutoffs: int = 2
    n_valid_cutoffs: int = 2
    active_within_days: int = 60
    active_only_splits: tuple[str, ...] = ("train",)
    new_within_days: int = 28
    item_min_count: int = 1
    max_items: int = 1_000_000
    vocab_until: str = "valid_start"
    bucket_events: int = 1_000_000
    n_buckets: int | None = None
    workers: int = 0
    batch_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}")
        if self.vocab_until not in VOCAB_UNTIL:
            raise ValueError(f"vocab_until: {self.vocab_until!r} is not one of {', '.join(VOCAB_UNTIL)}")
        splits = self.active_only_splits
        unknown = [splits] if isinstance(splits, str) else [s for s in splits if s not in SPLITS]
        if unknown:
            raise ValueError(
                f"active_only_splits: {unknown[0]!r} is not a list of splits ({', '.join(SPLITS)})"
            )
        for name in ("active_within_days", "new_within_days"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be 0 or more days, not {getattr(self, name)}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BuildConfig:
        """Builds a config from nested dicts, naming any unknown key."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown build setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        enc = from_settings(EncoderConfig, data.pop("encoder", {}) or {}, "encoder")
        lab = data.pop("labels", {}) or {}
        sessions = from_settings(SessionConfig, data.pop("sessions", {}) or {}, "sessions")
        if "purchase_horizons" in lab:
            lab["purchase_horizons"] = tuple(lab["purchase_horizons"])
        if isinstance(data.get("active_only_splits"), list):
            data["active_only_splits"] = tuple(data["active_only_splits"])
        return cls(encoder=enc, labels=from_settings(LabelConfig, lab, "labels"), sessions=sessions, **data)

    @classmethod
    def from_yaml(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> BuildConfig:
        """Reads YAML (optional) and applies dotted overrides such as {"encoder.max_len": 30}."""
        return cls.from_dict(load_settings(path, overrides))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SplitPlan:
    """Cutoff dates per split (midnight UTC)."""

    cutoffs: dict[str, list[pd.Timestamp]]

    @property
    def valid_start(self) -> pd.Timestamp:
        """Start of the validation window: vocabularies see only events before it."""
        later = [c for s in ("valid", "test") for c in self.cutoffs[s]]
        return min(later) if later else max(self.cutoffs["train"]) + DAY

    def vocab_end(self, until: str) -> pd.Timestamp | None:
        """Where the vocabulary window ends (`BuildConfig.vocab_until`): the validation start, or the last
        cutoff of any split (None: no cutoff at all, every event counts)."""
        if until == "valid_start":
            return self.valid_start
        every = [c for cs in self.cutoffs.values() for c in cs]
        return max(every) if every else None

    def frame(self) -> pd.DataFrame:
        rows = [(c, s) for s in SPLITS for c in self.cutoffs[s]]
        return pd.DataFrame(rows, columns=["cutoff", "split"])

    def to_json(self) -> dict[str, list[str]]:
        return {s: [c.date().isoformat() for c in cs] for s, cs in self.cutoffs.items()}

    @classmethod
    def from_json(cls, data: dict[str, list[str]]) -> SplitPlan:
        return cls({s: [pd.Timestamp(c, tz="UTC") for c in cs] for s, cs in data.items()})


def plan_splits(first_ts: pd.Timestamp, last_ts: pd.Timestamp, config: BuildConfig) -> SplitPlan:
    """Places cutoffs every `cutoff_every_days` and splits them by time.

    Only cutoffs whose whole label window lies inside the data are kept. Test cutoffs are the last ones;
    validation cutoffs end their label window before the first test cutoff, so a test label never
    overlaps an input or a label the model was selected on. Training cutoffs come before validation.

    In session mode the plan holds where each split's window starts (`features.sessions.session_windows`)
    and the rows' cutoffs are the times of their target views.
    """
    if config.mode == "sessions":
        windows = session_windows(first_ts, last_ts, config.sessions, config.test_start, config.valid_start)
        return SplitPlan({s: [windows[s]] for s in SPLITS})
    horizon = pd.Timedelta(days=config.labels.horizon_days)
    every = pd.Timedelta(days=config.cutoff_every_days)
    start = (
        pd.Timestamp(config.first_cutoff, tz="UTC")
        if config.first_cutoff
        else (first_ts + pd.Timedelta(days=config.warmup_days)).ceil("D")
    )
    # Labels need the whole horizon: the data ends at the end of the last event's day.
    end = last_ts.floor("D") + DAY
    cutoffs = list(pd.date_range(start, end - horizon, freq=every))
    if not cutoffs:
        raise ValueError(
            f"no cutoff fits: events span {first_ts.date()} .. {last_ts.date()}, but the first cutoff is "
            f"{start.date()} and labels need {horizon.days} days after it"
        )
    if config.test_start:
        test_start = pd.Timestamp(config.test_start, tz="UTC")
        test = [c for c in cutoffs if c >= test_start]
    else:
        test = cutoffs[-config.n_test_cutoffs :]
        test_start = test[0]
    before = [c for c in cutoffs if c + horizon <= test_start]
    if config.valid_start:
        valid_start = pd.Timestamp(config.valid_start, tz="UTC")
        valid = [c for c in before if c >= valid_start]
    else:
        valid = before[-config.n_valid_cutoffs :]
        valid_start = valid[0] if valid else test_start
    train = [c for c in before if c < valid_start]
    if not train or not test:
        raise ValueError(
            f"events from {first_ts.date()} to {last_ts.date()} leave no room for train and test cutoffs "
            f"(horizon {horizon.days} days, every {every.days} days): "
            f"train {len(train)}, valid {len(valid)}, test {len(test)}"
        )
    return SplitPlan({"train": train, "valid": valid, "test": test})


@dataclass
class BucketContext:
    """What each bucket needs besides its events: shipped to workers and Spark executors."""

    vocab_json: str
    plan: dict[str, list[str]]
    config: dict[str, Any]
    n_buckets: int = 1  # the session mode's row cap is shared between the buckets


def process_bucket(events: pd.DataFrame, decisions: pd.DataFrame | None, ctx: BucketContext) -> pa.Table:
    """Encodes and labels every (customer, cutoff) row of one bucket of customers.

    The per-bucket function of both engines; who gets a row, and the row's `segment`: `BuildConfig`.
    """
    config = BuildConfig.from_dict(ctx.config)
    vocab = Vocabulary.from_json(ctx.vocab_json)
    plan = SplitPlan.from_json(ctx.plan).frame()
    if decisions is not None and decisions.empty:
        decisions = None
    prep = prepare(events, vocab)
    if config.mode == "sessions":
        cutoffs = _session_candidate_rows(prep, ctx, config)
    else:
        cutoffs = _candidate_rows(prep, plan, config, decisions)
    batch = encode_prepared(prep, cutoffs, config.encoder)
    labels = hindsight_labels(prep, cutoffs, config.labels, decisions)
    if config.mode == "sessions":  # the target is the one view at the cutoff, not a window's items
        one = pa.array(np.arange(len(cutoffs) + 1, dtype=np.int32))
        labels["next_items"] = pa.ListArray.from_arrays(one, pa.array(cutoffs["next_item"].to_numpy()))

    columns: dict[str, pa.Array] = {
        "customer_id": pa.array(cutoffs["customer_id"].to_numpy(dtype=object), pa.string()),
        "cutoff": pa.array(to_epoch_ms(cutoffs["cutoff"]) * 1000, pa.timestamp("us", tz="UTC")),
        "split": pa.array(cutoffs["split"].to_numpy(dtype=object), pa.string()),
        "segment": pa.array(cutoffs["segment"].to_numpy(dtype=object), pa.string()),
        "seq_len": pa.array(batch.length, pa.int32()),
    }
    # Stored ragged (only the real events, oldest first): `padded_tokens` restores the model's layout.
    offsets = pa.array(batch.offsets.astype(np.int32))
    for name in TOKEN_FIELDS:
        columns[f"tok_{name}"] = pa.ListArray.from_arrays(offsets, pa.array(batch.values[name]))
    # The whole-history item profile, ragged too (`features.history.padded_from_table` pads it).
    columns.update(list_columns(batch.history, batch.history_rows))
    for name in AGGREGATE_NAMES:
        columns[name] = pa.array(batch.aggregates[name], pa.float64())
    columns.update(labels)
    return pa.table(columns)


def population_rule(config: dict[str, Any], split: str) -> str:
    """Who has a row in `split` of a build with this (manifest) config, in words for a population line.

    Builds from before `active_only_splits` filtered every split by activity.
    """
    if config.get("mode") == "sessions":
        gap = config.get("sessions", {}).get("gap_minutes", 30)
        return (
            f"session prefixes: a row per view after the first of a session (sessions split at gaps over "
            f"{gap:g} minutes), the target the next view"
        )
    if split in config.get("active_only_splits", SPLITS):
        days = config.get("active_within_days", 60)
        return (
            f"active (an event of their own) in the {days} days before the cutoff "
            "(or with a logged decision at it)"
        )
    return "with history before the cutoff"


def _candidate_rows(
    prep: PreparedEvents, plan: pd.DataFrame, config: BuildConfig, decisions: pd.DataFrame | None
) -> pd.DataFrame:
    """(customer, cutoff, split, segment) rows, for every customer of the bucket at every cutoff of the
    plan that `BuildConfig` gives a row (n_customers x n_cutoffs candidates, vectorised)."""
    n_c, n_t = len(prep.customers), len(plan)
    cut_ms = to_epoch_ms(plan["cutoff"])
    cust = np.repeat(np.arange(n_c, dtype=np.int64), n_t)
    t_ms = np.tile(cut_ms, n_c)
    day = 86_400_000
    first, history, active = _activity(prep, cust, t_ms, config)
    everyone = ~np.isin(plan["split"].to_numpy(), list(config.active_only_splits))
    keep = active | (history & np.tile(everyone, n_c))
    if decisions is not None and n_t:
        # The cutoff a decision belongs to: the last one at or before it, within the decision window.
        d_cust = prep.customer_codes(decisions["customer_id"])
        d_ms = to_epoch_ms(decisions["ts"])
        k = np.searchsorted(cut_ms, d_ms, side="right") - 1
        ok = (d_cust >= 0) & (k >= 0)
        ok &= d_ms < cut_ms[np.maximum(k, 0)] + config.labels.decision_window_days * day
        keep[d_cust[ok] * n_t + k[ok]] = True
    return pd.DataFrame(
        {
            "customer_id": prep.customers[cust[keep]],
            "cutoff": pd.to_datetime(t_ms[keep], unit="ms", utc=True),
            "split": plan["split"].to_numpy()[np.tile(np.arange(n_t), n_c)[keep]],
            "segment": _segment(prep, first[keep], t_ms[keep], active[keep], config),
        }
    )


def _activity(
    prep: PreparedEvents, cust: np.ndarray, t_ms: np.ndarray, config: BuildConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per (customer, cutoff): the position of the customer's first event, whether they have history
    before the cutoff, and whether they are active (`active_within_days`)."""
    first = prep.starts(cust)  # every customer of `prep` has an event: a valid position
    before = prep.search(cust, t_ms)  # events before the cutoff end here
    # Active: an event of the customer's own (not a message the shop sent: an e-mailed customer who never
    # answers is lapsed) within `active_within_days`, as the encoder's recency counts them.
    own = prefix_sum((~np.isin(prep.event_type, _SHOP_SENT_CODES)).astype(np.int64))
    window_start = np.maximum(prep.search(cust, t_ms - config.active_within_days * 86_400_000), first)
    return first, before > first, own[before] > own[window_start]


def _segment(
    prep: PreparedEvents, first: np.ndarray, t_ms: np.ndarray, active: np.ndarray, config: BuildConfig
) -> np.ndarray:
    """(n,) object: `new` (the first event is recent, or still to come: a row only for a logged
    decision), else `active`, else `lapsed`."""
    new = prep.ts_ms[first] >= t_ms - config.new_within_days * 86_400_000
    return np.where(new, "new", np.where(active, "active", "lapsed")).astype(object)


def _session_candidate_rows(prep: PreparedEvents, ctx: BucketContext, config: BuildConfig) -> pd.DataFrame:
    """(customer, cutoff, split, segment, next_item) rows of the session mode (`features.sessions`): a
    row per view after the first of a session, at the view's own time; segments as the grid's."""
    windows = {s: pd.Timestamp(dates[0], tz="UTC") for s, dates in ctx.plan.items()}
    chosen = np.isin(prep.event_type, [EVENT_TYPES.index(e) for e in config.labels.next_item_events])
    rows = session_rows(prep, windows, config.sessions, chosen, ctx.n_buckets)
    cust, t_ms = rows["cust"].to_numpy(), rows["t_ms"].to_numpy()
    first, _, active = _activity(prep, cust, t_ms, config)
    return pd.DataFrame(
        {
            "customer_id": rows["customer_id"].to_numpy(),
            "cutoff": pd.to_datetime(t_ms, unit="ms", utc=True),
            "split": rows["split"].to_numpy(),
            "segment": _segment(prep, first, t_ms, active, config),
            "next_item": rows["next_item"].to_numpy(),
        }
    )
