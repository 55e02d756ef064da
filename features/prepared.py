"""Events of some customers prepared once for encoding and labelling at many cutoffs (`PreparedEvents`).

Built by `features.encoder.prepare`; read by the encoder, its aggregates (`features.aggregates`), the item
profile (`features.history`) and the hindsight labels. Apart from the encoder so that those modules can
read it without importing the encoder back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class PreparedEvents:
    """Events of some customers sorted by (customer, ts), with their tokens and search keys.

    Build it with `prepare`; both `encode_prepared` and the hindsight labels read it.
    """

    customers: np.ndarray  # (n_customers,) sorted unique customer ids (object)
    cust: np.ndarray  # (n_events,) int64 index into `customers`
    ts_ms: np.ndarray  # (n_events,) int64 epoch milliseconds
    key: np.ndarray  # (n_events,) int64, increasing: cust * span + (ts_ms - base)
    base: int
    span: int
    event_type: np.ndarray  # (n_events,) int16 index into EVENT_TYPES, -1 for none
    tokens: dict[str, np.ndarray]  # field -> (n_events,) int32 token
    value: np.ndarray  # (n_events,) float64, NaN where none
    item_token: np.ndarray  # (n_events,) int32 item vocabulary index

    @property
    def n_events(self) -> int:
        return len(self.ts_ms)

    def customer_codes(self, customer_ids: pd.Series | np.ndarray) -> np.ndarray:
        """Index of each id in `customers`, -1 for a customer without events."""
        if isinstance(customer_ids, pd.Series):
            ids = customer_ids.astype(str).to_numpy(dtype=object)
        else:
            ids = np.asarray(customer_ids, dtype=object)
        if len(self.customers) == 0:
            return np.full(len(ids), -1, dtype=np.int64)
        pos = np.searchsorted(self.customers, ids)
        pos = np.minimum(pos, len(self.customers) - 1)
        found = self.customers[pos] == ids
        return np.where(found, pos, -1).astype(np.int64)

    def search(self, cust: np.ndarray, t_ms: np.ndarray) -> np.ndarray:
        """Position of the first event of customer `cust` at or after `t_ms` (vectorised).

        Customers without events (code -1) get position 0 with an empty range; callers pair this with
        `starts` so that their counts are zero.
        """
        t = np.clip(t_ms - self.base, -1, self.span - 1)
        keys = np.where(cust >= 0, cust * self.span + t, -(2**62))
        pos = np.searchsorted(self.key, keys, side="left")
        return np.where(cust >= 0, pos, 0)

    def starts(self, cust: np.ndarray) -> np.ndarray:
        """Position of each customer's first event (0 for unknown customers)."""
        return np.where(cust >= 0, self.search(cust, np.full(len(cust), self.base - 1)), 0)
