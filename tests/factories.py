"""Hand-made events for tests: small frames whose answers can be worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import DEFAULT_CHANNEL, EVENT_COLUMNS, conform_table


def events(*rows: tuple) -> pd.DataFrame:
    """Rows of (customer_id, ts, event_type[, item_id[, value[, message_type]]]) -> contract frame."""
    records = []
    for row in rows:
        customer, ts, event_type, *rest = row
        item = rest[0] if len(rest) > 0 else None
        value = rest[1] if len(rest) > 1 else None
        message = rest[2] if len(rest) > 2 else None
        records.append(
            {
                "customer_id": customer,
                "ts": pd.Timestamp(ts, tz="UTC"),
                "event_type": event_type,
                "channel": DEFAULT_CHANNEL[event_type],
                "item_id": item,
                "category": f"cat_{item[-1]}" if item else None,
                "value": np.nan if value is None else float(value),
                "quantity": np.nan,
                "message_type": message,
                "campaign_id": None,
                "session_id": None,
                "event_id": None,
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(EVENT_COLUMNS))
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    return frame


def random_events(n_customers: int, n_events: int, seed: int = 0, days: int = 120) -> pd.DataFrame:
    """A random but contract-valid shop: enough to exercise every code path of the feature job."""
    rng = np.random.default_rng(seed)
    types = np.array(
        [
            "page_view",
            "product_view",
            "search",
            "add_to_cart",
            "checkout_start",
            "purchase",
            "email_sent",
            "email_open",
            "newsletter_signup",
            "email_unsubscribe",
            "refund",
        ]
    )
    p = np.array([0.25, 0.3, 0.08, 0.08, 0.03, 0.05, 0.1, 0.05, 0.02, 0.01, 0.03])
    et = rng.choice(types, size=n_events, p=p / p.sum())
    product = np.isin(et, ["product_view", "add_to_cart", "purchase", "refund"])
    item_no = rng.zipf(1.4, n_events) % 400
    item = np.where(product, np.char.add("I", item_no.astype(str).astype(object)), None)
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, days * 86_400, n_events), unit="s"
    )
    frame = pd.DataFrame(
        {
            "customer_id": np.char.add("C", rng.integers(0, n_customers, n_events).astype(str)).astype(
                object
            ),
            "ts": ts.astype("datetime64[us, UTC]"),
            "event_type": et,
            "channel": [DEFAULT_CHANNEL[e] for e in et],
            "item_id": item,
            "category": np.where(product, np.char.add("cat", (item_no % 7).astype(str)).astype(object), None),
            "value": np.where(
                np.isin(et, ["purchase", "refund"]), np.round(rng.gamma(2, 20, n_events), 2), np.nan
            ),
            "quantity": np.nan,
            "message_type": np.where(et == "email_sent", "cross_sell", None),
            "campaign_id": None,
            "session_id": None,
            "event_id": None,
        }
    )
    return frame


def write_events(frame: pd.DataFrame, path: Path) -> Path:
    """Writes a frame as contract Parquet (microsecond UTC timestamps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(conform_table(pa.Table.from_pandas(frame, preserve_index=False)), path)
    return path
