"""Which heads of the model had labels to learn from.

A head that saw no labelled training row was never trained: its loss was exactly 0 (the next-item loss
on a click stream with the default purchase label), and what it serves comes from its random start. The
gate cannot always tell: its metric may be NaN for another reason, or not a gate metric at all, and
`--force-register` overrides it. So `training.train.train` never registers a model with such a head, not
even forced, and says which label setting to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from features.labels import cart_abandon_hours
from features.schema import ACTIONS, Action
from training.data import FeatureData

NEXT_ITEMS = "next items"
UNSUBSCRIBE = "unsubscribe"
ACTION_OUTCOMES = "action outcomes"
_NO_SEND = ACTIONS.index(Action.NO_SEND)


def labelled_rows(train: FeatureData, targets: tuple[str, ...], decision_log: bool) -> dict[str, int]:
    """Head -> training rows with a label for it, for every head the model serves.

    The stage labels every row; a propensity target a row where its label is known (0 and 1 alike; the
    cart-abandonment label only rows with an open cart); the next items label a row with at least one
    item. Unsubscribe (rows with a logged send) and the action outcomes (rows with a logged decision)
    learn from the decision log only, so they count when the build has one.
    """
    counts = {"stage": len(train)}
    counts.update({t: int(np.isfinite(train.targets[t]).sum()) for t in targets})
    counts[NEXT_ITEMS] = sum(1 for items in train.next_items if len(items))
    if decision_log:
        logged = train.has_decisions
        sent = logged & (train.logged_action != _NO_SEND) & np.isfinite(train.unsubscribed)
        counts[UNSUBSCRIBE] = int(sent.sum())
        counts[ACTION_OUTCOMES] = int((logged & np.isfinite(train.outcome)).sum())
    return counts


def untrained_heads(train: FeatureData, targets: tuple[str, ...], manifest: Mapping[str, Any]) -> list[str]:
    """One line per head without a labelled training row, naming the head and the setting to change.

    Args:
        train: the training split.
        targets: the build's propensity targets.
        manifest: the features build's manifest (its label settings and whether it had a decision log).
    """
    labels = manifest.get("config", {}).get("labels", {})
    decision_log = bool(manifest.get("input", {}).get("decisions"))
    counts = labelled_rows(train, targets, decision_log)
    reasons = []
    for head, n in counts.items():
        if n == 0:
            setting, advice = _hint(head, labels)
            reasons.append(f"{head}: no labelled training rows ({setting}); {advice}")
    return reasons


def _hint(head: str, labels: Mapping[str, Any]) -> tuple[str, str]:
    """The label setting behind a head, and what to do about it."""
    if head == NEXT_ITEMS:
        events = list(labels.get("next_item_events", ["purchase"]))
        setting = (
            f"labels.next_item_events = {', '.join(events)}, "
            f"labels.next_items_days = {labels.get('next_items_days', 30)}"
        )
        if "product_view" in events:
            return setting, "no such event with an item follows a training cutoff: widen next_items_days"
        return setting, "on a click stream set labels.next_item_events: [product_view]"
    if head in (UNSUBSCRIBE, ACTION_OUTCOMES):
        what = "send" if head == UNSUBSCRIBE else "decision"
        setting = f"labels.decision_window_days = {labels.get('decision_window_days', 1)}"
        return (
            setting,
            f"no logged {what} at a training cutoff: give a decision log covering the training window",
        )
    hours = cart_abandon_hours(head)
    if hours is not None:
        return (
            f"labels.cart_abandon_hours = {labels.get('cart_abandon_hours', hours)}",
            "no customer had an open cart (an add_to_cart since the last purchase, within 7 days) at a "
            "training cutoff: a shop that logs no carts sets labels.cart_abandon_hours: null",
        )
    return "the training split is empty", "check the build's cutoffs and splits (its manifest's rows)"
