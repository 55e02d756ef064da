"""RetailRocket's `events.csv`: views, add-to-carts and transactions of visitors, epoch milliseconds."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from features import schema
from features.sources.csv_lines import _raw_events, read_csv_rows
from features.sources.raw import RawEvents, _drop_float_suffix, _join, _map_values, _strip

RETAILROCKET_EVENTS: dict[str, str] = {
    "view": schema.EventType.PRODUCT_VIEW,
    "addtocart": schema.EventType.ADD_TO_CART,
    "transaction": schema.EventType.PURCHASE,
}


def read_retailrocket(path: Path | str) -> RawEvents:
    """Reads RetailRocket's `events.csv` (timestamp, visitorid, event, itemid, transactionid).

    Args:
        path: the CSV file (plain or .gz).

    Returns:
        Candidate events: product_view, add_to_cart and purchase; ts in epoch milliseconds.

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    rows = read_csv_rows(
        path, required=("timestamp", "visitorid", "event", "itemid", "transactionid"), source="retailrocket"
    )
    t = rows.table
    timestamp, visitor, event, item = (
        _strip(t.column(c)) for c in ("timestamp", "visitorid", "event", "itemid")
    )
    columns = {
        "customer_id": visitor,
        "ts": timestamp,
        "event_type": _map_values(pc.utf8_lower(event), RETAILROCKET_EVENTS),
        "item_id": item,
        "session_id": _drop_float_suffix(_strip(t.column("transactionid"))),
        "event_id": _join(visitor, timestamp, event, item),
    }
    return _raw_events("retailrocket", rows, columns, ts_unit="ms")
