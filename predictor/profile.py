"""The customer's whole-history item profile in the sequence model: a taste input and a repeat score.

On purchase data a customer's own item frequencies over the whole history beat most neural next-basket
models (P-TopFreq, TIFU-KNN; NOTES.md), and what makes a sequence model competitive there is an explicit
repeat mechanism mixed per customer with an explore score (RepeatNet, ReCANet). The profile
(`features.history`: up to `history_items` distinct items with their counts and recencies) enters twice:

- as input: a "taste" vector, the item embeddings of the profile weighted by a learned function of their
  counts and recencies (a softmax over the profile), projected and added to the customer's state, so
  that every head (and the explore score) knows what the customer buys, not only their last 50 events;
- as a repeat score: a small network of each profile item's features (initialised like own-history: log
  purchase days, a little for carts and views, less for older touches), times a per-customer gate from
  the state, added to that item's logit (the explore score, the state against the item embeddings).

Only the (B, H) profile is touched, never a pass over the (B, n_items) catalogue.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from features.history import NEVER_DAYS
from features.vocab import FIRST

# Features of a profile item, in this order (`profile_features`).
FEATURES: tuple[str, ...] = (
    "log_purchases",
    "log_purchase_days",
    "log_carts",
    "log_views",
    "recency",  # log1p(days since the last touch) / log(366): 0 today, 1 a year or more ago
    "purchase_recency",  # the same for the last purchase (1 if never bought)
    "age",  # the same for the first touch
    "bought",
    "share",  # the item's share of the customer's purchase days
    "log_rate",  # log1p(purchase days per 30 days since the first touch)
    "log_purchases_30d",
    "log_purchases_90d",
    "rel_recency",  # as `recency`, from the customer's most recent touch of any item (baskets ago, roughly)
    "rel_purchase_recency",  # the same for purchases
)
_LOG_YEAR = math.log(366.0)
# The repeat score's start, like the own-history baseline: purchase days count most, carts and views a
# little, a touch long ago less than a recent one.
_PRIOR = {"log_purchase_days": 1.0, "log_carts": 0.3, "log_views": 0.2, "recency": -1.0}


def profile_features(history: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """(B, H, len(FEATURES)) float features and the (B, H) mask of real profile items."""
    mask = history["item"] >= FIRST
    f = {name: history[name].float() for name in ("purchases", "purchase_days", "carts", "views")}
    recency = {
        name: torch.log1p(history[name].float()) / _LOG_YEAR
        for name in ("days_since", "days_since_purchase", "days_since_first")
    }
    total_days = f["purchase_days"].sum(dim=1, keepdim=True).clamp(min=1.0)
    relative = {}
    for name in ("days_since", "days_since_purchase"):
        days = history[name].float().masked_fill(~mask, float(NEVER_DAYS))
        latest = days.min(dim=1, keepdim=True).values
        relative[name] = torch.log1p(days - latest) / _LOG_YEAR
    rate = f["purchase_days"] * 30.0 / (history["days_since_first"].float() + 1.0)
    out = torch.stack(
        [
            torch.log1p(f["purchases"]),
            torch.log1p(f["purchase_days"]),
            torch.log1p(f["carts"]),
            torch.log1p(f["views"]),
            recency["days_since"],
            recency["days_since_purchase"],
            recency["days_since_first"],
            (f["purchases"] > 0).float(),
            f["purchase_days"] / total_days,
            torch.log1p(rate),
            torch.log1p(history["purchases_30d"].float()),
            torch.log1p(history["purchases_90d"].float()),
            relative["days_since"],
            relative["days_since_purchase"],
        ],
        dim=-1,
    )
    return out * mask.unsqueeze(-1), mask


class ProfileHead(nn.Module):
    """The taste input and the repeat score of the profile (see the module doc).

    Args:
        d: the model width.
        use_input: build the taste input.
        use_repeat: build the repeat score.
        hidden: width of the repeat score's network.
        scale: the per-customer gate's value at initialisation.
    """

    def __init__(
        self, d: int, use_input: bool, use_repeat: bool, hidden: int = 32, scale: float = 1.0
    ) -> None:
        super().__init__()
        n = len(FEATURES)
        self.use_input, self.use_repeat = use_input, use_repeat
        if use_input:
            self.taste_weight = nn.Linear(n, 1)
            self.taste_proj = nn.Linear(d, d)
        if use_repeat:
            self.prior = nn.Linear(n, 1)
            with torch.no_grad():
                self.prior.weight.zero_()
                self.prior.bias.zero_()
                for name, w in _PRIOR.items():
                    self.prior.weight[0, FEATURES.index(name)] = w
            self.repeat_in, self.repeat_out = nn.Linear(n, hidden), nn.Linear(hidden, 1)
            with torch.no_grad():  # a small correction of the prior at the start
                self.repeat_out.weight.mul_(0.1)
                self.repeat_out.bias.zero_()
            self.gate = nn.Linear(d, 1)
            with torch.no_grad():  # softplus(bias) = scale: the prior, in logits of that scale
                self.gate.weight.mul_(0.1)
                self.gate.bias.fill_(scale + math.log(-math.expm1(-scale)))

    def taste(self, feat: Tensor, mask: Tensor, item: Tensor, embedding: nn.Module) -> Tensor:
        """(B, d): the profile's item embeddings, weighted by a softmax of a learned score of their
        features; zero for a customer with an empty profile."""
        score = self.taste_weight(feat).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, H)
        weight = torch.softmax(score, dim=1)
        weight = torch.where(mask, weight, 0.0)  # rows without any item: NaN -> 0
        pooled = (weight.unsqueeze(-1) * embedding(item)).sum(dim=1)  # (B, d)
        return self.taste_proj(pooled) * mask.any(dim=1, keepdim=True)

    def add_repeat_scores(
        self, items: Tensor, feat: Tensor, mask: Tensor, item: Tensor, state: Tensor
    ) -> None:
        """Adds to `items` (in place, (B, n_items) logits) each profile item's repeat score."""
        score = (self.prior(feat) + self.repeat_out(F.gelu(self.repeat_in(feat)))).squeeze(-1)  # (B, H)
        gate = F.softplus(self.gate(state))  # (B, 1): how much this customer repeats
        value = torch.where(mask, gate * score, 0.0)
        items.scatter_add_(1, item, value.to(items.dtype))
