"""Session mode: a row per session prefix, whose target is the next item (click streams).

A shop that logs product views and few purchases (a click stream, a content site) is judged the way
session-based recommenders are (Ludewig et al. 2021, UMUAI; rn5l/session-rec): given what a visitor has
viewed so far in this visit, which item comes next. The grid of weekly cutoffs (`BuildConfig` mode
`grid`, the default) asks another question, what a customer does in the next 30 days.

Sessions: a customer's events (of any kind, as the encoder's time-gap token sees them) split wherever the
gap between two consecutive events exceeds `gap_minutes` (30 by default, the usual visit timeout of web
analytics). For each session, its events of the `labels.next_item_events` types that carry an item are
its views v_0, v_1, ...; every v_i with i >= 1 gives a row whose cutoff is v_i's own time and whose
next-item label is v_i's item. The encoder's point-in-time rule (`ts < cutoff`) then gives the model
everything before v_i, earlier sessions included; v_0 has no prefix in its session, so no row.

Splits are by time, as the grid's are: rows in the last `test_days` days of the data are test, the
`valid_days` before them validation, everything earlier training (`BuildConfig.test_start` and
`valid_start`, ISO dates, override both). A label is the event at the cutoff itself, so no label reaches
past its window and no horizon is lost at the end of the data. `max_rows_per_split` keeps a big click
stream trainable: a seeded sample of rows, chosen by a hash of (customer, cutoff), so the same rows are
kept whatever the number of buckets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from features.encoder import PreparedEvents

DAY = pd.Timedelta(days=1)
_MS_PER_MINUTE = 60_000


@dataclass(frozen=True)
class SessionConfig:
    """Settings of the session mode (`BuildConfig.mode: sessions`).

    Attributes:
        gap_minutes: a gap longer than this between two events of a customer ends a session (30).
        valid_days: days of the validation window, before the test window (7).
        test_days: days of the test window, at the end of the data (7).
        max_rows_per_split: rows kept per split at most, a seeded sample (0: every row).
        seed: seed of that sample.
    """

    gap_minutes: float = 30.0
    valid_days: int = 7
    test_days: int = 7
    max_rows_per_split: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.gap_minutes > 0:
            raise ValueError(f"sessions.gap_minutes: must be above 0, not {self.gap_minutes}")
        for name in ("valid_days", "test_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"sessions.{name}: must be 1 day or more, not {getattr(self, name)}")
        if self.max_rows_per_split < 0:
            raise ValueError(
                f"sessions.max_rows_per_split: must be 0 (every row) or more, not {self.max_rows_per_split}"
            )

    @property
    def gap_ms(self) -> int:
        return round(self.gap_minutes * _MS_PER_MINUTE)


def session_windows(
    first_ts: pd.Timestamp,
    last_ts: pd.Timestamp,
    config: SessionConfig,
    test_start: str | None = None,
    valid_start: str | None = None,
) -> dict[str, pd.Timestamp]:
    """Where each split's window starts (midnight UTC); the test window runs to the end of the data.

    Args:
        first_ts, last_ts: the first and last event.
        config: the window lengths.
        test_start, valid_start: ISO dates that override the lengths.

    Raises:
        ValueError: the windows leave no training days, naming the settings.
    """
    end = last_ts.floor("D") + DAY  # the data ends at the end of the last event's day
    test = pd.Timestamp(test_start, tz="UTC") if test_start else end - config.test_days * DAY
    valid = pd.Timestamp(valid_start, tz="UTC") if valid_start else test - config.valid_days * DAY
    train = first_ts.floor("D")
    if not train < valid <= test < end:
        raise ValueError(
            f"events from {first_ts.date()} to {last_ts.date()} leave no room for the session windows: "
            f"train from {train.date()}, valid from {valid.date()}, test from {test.date()} "
            f"(sessions.test_days {config.test_days}, sessions.valid_days {config.valid_days}, "
            "or test_start / valid_start)"
        )
    return {"train": train, "valid": valid, "test": test}


def session_starts(prep: PreparedEvents, gap_ms: int) -> np.ndarray:
    """(n_events,) bool: the event starts a session (a customer's first event, or after a longer gap)."""
    start = np.ones(prep.n_events, dtype=bool)
    start[1:] = (prep.cust[1:] != prep.cust[:-1]) | (np.diff(prep.ts_ms) > gap_ms)
    return start


def session_targets(prep: PreparedEvents, gap_ms: int, chosen: np.ndarray) -> np.ndarray:
    """Positions of the events that get a row: the chosen events with an item, except each session's first.

    Args:
        prep: events sorted by (customer, ts).
        gap_ms: the session timeout.
        chosen: (n_events,) bool, the events of the next-item types.

    Returns:
        (n_rows,) int64 event positions, in (customer, ts) order.
    """
    session = np.cumsum(session_starts(prep, gap_ms))  # (n_events,) session number
    idx = np.flatnonzero(chosen & (prep.item_token > 0))
    first_of_session = np.ones(len(idx), dtype=bool)
    first_of_session[1:] = session[idx][1:] != session[idx][:-1]
    return idx[~first_of_session]


def split_of(t_ms: np.ndarray, windows: dict[str, pd.Timestamp]) -> np.ndarray:
    """(n,) split name of each cutoff: the last window that starts at or before it ("" before them all)."""
    names = np.array(["", "train", "valid", "test"], dtype=object)
    starts = np.array([windows[s].value // 1_000_000 for s in ("train", "valid", "test")], dtype=np.int64)
    return names[np.searchsorted(starts, t_ms, side="right")]


def capped(customer_id: np.ndarray, t_ms: np.ndarray, split: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """(n,) bool: at most `cap` rows per split, those of the smallest hash of (customer, cutoff, seed).

    A hash rather than a random draw: a bucket keeps the rows the whole build would keep, so the sample
    does not depend on how customers were bucketed.
    """
    keep = np.ones(len(split), dtype=bool)
    if cap <= 0:
        return keep
    frame = pd.DataFrame({"customer": customer_id, "t": t_ms})
    key = f"{seed:016d}"[-16:]
    h = pd.util.hash_pandas_object(frame, index=False, hash_key=key).to_numpy()
    for name in np.unique(split):
        rows = np.flatnonzero(split == name)
        if len(rows) > cap:
            keep[rows[np.argsort(h[rows], kind="stable")[cap:]]] = False
    return keep


def bucket_cap(max_rows_per_split: int, n_buckets: int) -> int:
    """The rows per split one of `n_buckets` buckets keeps (buckets are about equal: hashed customers)."""
    return 0 if max_rows_per_split <= 0 else math.ceil(max_rows_per_split / max(n_buckets, 1))


def session_rows(
    prep: PreparedEvents,
    windows: dict[str, pd.Timestamp],
    config: SessionConfig,
    chosen: np.ndarray,
    n_buckets: int = 1,
) -> pd.DataFrame:
    """The rows of one bucket: customer code and id, cutoff (ms), split and next-item token.

    Args:
        prep: the bucket's events.
        windows: `session_windows`.
        config: the session settings.
        chosen: (n_events,) bool, the events of `labels.next_item_events`.
        n_buckets: buckets of the build (the row cap is shared between them).
    """
    at = session_targets(prep, config.gap_ms, chosen)
    t_ms = prep.ts_ms[at]
    split = split_of(t_ms, windows)
    ids = prep.customers[prep.cust[at]]
    keep = (split != "") & capped(
        ids, t_ms, split, bucket_cap(config.max_rows_per_split, n_buckets), config.seed
    )
    return pd.DataFrame(
        {
            "cust": prep.cust[at][keep],
            "customer_id": ids[keep],
            "t_ms": t_ms[keep],
            "split": split[keep],
            "next_item": prep.item_token[at][keep].astype(np.int32),
        }
    )
