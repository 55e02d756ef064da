"""The sequence model: one encoder over event tokens, with heads for stage, propensities, next items and
the outcome of each action. Module and config only; the training loop lives in `training.sequence`.

Input per row: the left-padded token sequences of `features.encoder` (oldest event first) and the
aggregates. A summary token, built from the aggregates, is appended after the last event; the encoder's
output at that token is the customer's state. It is never padding, so a customer without events still
gets a state (cold start), and the aggregates (recency, frequency, consent, ...) reach every head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from features.encoder import TOKEN_FIELDS
from features.schema import ACTIONS, EVENT_TYPES, STAGES, EventType
from features.vocab import FIRST
from predictor.profile import ProfileHead, profile_features

# The label columns of the default label config (purchase in 7 and 30 days, churn in 30 days). A build
# with other horizons has other columns: `training.data.FeatureBuild.targets` reads them from its manifest.
DEFAULT_TARGETS: tuple[str, ...] = ("purchase_7d", "purchase_30d", "churn_30d")
# The propensity head of "unsubscribe if mailed" comes after the build's label targets.
UNSUBSCRIBE = "unsubscribe"
# Events whose item counts as "the customer's own history" for the repeat mechanism, and their index.
_REPEAT_EVENTS = (EventType.PRODUCT_VIEW, EventType.ADD_TO_CART, EventType.CHECKOUT_START, EventType.PURCHASE)


# What a saved config without the profile's keys means: a model from before the profile.
_BEFORE_PROFILE = {"history_items": 0, "profile_input": False, "profile_repeat": False}


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model. `token_sizes`, `n_items` and `n_aggregates` come from the features build.

    Attributes:
        encoder: "transformer" or "gru" (chosen by measurement: see BENCHMARKS.md).
        d_model: width of embeddings and of the encoder.
        n_layers, n_heads, dropout: encoder shape.
        targets: the build's propensity label columns (`training.data.FeatureBuild.targets`); the
            propensity head predicts each, then "unsubscribe if mailed".
        repeat: add a repeat head that scores the customer's own past items by event type and recency
            (RepeatNet / ReCANet style), mixed with the catalogue-wide head; it reads the last `max_len`
            events only. Beside the profile's repeat score it made little difference on UCI's validation
            window (NDCG@10 / Recall@10 with it vs without, 4 epochs: 0.2970 / 0.2127 vs 0.2965 / 0.2117
            with the profile's final features; 0.293 vs 0.295 and 0.294 vs 0.292 with earlier ones); kept on
            by the last comparison (it ranks the recent items better: repeat NDCG@10 0.437 vs 0.425).
        history_items: width of the whole-history item profile (`features.history`), from the build.
        profile_input: add a "taste" vector pooled from the profile to the state (`predictor.profile`).
            Off by default: added to the state every head reads, it made the stage head of the test world's
            small model deaf to a new cart and checkout (tests/test_serving.py: 3 of 6 customers moved
            toward decision, the test asks 4); the profile's repeat score is what the item head uses.
        profile_scale: the per-customer gate's start (the repeat score's logit scale at initialisation;
            few optimiser steps on a small shop do not move it far).
        profile_repeat: add the profile's repeat score (a network of each profile item's counts and
            recencies, times a per-customer gate) to the item logits.
        A saved config without the profile keys (a model from before the profile) loads with the profile
        off (`from_dict`), as it was trained.
    """

    token_sizes: dict[str, int] = field(default_factory=dict)
    n_items: int = 0
    n_aggregates: int = 0
    max_len: int = 50
    targets: tuple[str, ...] = DEFAULT_TARGETS
    encoder: Literal["transformer", "gru"] = "gru"
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    repeat: bool = True
    repeat_prior: bool = False
    repeat_scale: float = 4.0
    history_items: int = 0
    profile_input: bool = False
    profile_repeat: bool = True
    profile_scale: float = 4.0

    @property
    def propensity_heads(self) -> tuple[str, ...]:
        """Names of the propensity head's outputs, in order: the targets, then unsubscribe."""
        return (*self.targets, UNSUBSCRIBE)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        if "targets" in data:
            data["targets"] = tuple(data["targets"])
        for key, before in _BEFORE_PROFILE.items():
            data.setdefault(key, before)
        return cls(**data)


