"""The randomised logging policy that chose the simulated e-mails, and the simulated control group."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from features.policy import in_control_group
from features.schema import Action
from features.sim.world import _A, _N_ACTIONS, _NO_SEND


@dataclass(frozen=True)
class PolicyInputs:
    """What the logging policy may look at: observable history only, never the latent stage.

    All arrays have one entry per decision; "days since" is `inf` where the thing never happened.
    """

    consented: np.ndarray
    tenure_days: np.ndarray
    days_since_view: np.ndarray
    days_since_cart: np.ndarray
    days_since_purchase: np.ndarray
    days_since_activity: np.ndarray
    purchases: np.ndarray


def logging_policy_probabilities(inputs: PolicyInputs, send_rate: float) -> np.ndarray:
    """The randomised logging policy: the probability of every action for every decision.

    Consented customers get no_send with 1 - `send_rate` and each message with `send_rate` times a
    normalised weight; weights are >= 0.5 and grow mildly where the history makes a message fit (a recent
    cart makes cart_abandonment 4x as likely), so every action keeps a propensity > 0. Non-consented
    customers get no_send with probability 1.

    Returns:
        Array [n, len(ACTIONS)] whose rows sum to 1.
    """
    n = len(inputs.consented)
    w = np.ones((n, _N_ACTIONS))
    w[:, _NO_SEND] = 0.0
    new = inputs.tenure_days < 14
    w[:, _A[Action.WELCOME_SERIES]] = np.where(new, 4.0, 0.5)
    w[:, _A[Action.EDUCATIONAL_CONTENT]] = np.where(inputs.tenure_days < 60, 1.5, 0.8)
    w[:, _A[Action.BROWSE_ABANDONMENT]] *= np.where(inputs.days_since_view <= 7, 2.5, 1.0)
    w[:, _A[Action.CART_ABANDONMENT]] *= np.where(inputs.days_since_cart <= 7, 4.0, 0.7)
    recent_buy = inputs.days_since_purchase <= 14
    w[:, _A[Action.POST_PURCHASE_ONBOARDING]] *= np.where(recent_buy, 3.0, 0.7)
    feedback = (inputs.days_since_purchase >= 7) & (inputs.days_since_purchase <= 30)
    w[:, _A[Action.FEEDBACK_REQUEST]] *= np.where(feedback, 3.0, 0.6)
    w[:, _A[Action.CROSS_SELL]] *= np.where(inputs.days_since_purchase <= 30, 2.0, 1.0)
    w[:, _A[Action.LOYALTY_REWARD]] *= np.where(inputs.purchases >= 2, 2.5, 0.7)
    dormant = (inputs.days_since_activity > 30) & (inputs.tenure_days >= 30)
    w[:, _A[Action.WINBACK_OFFER]] *= np.where(dormant, 3.0, 1.0)
    probs = send_rate * w / w.sum(axis=1, keepdims=True)
    probs[:, _NO_SEND] = 1.0 - send_rate
    probs[~np.asarray(inputs.consented, dtype=bool)] = np.eye(_N_ACTIONS)[_NO_SEND]
    return probs


def control_group(customer_ids: Sequence[str], share: float, seed: int) -> np.ndarray:
    """Whether each customer is in the control group: stable per id and seed, random across customers.

    sha256 of the salt and the id, read as a number in [0, 1), below `share`: the service's rule
    (`features.policy.in_control_group`) with the salt `sim-control-{seed}`. A hash rather than the run's
    random stream keeps membership the same whatever the chunking, and leaves that stream untouched.

    Returns:
        Bool array, one entry per id.
    """
    return in_control_group(customer_ids, share, f"sim-control-{seed}")
