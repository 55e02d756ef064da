"""UCI Online Retail: invoice lines of a UK shop, purchases and refunds in UK local time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import schema
from features.parsing import NUMBER, to_mask
from features.sources.csv_lines import _raw_events, read_csv_rows
from features.sources.raw import _NULL_STR, RawEvents, _drop_float_suffix, _join, _strip

ONLINE_RETAIL_TZ = "Europe/London"
# Products: 5 digits and optional letters (85123A), or the DCGS codes (e.g. DCGSSGIRL "GIRLS PARTY BAG").
# Everything else is postage, fees, discounts, manual entries, samples, vouchers: POST, DOT, M, C2, D, S,
# B, BANK CHARGES, AMAZONFEE, CRUK, PADS, gift_0001_20, ...
_PRODUCT_CODE = r"^(?:\d{5}[A-Za-z]*|DCGS\w+)$"


def read_online_retail(path: Path | str) -> RawEvents:
    """Reads UCI Online Retail invoice lines (InvoiceNo, StockCode, Quantity, InvoiceDate, UnitPrice, ...).

    Args:
        path: the CSV file (plain or .gz).

    Returns:
        Candidate purchase and refund events (UK local time, converted by the validator); rows left out
        on purpose are counted in `skipped` (see the module docstring for the rules).

    Raises:
        SourceFormatError: a column is missing.
    """
    path = Path(path)
    needed = ("InvoiceNo", "StockCode", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID")
    rows = read_csv_rows(path, required=needed, source="online_retail")
    t = rows.table
    invoice = _strip(t.column("InvoiceNo"))
    code = _strip(t.column("StockCode"))
    customer = _drop_float_suffix(_strip(t.column("CustomerID")))
    quantity_text = _strip(t.column("Quantity"))
    price_text = _strip(t.column("UnitPrice"))

    q_ok = to_mask(pc.match_substring_regex(quantity_text, NUMBER))
    p_ok = to_mask(pc.match_substring_regex(price_text, NUMBER))
    q = _to_float(quantity_text, q_ok)
    p = _to_float(price_text, p_ok)
    refund = to_mask(pc.starts_with(invoice, "C"))

    # Position of each line within its invoice, over all lines (skipped ones too) so that ids are stable.
    inv = pd.Series(invoice.to_numpy(zero_copy_only=False))
    position = (inv.groupby(inv, dropna=False, sort=False).cumcount() + 1).to_numpy()

    non_product = ~to_mask(pc.match_substring_regex(code, _PRODUCT_CODE))
    guest = ~non_product & ~to_mask(pc.is_valid(customer))
    adjustment = ~non_product & ~guest & ~refund & q_ok & (q < 0)
    skipped: dict[str, int] = {}
    codes = pd.Series(code.to_numpy(zero_copy_only=False))[non_product]
    for stock_code, count in codes.fillna("").value_counts().sort_index().items():
        skipped[f"non_product:{stock_code or '(empty)'}"] = int(count)
    skipped["guest_line"] = int(guest.sum())
    skipped["stock_adjustment"] = int(adjustment.sum())
    keep = ~(non_product | guest | adjustment)

    # Refunds carry absolute amounts; the event type says which way the money went.
    value = np.where(refund, np.abs(q * p), q * p)
    quantity = np.where(refund, np.abs(q), q)
    columns = {
        "customer_id": customer,
        "ts": _strip(t.column("InvoiceDate")),
        "event_type": pa.array(
            np.where(refund, schema.EventType.REFUND.value, schema.EventType.PURCHASE.value), pa.string()
        ),
        "item_id": pc.utf8_upper(code),
        # Unreadable numbers keep their text, so that the validator rejects them by name.
        "value": _number_or_text(value, q_ok & p_ok, pc.if_else(pa.array(p_ok), _NULL_STR, price_text)),
        "quantity": _number_or_text(quantity, q_ok, quantity_text),
        "session_id": invoice,
        "event_id": _join(invoice, pa.array(position.astype(str), pa.string())),
    }
    return _raw_events("online_retail", rows, columns, keep=keep, skipped=skipped, tz=ONLINE_RETAIL_TZ)


def _to_float(text: pa.ChunkedArray | pa.Array, ok: np.ndarray) -> np.ndarray:
    values = pc.cast(pc.if_else(pa.array(ok), text, _NULL_STR), pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


def _number_or_text(
    values: np.ndarray, ok: np.ndarray, text: pa.ChunkedArray | pa.Array
) -> pa.ChunkedArray | pa.Array:
    """Numbers as their shortest exact text where `ok`, else `text` (left for the validator to reject)."""
    numbers = pc.cast(pa.array(np.where(ok, values, np.nan), pa.float64(), mask=~ok), pa.string())
    return pc.if_else(pa.array(ok), numbers, text)
