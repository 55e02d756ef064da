"""Segments of a journey map: built from the events (how customers came, what they spent) or the user's own
mapping of customer_id to segment, capped so that the page stays readable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import CHANNELS, EVENT_TYPES, SHOP_SENT_EVENTS, EventType
from reports.journey_map.events import Events

BUILTIN_SEGMENTS: tuple[str, ...] = ("acquisition_channel", "value_tier")
# Events that say little about how a customer came: account events and messages the shop sent.
_NOT_ACQUISITION = frozenset({EventType.SIGNUP, EventType.NEWSLETTER_SIGNUP}) | SHOP_SENT_EVENTS


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


def cap_segments(labels: np.ndarray, max_segments: int) -> np.ndarray:
    """Keeps the largest segments and puts the rest in "other", so that the page stays readable."""
    counts = pd.Series(labels).value_counts()
    if len(counts) <= max_segments:
        return labels
    keep = set(counts.index[: max_segments - 1])
    return np.where(pd.Series(labels).isin(keep).to_numpy(), labels, "other")


def segment_labels(
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
