"""REES46 "eCommerce behavior data": monthly CSVs of views, carts, removals and purchases per session."""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from features import schema
from features.sources.csv_lines import _raw_events, read_csv_rows
from features.sources.raw import RawEvents, _join, _map_values, _strip

REES46_EVENTS: dict[str, str] = {
    "view": schema.EventType.PRODUCT_VIEW,
    "cart": schema.EventType.ADD_TO_CART,
    "remove_from_cart": schema.EventType.REMOVE_FROM_CART,
    "purchase": schema.EventType.PURCHASE,
}


def read_rees46(path: Path | str) -> RawEvents:
    """Reads a REES46 "eCommerce behavior data" monthly CSV.

    Args:
        path: the CSV file (plain or .gz) with event_time, event_type, product_id, category_id,
            category_code, brand, price, user_id, user_session.

    Returns:
        Candidate events: product_view, add_to_cart, remove_from_cart and purchase, value = price.

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    needed = ("event_time", "event_type", "product_id", "category_id", "category_code", "price", "user_id")
    rows = read_csv_rows(path, required=(*needed, "user_session"), source="rees46")
    t = rows.table
    ts, event, product, session = (
        _strip(t.column(c)) for c in ("event_time", "event_type", "product_id", "user_session")
    )
    columns = {
        "customer_id": _strip(t.column("user_id")),
        "ts": ts,
        "event_type": _map_values(pc.utf8_lower(event), REES46_EVENTS),
        "item_id": product,
        "category": pc.coalesce(_strip(t.column("category_code")), _strip(t.column("category_id"))),
        "value": _strip(t.column("price")),
        "session_id": session,
        "event_id": _join(session, ts, event, product),
    }
    return _raw_events("rees46", rows, columns)