@dataclass
class ModelOutput:
    """Raw head outputs (logits) for a batch of B rows."""

    stage: Tensor  # (B, n_stages) logits
    propensity: Tensor  # (B, len(config.propensity_heads)) logits
    items: Tensor  # (B, n_items) logits over the whole item index space (pad and OOV masked)
    action: Tensor  # (B, n_actions) logits of P(outcome | action)


class JourneyModel(nn.Module):
    """Event-sequence encoder with stage, propensity, next-item and action-outcome heads."""

    agg_scale: Tensor
    repeat_mask: Tensor
    not_an_item: Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.embed = nn.ModuleDict(
            {name: nn.Embedding(config.token_sizes[name], d, padding_idx=0) for name in TOKEN_FIELDS}
        )
        # The item embedding is shared with the next-item head (tied weights): items the customer touched
        # and items to recommend live in one space.
        self.item_bias = nn.Parameter(torch.zeros(config.n_items))
        self.position = nn.Embedding(config.max_len + 1, d)
        self.summary = nn.Sequential(nn.Linear(config.n_aggregates, d), nn.GELU(), nn.Linear(d, d))
        self.norm_in = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        if config.encoder == "transformer":
            layer = nn.TransformerEncoderLayer(
                d,
                config.n_heads,
                dim_feedforward=2 * d,
                dropout=config.dropout,
                batch_first=True,
                norm_first=True,
            )
            self.encoder: nn.Module = nn.TransformerEncoder(
                layer, config.n_layers, enable_nested_tensor=False
            )
        else:
            self.encoder = nn.GRU(d, d, num_layers=config.n_layers, batch_first=True, dropout=config.dropout)
        self.norm_out = nn.LayerNorm(d)
        # A wide path: the aggregates also reach the heads directly, as trees see them, besides through
        # the encoder's summary token.
        self.wide = nn.Sequential(nn.Linear(config.n_aggregates, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.stage_head = nn.Linear(d, len(STAGES))
        self.propensity_head = nn.Linear(d, len(config.propensity_heads))
        self.action_head = nn.Linear(d, len(ACTIONS))
        self.item_query = nn.Linear(d, d)
        # Repeat mechanism: a learned weight per (event type, recency position) of the customer's history.
        # Initialised like the own-history baseline (purchase 1, cart 0.25, view 0.3, decay 0.9 per event),
        # through softplus's inverse, so training starts from a strong recommender and improves on it.
        prior = torch.zeros(len(EVENT_TYPES) + FIRST, config.max_len)  # softplus(0) = log 2 for every event
        if config.repeat_prior:
            prior = torch.full((len(EVENT_TYPES) + FIRST, config.max_len), 1e-3)
            decay = 0.9 ** torch.arange(config.max_len, dtype=torch.float32)
            for e, weight in ((EventType.PURCHASE, 1.0), (EventType.ADD_TO_CART, 0.25),
                              (EventType.PRODUCT_VIEW, 0.3), (EventType.CHECKOUT_START, 0.25)):  # fmt: skip
                prior[EVENT_TYPES.index(e) + FIRST] = weight * decay
            prior = torch.log(torch.expm1(prior))
        # Kept when off (saved models hold them) but frozen: DDP then finds no parameter without a gradient.
        self.repeat_weight = nn.Parameter(prior, requires_grad=config.repeat)
        self.repeat_gate = nn.Linear(d, 1).requires_grad_(config.repeat)
        repeat_mask = torch.zeros(len(EVENT_TYPES) + FIRST, dtype=torch.bool)
        for e in _REPEAT_EVENTS:
            repeat_mask[EVENT_TYPES.index(e) + FIRST] = True
        self.register_buffer("repeat_mask", repeat_mask, persistent=False)
        not_an_item = torch.zeros(config.n_items, dtype=torch.bool)
        not_an_item[:FIRST] = True
        self.register_buffer("not_an_item", not_an_item, persistent=False)
        # Without a profile (history_items 0) its parts are not built: no parameter goes unused.
        has = config.history_items > 0
        self.profile = ProfileHead(
            d, config.profile_input and has, config.profile_repeat and has, scale=config.profile_scale
        )
        # Aggregates arrive in raw units (days, counts, money): a log transform keeps them comparable.
        self.register_buffer("agg_scale", torch.ones(config.n_aggregates))
        # Inference's copy of the item table in (d, n_items) layout (`_item_table_t`); not a buffer, so
        # neither saved nor loaded.
        self._item_t: Tensor = torch.empty(0)
        self._item_bias: Tensor = torch.empty(0)
        self._item_t_key: tuple[int, ...] | None = None
        # Inference's GRU states after p padding steps, p = 0..max_len (`_pad_states`).
        self._pad: Tensor = torch.empty(0)
        self._pad_key: tuple[object, ...] | None = None

    def forward(
        self, tokens: dict[str, Tensor], aggregates: Tensor, history: dict[str, Tensor] | None = None
    ) -> ModelOutput:
        """Args:
        tokens: field -> (B, L) int64, left-padded.
        aggregates: (B, n_aggregates) float32.
        history: field -> (B, H) int64, the whole-history item profile (`features.history`), zero-padded;
            None or H = 0: an empty profile.
        """
        event_type = tokens["event_type"]  # (B, L)
        B, L = event_type.shape
        x = sum(self.embed[name](tokens[name]) for name in TOKEN_FIELDS)  # (B, L, d)
        agg = torch.sign(aggregates) * torch.log1p(aggregates.abs() / self.agg_scale)
        summary = self.summary(agg).unsqueeze(1)  # (B, 1, d)
        h = torch.cat([x, summary], dim=1)  # (B, L+1, d)
        h = h + self.position(torch.arange(L + 1, device=h.device)).unsqueeze(0)
        h = self.drop(self.norm_in(h))
        pad = torch.cat([event_type == 0, torch.zeros(B, 1, dtype=torch.bool, device=h.device)], dim=1)
        if isinstance(self.encoder, nn.GRU) and not (self.training or torch.is_grad_enabled()):
            last = self._gru_real_steps(h, (event_type == 0).sum(dim=1))
        elif isinstance(self.encoder, nn.GRU):
            last = self.encoder(h)[0][:, -1]
        else:
            last = self.encoder(h, src_key_padding_mask=pad)[:, -1]
        state = last + self.wide(agg)
        profile = None  # (features (B, H, n_features), mask (B, H), items (B, H))
        if history is not None and history["item"].shape[1] > 0:
            profile = (*profile_features(history), history["item"])
        if profile is not None and self.profile.use_input:
            state = state + self.profile.taste(*profile, self.embed["item_id"])
        state = self.norm_out(state)  # (B, d): the summary token's output

        # The bias carries -inf for padding and out-of-vocabulary: never recommended, at no extra pass
        # over the (B, n_items) scores (with a 100,000-item catalogue every such pass shows in latency).
        bias, table = self._item_table()
        items = torch.addmm(bias, self.item_query(state), table)  # (B, n_items)
        if self.config.repeat:
            self._add_repeat_scores(items, tokens, state)
        if profile is not None and self.profile.use_repeat:
            self.profile.add_repeat_scores(items, *profile, state)
        return ModelOutput(
            stage=self.stage_head(state),
            propensity=self.propensity_head(state),
            items=items,
            action=self.action_head(state),
        )

    def _gru_real_steps(self, h: Tensor, n_pad: Tensor) -> Tensor:
        """The GRU's top-layer output at the summary token, running only each row's real steps.

        The padding steps of a left-padded row feed the GRU inputs that depend only on their position, so
        the state they leave after p steps is the same for every row with p pads: it is computed once
        (`_pad_states`) and each row starts from it. The answer is the padded run's up to float rounding,
        at the cost of the real events only (a customer with 12 events of 50 costs a quarter).
        """
        _, steps_all, d = h.shape
        h0 = self._pad_states(steps_all - 1)[n_pad].transpose(0, 1).contiguous()  # (n_layers, B, d)
        steps = steps_all - n_pad  # real events and the summary token
        longest = int(steps.max())
        idx = (n_pad[:, None] + torch.arange(longest, device=h.device)[None, :]).clamp(max=steps_all - 1)
        x = h.gather(1, idx.unsqueeze(-1).expand(-1, -1, d))  # each row's real steps, left-aligned
        packed = nn.utils.rnn.pack_padded_sequence(x, steps.cpu(), batch_first=True, enforce_sorted=False)
        _, hn = self.encoder(packed, h0)
        last: Tensor = hn[-1]
        return last

    def _pad_states(self, max_len: int) -> Tensor:
        """(max_len + 1, n_layers, d): the GRU's state after p padding steps (positions 0..p-1), built once
        per version of the weights."""
        used = [*self.embed.parameters(), *self.position.parameters(), *self.norm_in.parameters(),
                *self.encoder.parameters()]  # fmt: skip
        key = (max_len, *((p.data_ptr(), p._version) for p in used))
        if self._pad_key != key:
            d = self.config.d_model
            zeros = torch.zeros(1, max_len, dtype=torch.long)
            x = sum(self.embed[name](zeros) for name in TOKEN_FIELDS)  # (1, L, d): the padding tokens
            pads = self.norm_in(x + self.position(torch.arange(max_len)).unsqueeze(0))
            rows = pads.expand(max_len, max_len, d)  # row p - 1 runs the first p padding steps
            lengths = torch.arange(1, max_len + 1)
            packed = nn.utils.rnn.pack_padded_sequence(rows, lengths, batch_first=True, enforce_sorted=False)
            _, hn = self.encoder(packed)  # (n_layers, L, d)
            start = torch.zeros(1, hn.shape[0], d)
            self._pad = torch.cat([start, hn.transpose(0, 1)], dim=0)
            self._pad_key = key
        return self._pad

    def _item_table(self) -> tuple[Tensor, Tensor]:
        """The ranking's bias ((n_items,), -inf for padding and OOV) and the item embedding transposed,
        (d, n_items).

        While gradients are recorded these are computed from the parameters (the weight is tied with the
        input embedding and must get its gradient). Without them (inference) they are built once per
        version of the weights: the matmul reads the (d, n) layout faster than the (n, d) one read through
        a transpose (about 20 % at one row, 5 % at 32-64 rows: benchmarks/ranking.py), the masked bias
        is one pass over the catalogue less per forward, and the scores are the same up to float rounding.
        """
        weight: Tensor = self.embed["item_id"].weight  # type: ignore[assignment]  # (n_items, d)
        if torch.is_grad_enabled():
            return self.item_bias.masked_fill(self.not_an_item, float("-inf")), weight.T
        key = (weight.data_ptr(), weight._version, self.item_bias.data_ptr(), self.item_bias._version)
        if self._item_t_key != key:
            self._item_t = weight.detach().T.contiguous()
            self._item_bias = self.item_bias.detach().masked_fill(self.not_an_item, float("-inf"))
            self._item_t_key = key
        return self._item_bias, self._item_t

    def _add_repeat_scores(self, items: Tensor, tokens: dict[str, Tensor], state: Tensor) -> None:
        """Adds to `items` (in place) the learned score of each item the customer touched.

        score(item) = gate(state) * repeat_scale * log1p(sum of the weights of its events), the weight of an
        event depending on its type and recency. Computed over the (B, L) history, not the (B, n_items)
        catalogue: an item's total is summed over the positions holding it and added once, at its first
        position, so the cost does not grow with the catalogue.
        """
        event_type, item = tokens["event_type"], tokens["item_id"]
        L = event_type.shape[1]
        recency = torch.arange(L, device=item.device).flip(0)  # 0 = most recent position
        w = self.repeat_weight[event_type, recency.unsqueeze(0).expand_as(event_type)]  # (B, L)
        w = torch.where(self.repeat_mask[event_type] & (item >= FIRST), torch.nn.functional.softplus(w), 0.0)
        same = item.unsqueeze(2) == item.unsqueeze(1)  # (B, L, L): positions holding the same item
        total = (same * w.unsqueeze(1)).sum(dim=2)  # (B, L): the item's summed weight, at each position
        earlier = torch.ones(L, L, dtype=torch.bool, device=item.device).tril(diagonal=-1)
        first = ~(same & earlier).any(dim=2)  # the item's first position in the row
        gate = torch.sigmoid(self.repeat_gate(state)) * self.config.repeat_scale  # (B, 1)
        value = torch.where(first, gate * torch.log1p(total), 0.0)
        items.scatter_add_(1, item, value.to(items.dtype))


@dataclass
class Calibration:
    """Temperatures fitted on the validation window: logits / T before softmax or sigmoid."""

    stage: float = 1.0
    propensity: list[float] = field(default_factory=list)  # one per propensity head; empty: all 1
    action: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


def probabilities(out: ModelOutput, calibration: Calibration) -> dict[str, Tensor]:
    """Calibrated probabilities of every head (item scores stay logits: only their order matters)."""
    temps = torch.tensor(calibration.propensity or 1.0, device=out.propensity.device)
    return {
        "stage": torch.softmax(out.stage / calibration.stage, dim=-1),
        "propensity": torch.sigmoid(out.propensity / temps),
        "action": torch.sigmoid(out.action / calibration.action),
        "items": out.items,
    }
