"""What one pass of the decision path decided (`Decided`, column-wise) and its two readings: the API's
score response per customer (`answer`) and the audience export's table (`table`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from features.policy import NO_SEND
from features.schema import ACTIONS, STAGES, Action
from predictor.interface import Predictions
from serving.decisions import MESSAGE_CHANNEL, reasons
from serving.model import LoadedModel
from serving.scoring import CartAnswer, Scored, cart_abandonment
from serving.store import Decision


@dataclass
class Decided:
    """A batch's decisions, column-wise: what `Service.decide` returns.

    Attributes:
        uplift: (n, len(ACTIONS)) expected gain of each action over no_send.
        allowed, blocked_by: (n, len(ACTIONS)) the rules' answer (the store's refusals included).
        action, intended, propensity, control, explored: the policy's draw per row (intended: before a
            control-group override).
        k: recommendations per row.
        decision_ids: per row, the recorded decision's id (None: not recorded).
        consent_ts: per row, the consent evidence the rules read.
    """

    model: LoadedModel
    scored: Scored
    uplift: np.ndarray
    allowed: np.ndarray
    blocked_by: np.ndarray
    action: np.ndarray
    intended: np.ndarray
    propensity: np.ndarray
    control: np.ndarray
    explored: np.ndarray
    k: np.ndarray
    decision_ids: list[str | None]
    consent_ts: list[datetime | None]

    @property
    def pred(self) -> Predictions:
        return self.scored.pred

    @cached_property
    def stage(self) -> np.ndarray:
        """(n,) index of each row's most probable stage."""
        assert self.pred.stage_proba is not None
        return self.pred.stage_proba.argmax(axis=1)

    @cached_property
    def cart(self) -> CartAnswer | None:
        """The cart-abandonment answer per row (NaN without an open cart; None: the model has no head)."""
        return cart_abandonment(self.scored)

    def items(self, i: int) -> list[str]:
        assert self.pred.top_items is not None
        return [str(item) for item in self.model.items[self.pred.top_items[i, : self.k[i]]]]

    def gain(self, i: int) -> float:
        a = int(self.action[i])
        return 0.0 if a == NO_SEND else float(self.uplift[i, a])


def answer(d: Decided, i: int, explain: bool = True) -> dict[str, Any]:
    """Row i of the decisions as the API's score response."""
    pred = d.pred
    assert pred.stage_proba is not None
    assert pred.top_items is not None
    stage_p = pred.stage_proba[i]
    stage = STAGES[int(stage_p.argmax())]
    a = int(d.action[i])
    action = ACTIONS[a]
    k = int(d.k[i])
    scores = pred.top_scores[i][:k] if pred.top_scores is not None else np.zeros(k)
    items = d.items(i)
    ranked = sorted(
        (
            {
                "action": name,
                "score": 0.0 if name == Action.NO_SEND else float(d.uplift[i, j]),
                "eligible": bool(d.allowed[i, j]) or name == Action.NO_SEND,
                "blocked_by": str(d.blocked_by[i, j]) or None,
            }
            for j, name in enumerate(ACTIONS)
        ),
        key=lambda r: (not r["eligible"], -float(r["score"])),  # type: ignore[arg-type]
    )
    control, explored = bool(d.control[i]), bool(d.explored[i])
    cart = d.cart
    return {
        "customer_id": d.scored.customer_ids[i],
        "scored_at": d.scored.now[i],
        "model": {"name": d.model.name, "version": d.model.version},
        "stage": {
            "label": stage,
            "probabilities": {s: float(p) for s, p in zip(STAGES, stage_p, strict=True)},
        },
        "propensities": {
            name: float(p[i]) for name, p in pred.propensity.items() if cart is None or name != cart.head
        },
        "cart_abandonment": None
        if cart is None or np.isnan(cart.probability[i])
        else {"probability": float(cart.probability[i]), "window_hours": cart.window_hours},
        "next_best_action": {
            "action": action,
            "channel": None if action == Action.NO_SEND else MESSAGE_CHANNEL,
            "expected_uplift": d.gain(i),
            "propensity": float(d.propensity[i]),
            "decision_id": d.decision_ids[i],
            "control_group": control,
            "explored": explored,
            "ranked": ranked,
        },
        "recommendations": [
            {"item_id": item, "score": float(s), "rank": r + 1}
            for r, (item, s) in enumerate(zip(items, scores, strict=True))
        ],
        "reasons": reasons(
            stage=stage,
            stage_p=float(stage_p.max()),
            aggregates=d.scored.aggregates(i),
            recent=d.scored.recent(i),
            action=action,
            control=control,
            explored=explored,
            uplift=float(d.uplift[i, a]),
            blocked=[str(b) for b in d.blocked_by[i]],
        )
        if explain
        else [],
    }


def table(d: Decided) -> pd.DataFrame:
    """The decisions as the audience export's table.

    Columns: customer_id, scored_at, model_version, stage, p_stage_<s>, action, channel,
    expected_uplift, propensity, decision_id, control_group, top_items, p_<propensity> (among them
    p_cart_abandon_<h>h, empty where the customer has no open cart).
    """
    pred, n, cart = d.pred, len(d.scored.customer_ids), d.cart
    assert pred.stage_proba is not None
    is_message = d.action != NO_SEND
    return pd.DataFrame(
        {
            "customer_id": d.scored.customer_ids,
            "scored_at": pd.to_datetime(d.scored.now, utc=True),
            "model_version": d.model.version,
            "stage": np.array(STAGES)[d.stage],
            **{f"p_stage_{s}": pred.stage_proba[:, j] for j, s in enumerate(STAGES)},
            "action": np.array(ACTIONS, dtype=object)[d.action],
            "channel": pd.Series([MESSAGE_CHANNEL if m else None for m in is_message], dtype=object),
            "expected_uplift": np.where(is_message, d.uplift[np.arange(n), d.action], 0.0),
            "propensity": d.propensity,
            "decision_id": d.decision_ids,
            "control_group": d.control,
            "top_items": [" ".join(d.items(i)) for i in range(n)],
            **{
                f"p_{name}": cart.probability if cart is not None and name == cart.head else p
                for name, p in pred.propensity.items()
            },
        }
    )


def decision_dict(d: Decision) -> dict[str, Any]:
    return {
        "decision_id": d.decision_id,
        "ts": d.ts.isoformat(),
        "action": d.action,
        "channel": d.channel,
        "propensity": d.propensity,
        "model_version": d.model_version,
        "control_group": d.control,
        "stage": d.stage,
        "expected_uplift": d.expected_uplift,
    }
