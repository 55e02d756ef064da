"""Temperature scaling of the sequence model's heads, fitted on the validation window.

One temperature per head (stage, each propensity, the action outcome) divides its logits before the softmax
or sigmoid: it fixes over- or under-confidence without changing any ranking.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from features.schema import ACTIONS
from predictor.model import UNSUBSCRIBE, Calibration
from training.data import FeatureData

NO_SEND = ACTIONS.index("no_send")


def temperatures(
    outs: dict[str, np.ndarray], valid: FeatureData, propensity_heads: Sequence[str]
) -> Calibration:
    """Temperature scaling per head on the validation window: for each head, the temperature of a
    log-spaced grid over [1/4, 4] with the least negative log-likelihood on the head's labelled rows (1 where
    it has none).

    Args:
        outs: the model's raw outputs on `valid` (`predictor.predictor.raw_outputs`).
        propensity_heads: the propensity head's outputs in order (`ModelConfig.propensity_heads`).
    """
    grid = np.exp(np.linspace(np.log(0.25), np.log(4.0), 49))
    stage_logits = outs["stage"]
    y = valid.stage

    def nll_softmax(t: float) -> float:
        z = stage_logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    def nll_sigmoid(logit: np.ndarray, target: np.ndarray, t: float) -> float:
        z = logit / t
        return float(np.mean(np.logaddexp(0, z) - target * z))

    stage_t = float(min(grid, key=nll_softmax)) if len(y) else 1.0
    prop_t = []
    for j, name in enumerate(propensity_heads):
        if name == UNSUBSCRIBE:
            ok = (valid.logged_action >= 0) & (valid.logged_action != NO_SEND) & ~np.isnan(valid.unsubscribed)
            target = valid.unsubscribed[ok]
        else:  # the labelled rows only (cart abandonment: the rows with an open cart)
            ok = np.isfinite(valid.targets[name])
            target = valid.targets[name][ok]
        logit = outs["propensity"][ok, j]
        prop_t.append(float(min(grid, key=lambda t: nll_sigmoid(logit, target, t))) if ok.any() else 1.0)
    ok = valid.logged_action >= 0
    action_t = 1.0
    if ok.any():
        logit = outs["action"][ok, valid.logged_action[ok]]
        action_t = float(min(grid, key=lambda t: nll_sigmoid(logit, valid.outcome[ok], t)))
    return Calibration(stage=stage_t, propensity=prop_t, action=action_t)
