"""A customer's whole-history item profile at a cutoff: the items they touched, with counts and recencies.

The token sequence keeps the last `max_len` events, a few invoices on invoice-line data; the strongest
known next-basket signal is a customer's own purchase frequency over the whole history (P-TopFreq,
TIFU-KNN: NOTES.md). So besides the sequence, each (customer, cutoff) row gets up to `history_items`
distinct items the customer viewed, carted, started a checkout with or bought before the cutoff, the
most-bought first (purchase days, then purchases), then the most recently touched, each with integer
fields (they travel like tokens: ragged in the build, padded for the model):

    item                 the item's vocabulary token (>= FIRST; out-of-vocabulary items are left out)
    purchases            purchase events of it (an invoice line is one)
    purchase_days        UTC days with a purchase of it (orders, roughly: TIFU-KNN's baskets)
    carts                add-to-cart and checkout-start events of it
    views                product views of it
    days_since           whole days since its last touch, capped at NEVER_DAYS
    days_since_purchase  whole days since its last purchase, NEVER_DAYS if never bought (or longer ago)
    days_since_first     whole days since its first touch, capped (with the counts: a purchase cycle)
    purchases_30d        purchase events of it in the 30 days before the cutoff
    purchases_90d        the same in 90 days

Point-in-time: only events strictly before the cutoff count, as in the rest of the encoder. Everything is
vectorised over the rows: events of interest are grouped by (customer, item), each row is paired with its
customer's groups, and a binary search per pair finds the events before the cutoff; counts are prefix-sum
differences.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from features.arrays import last_index, prefix_sum
from features.prepared import PreparedEvents
from features.schema import EVENT_TYPES, EventType
from features.vocab import FIRST

HISTORY_FIELDS: tuple[str, ...] = (
    "item",
    "purchases",
    "purchase_days",
    "carts",
    "views",
    "days_since",
    "days_since_purchase",
    "days_since_first",
    "purchases_30d",
    "purchases_90d",
)
# Windows of the recent purchase counts, in days (a count over the whole history forgets when; the
# own-history baseline's strength on invoice data is a count over recent events).
RECENT_WINDOWS = (30, 90)
# Whole days reported for "never" and the cap of every recency (a year, as the encoder's NEVER_DAYS).
NEVER_DAYS = 365
_MS_PER_DAY = 86_400_000
_PURCHASE = EVENT_TYPES.index(EventType.PURCHASE)
_CARTS = (EVENT_TYPES.index(EventType.ADD_TO_CART), EVENT_TYPES.index(EventType.CHECKOUT_START))
_VIEW = EVENT_TYPES.index(EventType.PRODUCT_VIEW)


def item_profile(
    prep: PreparedEvents, cust: np.ndarray, t_ms: np.ndarray, max_items: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each row's profile, ragged: field -> (sum(length),) int32 values row after row, and (n,) lengths.

    Args:
        prep: the prepared events (`features.encoder.prepare`).
        cust: (n,) customer index into `prep.customers`, -1 for a customer without events.
        t_ms: (n,) cutoffs in epoch milliseconds (events at or after them are not seen).
        max_items: items kept per row at most (0: none).
    """
    n = len(cust)
    empty = {name: np.zeros(0, dtype=np.int32) for name in HISTORY_FIELDS}
    if max_items <= 0 or n == 0 or prep.n_events == 0:
        return empty, np.zeros(n, dtype=np.int32)
    et = prep.event_type
    kind = np.isin(et, (_PURCHASE, *_CARTS, _VIEW))
    idx = np.flatnonzero(kind & (prep.item_token >= FIRST))
    if len(idx) == 0:
        return empty, np.zeros(n, dtype=np.int32)
    # Group the events of interest by (customer, item); within a group they stay in time order, as
    # `prep` holds them (sorted by customer, then time).
    order = np.lexsort((idx, prep.item_token[idx], prep.cust[idx]))
    e = idx[order]
    g_cust, g_item, ts = prep.cust[e], prep.item_token[e].astype(np.int64), prep.ts_ms[e]
    new = np.ones(len(e), dtype=bool)
    new[1:] = (g_cust[1:] != g_cust[:-1]) | (g_item[1:] != g_item[:-1])
    group = np.cumsum(new) - 1
    g_start = np.flatnonzero(new)
    g_of_cust = g_cust[g_start]  # (n_groups,) sorted: each customer's groups are contiguous

    purchase = et[e] == _PURCHASE
    day = ts // _MS_PER_DAY
    # A purchase on a new day of its group: the previous purchase in the group was on another day.
    previous = np.concatenate([[-1], last_index(purchase)[:-1]])
    prev_ok = (previous >= 0) & (previous >= g_start[group])
    new_day = purchase & ~(prev_ok & (day[np.maximum(previous, 0)] == day))
    sums = {
        "purchases": prefix_sum(purchase.astype(np.int64)),
        "purchase_days": prefix_sum(new_day.astype(np.int64)),
        "carts": prefix_sum(np.isin(et[e], _CARTS).astype(np.int64)),
        "views": prefix_sum((et[e] == _VIEW).astype(np.int64)),
    }

    # Pair every row with each group of its customer.
    known = cust >= 0
    lo = np.where(known, np.searchsorted(g_of_cust, cust, side="left"), 0)
    hi = np.where(known, np.searchsorted(g_of_cust, cust, side="right"), 0)
    count = hi - lo
    pair_row = np.repeat(np.arange(n), count)
    pair_g = np.repeat(lo - np.cumsum(count) + count, count) + np.arange(int(count.sum()))
    # First event of the group at or after the cutoff, by one search over (group, time) keys.
    span = prep.span
    if len(g_start) * span >= 2**62:
        raise ValueError(f"{len(g_start)} (customer, item) pairs do not fit one key; use more buckets")
    key = group * span + (ts - prep.base)
    t_pair = t_ms[pair_row]
    pos = np.searchsorted(key, pair_g * span + np.clip(t_pair - prep.base, -1, span - 1), side="left")
    start = g_start[pair_g]
    seen = pos > start
    pair_row, pair_g, pos, start, t_pair = (a[seen] for a in (pair_row, pair_g, pos, start, t_pair))

    fields: dict[str, np.ndarray] = {"item": g_item[start]}
    for name, csum in sums.items():
        fields[name] = csum[pos] - csum[start]
    last_ts = ts[pos - 1]

    def days(since: np.ndarray) -> np.ndarray:
        return np.minimum((t_pair - since) // _MS_PER_DAY, NEVER_DAYS)

    fields["days_since"] = days(last_ts)
    last_buy = last_index(purchase)[pos - 1]
    bought = last_buy >= start
    fields["days_since_purchase"] = np.where(bought, days(ts[np.maximum(last_buy, 0)]), NEVER_DAYS)
    fields["days_since_first"] = days(ts[start])
    for window in RECENT_WINDOWS:
        since = np.clip(t_pair - window * _MS_PER_DAY - prep.base, -1, span - 1)
        pos_w = np.maximum(np.searchsorted(key, pair_g * span + since, side="left"), start)
        fields[f"purchases_{window}d"] = sums["purchases"][pos] - sums["purchases"][np.minimum(pos_w, pos)]

    # Most purchase days, then purchases, then the most recent touch, then the item token (a total order,
    # so that a row's profile never depends on the other rows).
    rank_order = np.lexsort(
        (fields["item"], -last_ts, -fields["purchases"], -fields["purchase_days"], pair_row)
    )
    row_sorted = pair_row[rank_order]
    within = np.arange(len(row_sorted)) - np.searchsorted(row_sorted, row_sorted, side="left")
    keep = rank_order[within < max_items]
    values = {name: fields[name][keep].astype(np.int32) for name in HISTORY_FIELDS}
    length = np.bincount(pair_row[keep], minlength=n).astype(np.int32)
    return values, length


def padded(values: dict[str, np.ndarray], length: np.ndarray, width: int) -> dict[str, np.ndarray]:
    """field -> (n, width) int32, each row's profile from the left (most-bought first), zero-padded."""
    n = len(length)
    real = np.arange(width)[None, :] < np.asarray(length)[:, None]
    out = {}
    for name in HISTORY_FIELDS:
        block = np.zeros((n, width), dtype=np.int32)
        if name in values:
            block[real] = values[name]
        out[name] = block
    return out


def list_columns(values: dict[str, np.ndarray], length: np.ndarray) -> dict[str, pa.Array]:
    """The profile as the build's list columns, `hist_<field>`."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(length)]).astype(np.int32))
    return {
        f"hist_{name}": pa.ListArray.from_arrays(offsets, pa.array(values[name], pa.int32()))
        for name in HISTORY_FIELDS
    }


def padded_from_table(table: pa.Table, width: int) -> dict[str, np.ndarray]:
    """field -> (n_rows, width) int32 from a build's `hist_` columns; (n_rows, 0) for a build from
    before the profile (or one built with `history_items` 0): the model then sees an empty profile."""
    n = table.num_rows
    if "hist_item" not in table.column_names or width <= 0:
        return {name: np.zeros((n, 0), dtype=np.int32) for name in HISTORY_FIELDS}
    item = table.column("hist_item").combine_chunks()
    length = np.diff(item.offsets.to_numpy()).astype(np.int64)
    if length.size and length.max() > width:
        raise ValueError(f"hist_item: a profile of {length.max()} items is longer than history_items={width}")
    flat = {
        name: table.column(f"hist_{name}").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        for name in HISTORY_FIELDS
        if f"hist_{name}" in table.column_names
    }
    return padded(flat, length, width)
