"""Array helpers shared by the encoder and the labels: exact money sums, prefix sums, the last index of a
mask, sorted ids, epoch milliseconds, and the one definition of an open cart."""

from __future__ import annotations

import numpy as np
import pandas as pd


def cents(value: np.ndarray) -> np.ndarray:
    """Money as int64 cents (NaN -> 0): integer prefix sums are exact, so a customer's sums do not
    depend on which other customers share the batch (float prefix sums would)."""
    return np.round(np.where(np.isnan(value), 0.0, value) * 100).astype(np.int64)


def prefix_sum(x: np.ndarray) -> np.ndarray:
    """Exclusive prefix sum: `out[i]` is the sum of `x[:i]` (length n + 1)."""
    out = np.zeros(len(x) + 1, dtype=x.dtype)
    np.cumsum(x, out=out[1:])
    return out


def last_index(mask: np.ndarray) -> np.ndarray:
    """`out[i]` is the largest j <= i with mask[j], or -1."""
    idx = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx


def factorize_sorted(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids and each row's index into them; categorical input sorts only its categories."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        cats = np.asarray(values.cat.categories.astype(str), dtype=object)
        codes = values.cat.codes.to_numpy()
        if (codes < 0).any():
            raise ValueError("customer_id: missing values in validated events")
        used = np.unique(codes)
        order = np.argsort(cats[used], kind="stable")
        rank = np.empty(len(cats), dtype=np.int64)
        rank[used[order]] = np.arange(len(used))
        return cats[used[order]], rank[codes]
    ids = values.astype(str).to_numpy(dtype=object)
    customers, inverse = np.unique(ids, return_inverse=True)
    return customers, inverse.astype(np.int64).reshape(-1)


def to_epoch_ms(ts: pd.Series) -> np.ndarray:
    """UTC timestamps (naive ones taken as UTC) -> int64 epoch milliseconds, floored."""
    values = pd.to_datetime(ts, utc=True).dt.as_unit("ns")
    return values.astype("int64").to_numpy(dtype=np.int64) // 1_000_000


# An open cart: something added to the cart since the last purchase, within the last this many days.
OPEN_CART_DAYS = 7


def is_open_cart(days_since_cart: np.ndarray, days_since_purchase: np.ndarray) -> np.ndarray:
    """Whether a customer has an open cart at a cutoff, from the days since their last add-to-cart and
    their last purchase before it (`features.encoder.NEVER_DAYS` where none).

    The one definition: the encoder's `open_cart` aggregate (which the business rules read) and the
    cart-abandonment label (`features.labels`: the rows its head learns from) both call it. Any order
    closes the cart: checkout buys what the cart holds.
    """
    return (days_since_cart < OPEN_CART_DAYS) & (days_since_cart < days_since_purchase)
