"""Hindsight labels: what happened at and after each cutoff.

Real data carries no stage labels, so the stage is a documented, configurable function of the customer's
events before and after the cutoff (DESIGN.md, "Journey stages"). The rules, first match wins:

1. decision: a purchase within `decision_days` after the cutoff (purchase intent that converted);
2. post_purchase: the last purchase before the cutoff was at most `post_purchase_days` ago;
3. at_risk: an earlier buyer with no activity in the `churn_days` after the cutoff;
4. loyal: at least `loyal_min_purchases` purchases before the cutoff;
5. consideration: at least `consideration_min_events` product views, searches or carts in the
   `consideration_days` before the cutoff;
6. awareness: everybody else.

The model only ever sees events before the cutoff; these labels are its targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from features.encoder import MS_PER_DAY, PreparedEvents, cents, prefix_sum, to_epoch_ms
from features.schema import ACTIONS, EVENT_TYPES, SHOP_SENT_EVENTS, STAGES, EventType, Stage


@dataclass(frozen=True)
class LabelConfig:
    """Horizons (days) and thresholds of the hindsight labels."""

    decision_days: int = 7
    post_purchase_days: int = 14
    churn_days: int = 30
    loyal_min_purchases: int = 2
    consideration_days: int = 14
    consideration_min_events: int = 2
    purchase_horizons: tuple[int, ...] = (7, 30)
    next_items_days: int = 30
    max_next_items: int = 20
    # A logged decision belongs to the cutoff when it was made within this many days after it.
    decision_window_days: int = 1
    outcome_days: int = 7

    @property
    def horizon_days(self) -> int:
        """How far after a cutoff the labels look: later cutoffs cannot be labelled."""
        return max(self.decision_days, self.churn_days, self.next_items_days, *self.purchase_horizons)


DECISION_COLUMNS = ("decision_id", "customer_id", "ts", "action", "propensity")


def hindsight_labels(
    prep: PreparedEvents,
    cutoffs: pd.DataFrame,
    config: LabelConfig,
    decisions: pd.DataFrame | None = None,
) -> dict[str, pa.Array]:
    """Labels for each (customer_id, cutoff) row.

    Args:
        prep: the customers' events, prepared by `features.encoder.prepare`.
        cutoffs: columns customer_id and cutoff.
        config: horizons and stage rules.
        decisions: optional decision log (decision_id, customer_id, ts, action, propensity): the logged
            send (or no_send) made at each cutoff, with the probability the logging policy gave it.

    Returns:
        Column name -> Arrow array aligned with `cutoffs`.
    """
    cust = prep.customer_codes(cutoffs["customer_id"])
    t = to_epoch_ms(cutoffs["cutoff"])
    et = prep.event_type
    start = prep.starts(cust)
    at_t = prep.search(cust, t)

    def count(mask: np.ndarray, lo_ms: np.ndarray, hi_ms: np.ndarray) -> np.ndarray:
        csum = prefix_sum(mask.astype(np.int64))
        lo = np.maximum(prep.search(cust, lo_ms), start)
        return csum[prep.search(cust, hi_ms)] - csum[lo]

    def is_type(*types: str) -> np.ndarray:
        return np.isin(et, [EVENT_TYPES.index(x) for x in types])

    purchase = is_type(EventType.PURCHASE)
    activity = ~is_type(*SHOP_SENT_EVENTS)
    day = MS_PER_DAY
    out: dict[str, pa.Array] = {}
    for h in config.purchase_horizons:
        out[f"purchase_{h}d"] = pa.array(count(purchase, t, t + h * day) > 0)
    active_after = count(activity, t, t + config.churn_days * day) > 0
    out[f"churn_{config.churn_days}d"] = pa.array(~active_after)

    csum_p = prefix_sum(purchase.astype(np.int64))
    purchases_before = csum_p[at_t] - csum_p[start]
    recent_purchase = count(purchase, t - config.post_purchase_days * day, t) > 0
    interest = is_type(EventType.PRODUCT_VIEW, EventType.SEARCH, EventType.ADD_TO_CART)
    interested = count(interest, t - config.consideration_days * day, t) >= config.consideration_min_events
    conditions = [
        count(purchase, t, t + config.decision_days * day) > 0,
        recent_purchase,
        (purchases_before > 0) & ~active_after,
        purchases_before >= config.loyal_min_purchases,
        interested,
    ]
    choices = [Stage.DECISION, Stage.POST_PURCHASE, Stage.AT_RISK, Stage.LOYAL, Stage.CONSIDERATION]
    stage = np.select(conditions, [STAGES.index(c) for c in choices], default=STAGES.index(Stage.AWARENESS))
    out["stage"] = pa.DictionaryArray.from_arrays(pa.array(stage, pa.int8()), pa.array(STAGES)).cast(
        pa.string()
    )

    out["next_items"] = _next_items(prep, cust, t, t + config.next_items_days * day, purchase, config)
    out.update(_logged_decisions(prep, cust, cutoffs, t, config, decisions, purchase))
    return out


def _next_items(
    prep: PreparedEvents,
    cust: np.ndarray,
    lo_ms: np.ndarray,
    hi_ms: np.ndarray,
    purchase: np.ndarray,
    config: LabelConfig,
) -> pa.Array:
    """Distinct items bought in [lo, hi), in order of first purchase, at most `max_next_items`."""
    idx = np.flatnonzero(purchase & (prep.item_token > 0))
    pos_lo = prep.search(cust, lo_ms)
    pos_hi = prep.search(cust, hi_ms)
    # Index of purchases inside [pos_lo, pos_hi): positions in `idx` via searchsorted on event positions.
    lo = np.searchsorted(idx, pos_lo, side="left")
    hi = np.searchsorted(idx, pos_hi, side="left")
    n = np.where(cust >= 0, hi - lo, 0)
    rows = np.repeat(np.arange(len(cust)), n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    items = prep.item_token[idx[np.repeat(lo, n) + within]] if len(rows) else np.zeros(0, dtype=np.int32)
    frame = pd.DataFrame({"row": rows, "item": items}).drop_duplicates(keep="first")
    frame = frame[frame.groupby("row").cumcount() < config.max_next_items]
    counts = np.bincount(frame["row"].to_numpy(), minlength=len(cust))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(frame["item"].to_numpy(dtype=np.int32)))


def _logged_decisions(
    prep: PreparedEvents,
    cust: np.ndarray,
    cutoffs: pd.DataFrame,
    t: np.ndarray,
    config: LabelConfig,
    decisions: pd.DataFrame | None,
    purchase: np.ndarray,
) -> dict[str, pa.Array]:
    """The decision logged at each cutoff (if any), its propensity and its outcome."""
    n = len(cutoffs)
    if decisions is None or decisions.empty:
        return {
            "decision_id": pa.nulls(n, pa.string()),
            "logged_action": pa.nulls(n, pa.string()),
            "logged_propensity": pa.nulls(n, pa.float64()),
            "outcome_purchase": pa.nulls(n, pa.bool_()),
            "outcome_revenue": pa.nulls(n, pa.float64()),
            "outcome_unsubscribe": pa.nulls(n, pa.bool_()),
        }
    left = pd.DataFrame({"row": np.arange(n), "customer_id": cutoffs["customer_id"].astype(str).to_numpy(),
                         "t": t})  # fmt: skip
    right = pd.DataFrame(
        {
            "customer_id": decisions["customer_id"].astype(str).to_numpy(),
            "t": to_epoch_ms(decisions["ts"]),
            "decision_id": decisions["decision_id"].astype(str).to_numpy(),
            "action": decisions["action"].astype(str).to_numpy(),
            "propensity": decisions["propensity"].astype(float).to_numpy(),
        }
    )
    right["decision_ms"] = right["t"]
    unknown = sorted(set(right["action"]) - set(ACTIONS))
    if unknown:
        raise ValueError(f"decision log: unknown action(s) {unknown}; expected one of {list(ACTIONS)}")
    merged = pd.merge_asof(
        left.sort_values("t"),
        right.sort_values("t"),
        on="t",
        by="customer_id",
        direction="forward",
        tolerance=config.decision_window_days * MS_PER_DAY - 1,
    ).sort_values("row")
    has = merged["decision_id"].notna().to_numpy()
    mask = ~has
    d_ms = np.where(has, merged["decision_ms"].fillna(0).to_numpy(dtype=np.int64), t)
    hi = d_ms + config.outcome_days * MS_PER_DAY
    pos_lo, pos_hi = prep.search(cust, d_ms), prep.search(cust, hi)
    csum = prefix_sum(purchase.astype(np.int64))
    bought = (csum[pos_hi] - csum[pos_lo]) > 0
    rsum = prefix_sum(np.where(purchase, cents(prep.value), 0))
    revenue = (rsum[pos_hi] - rsum[pos_lo]) / 100.0
    unsub = prep.event_type == EVENT_TYPES.index(EventType.EMAIL_UNSUBSCRIBE)
    usum = prefix_sum(unsub.astype(np.int64))
    unsubscribed = (usum[pos_hi] - usum[pos_lo]) > 0
    return {
        "decision_id": pa.array(merged["decision_id"].to_numpy(dtype=object), pa.string(), mask=mask),
        "logged_action": pa.array(merged["action"].to_numpy(dtype=object), pa.string(), mask=mask),
        "logged_propensity": pa.array(merged["propensity"].to_numpy(dtype=np.float64), mask=mask),
        "outcome_purchase": pa.array(bought, mask=mask),
        "outcome_revenue": pa.array(revenue, mask=mask),
        "outcome_unsubscribe": pa.array(unsubscribed, mask=mask),
    }
