"""The inference unit: the network, its calibration and the vocabularies, scoring encoded customers.

This is what the registered model carries and what the service scores with. Training builds one from a
fitted `training.sequence.SequenceScorer` (`SequenceScorer.to_predictor`) and evaluates its splits with
the same forward (`forward`), so the evaluated and the served answers come from one piece of code.

Files of a saved predictor: `weights.pt` (the state dict), `predictor.json` (model config, calibration)
and `vocab.json` (the vocabularies, and so the catalogue).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS, EncodedBatch, EncoderConfig
from features.history import HISTORY_FIELDS
from features.vocab import FIRST, Vocabulary
from predictor.composite import Composite
from predictor.interface import Predictions
from predictor.model import Calibration, JourneyModel, ModelConfig, ModelOutput, probabilities

WEIGHTS, META, VOCAB = "weights.pt", "predictor.json", "vocab.json"


def rows_per_forward(n_items: int) -> int:
    """Rows per forward: the (rows, n_items) scores stay small enough for the CPU's caches (about 16 MB);
    one (2048, 100,000) block would be 800 MB and several times slower per row."""
    return max(32, min(2048, 4_000_000 // max(n_items, 1)))


@torch.inference_mode()
def raw_outputs(
    model: JourneyModel,
    tokens: Mapping[str, np.ndarray],
    aggregates: np.ndarray,
    k: int = 0,
    history: Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Logits of the stage, propensity and action heads, and the top `k` items with their probability
    under the softmax over the whole catalogue, in chunks of rows.

    Args:
        tokens: field -> (n, max_len) integer tokens, left-padded.
        aggregates: (n, n_aggregates) in `AGGREGATE_NAMES` order.
        history: field -> (n, history_items) integer whole-history item profile (`features.history`);
            None: an empty profile.
    """
    n = len(aggregates)
    step = rows_per_forward(model.config.n_items)
    chunks: dict[str, list[np.ndarray]] = {"stage": [], "propensity": [], "action": [], "top": [],
                                           "top_scores": []}  # fmt: skip
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        batch = {
            name: torch.from_numpy(np.asarray(tokens[name][lo:hi], dtype=np.int64)) for name in TOKEN_FIELDS
        }
        hist = None
        if history is not None and HISTORY_FIELDS[0] in history:
            hist = {name: torch.from_numpy(np.asarray(history[name][lo:hi], dtype=np.int64))
                    for name in HISTORY_FIELDS}  # fmt: skip
        out = model(batch, torch.from_numpy(np.asarray(aggregates[lo:hi], dtype=np.float32)), hist)
        chunks["stage"].append(out.stage.numpy())
        chunks["propensity"].append(out.propensity.numpy())
        chunks["action"].append(out.action.numpy())
        if k:
            # The top k of the raw scores, and their softmax probability over the whole catalogue.
            top = torch.topk(out.items, k, dim=1)
            norm = torch.logsumexp(out.items, dim=1, keepdim=True)
            chunks["top"].append(top.indices.numpy())
            chunks["top_scores"].append((top.values - norm).exp().numpy())
    return {key: np.concatenate(v) if v else np.zeros((0,)) for key, v in chunks.items()}


def forward(
    model: JourneyModel,
    calibration: Calibration,
    tokens: Mapping[str, np.ndarray],
    aggregates: np.ndarray,
    k: int,
    history: Mapping[str, np.ndarray] | None = None,
) -> Predictions:
    """Calibrated predictions of every head and the top `k` items (k is capped at the catalogue)."""
    config = model.config
    k = min(k, config.n_items - FIRST)
    outs = raw_outputs(model, tokens, aggregates, k, history)
    logits = ModelOutput(
        stage=torch.from_numpy(outs["stage"]),
        propensity=torch.from_numpy(outs["propensity"]),
        items=torch.zeros(len(aggregates), 1),
        action=torch.from_numpy(outs["action"]),
    )
    probs = probabilities(logits, calibration)
    prop = probs["propensity"].numpy()
    return Predictions(
        stage_proba=probs["stage"].numpy(),
        propensity={name: prop[:, j] for j, name in enumerate(config.propensity_heads)},
        top_items=outs["top"] if k else None,
        top_scores=outs["top_scores"] if k else None,
        action_outcome=probs["action"].numpy(),
    )


def aggregate_matrix(batch: EncodedBatch) -> np.ndarray:
    """The encoder's aggregates as the model's (n, n_aggregates) float32 input."""
    if not len(batch):
        return np.zeros((0, len(AGGREGATE_NAMES)), dtype=np.float32)
    return np.column_stack([batch.aggregates[a] for a in AGGREGATE_NAMES]).astype(np.float32)


@dataclass
class Predictor:
    """A fitted network with its calibration and vocabularies (an `InferenceUnit`)."""

    model: JourneyModel
    calibration: Calibration
    vocab: Vocabulary
    # Per head, the baseline that serves it where one beat the network on validation (`predictor.composite`).
    composite: Composite | None = None

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    @cached_property
    def items(self) -> np.ndarray:
        """Item id per vocabulary index (pad and OOV are empty strings)."""
        return np.array(["", "", *self.vocab.tokens["item_id"]], dtype=object)

    @property
    def encoder_config(self) -> EncoderConfig:
        return EncoderConfig(max_len=self.config.max_len, history_items=self.config.history_items)

    @property
    def catalogue_size(self) -> int:
        return len(self.items) - FIRST

    @property
    def head_sources(self) -> dict[str, str]:
        """Head -> the scorer that answers it (chosen on validation), for a composite; empty otherwise."""
        return dict(self.composite.sources) if self.composite is not None else {}

    def score(self, batch: EncodedBatch, k: int) -> Predictions:
        return self.score_arrays(batch.tokens, aggregate_matrix(batch), k, batch.history_padded)

    def score_arrays(
        self,
        tokens: Mapping[str, np.ndarray],
        aggregates: np.ndarray,
        k: int,
        history: Mapping[str, np.ndarray] | None = None,
    ) -> Predictions:
        network = forward(self.model, self.calibration, tokens, aggregates, k, history)
        return self.served(network, aggregates)

    def served(self, network: Predictions, aggregates: np.ndarray) -> Predictions:
        """The network's predictions with the composite's baseline heads in place (as they are served)."""
        return network if self.composite is None else self.composite.apply(network, aggregates)

    def weight_problems(self) -> list[str]:
        """Non-finite parameters, buffers, item embeddings or calibration temperatures."""
        problems = []
        net = self.model
        for kind, named in (("parameter", net.named_parameters()), ("buffer", net.named_buffers())):
            for name, tensor in named:
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    count = int((~torch.isfinite(tensor)).sum())
                    problems.append(f"{kind} {name} has {count:,} non-finite value(s) of {tensor.numel():,}")
        item_embedding: torch.nn.Embedding = net.embed["item_id"]  # type: ignore[assignment]
        embedding = item_embedding.weight.detach()
        rows = ~torch.isfinite(embedding[FIRST:]).all(dim=1)
        if bool(rows.any()):
            bad = np.flatnonzero(rows.numpy()) + FIRST
            names = ", ".join(str(self.items[i]) for i in bad[:3] if i < len(self.items))
            problems.append(
                f"item embeddings not finite for {len(bad):,} of {embedding.shape[0] - FIRST:,} items "
                f"(e.g. {names})"
            )
        cal = self.calibration
        temps = [cal.stage, cal.action, *cal.propensity]
        if not all(np.isfinite(t) and t > 0 for t in temps):
            problems.append(f"calibration temperatures not finite and positive: {temps}")
        return problems

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.model.state_dict(), path / WEIGHTS)
        meta = {"model_config": self.config.to_dict(), "calibration": self.calibration.to_dict()}
        (path / META).write_text(json.dumps(meta, indent=2))
        self.vocab.save(path / VOCAB)
        if self.composite is not None:
            self.composite.save(path)

    @classmethod
    def load(cls, path: Path) -> Predictor:
        meta = json.loads((path / META).read_text())
        model = JourneyModel(ModelConfig.from_dict(meta["model_config"]))
        model.load_state_dict(torch.load(path / WEIGHTS, map_location="cpu", weights_only=True))
        calibration, vocab = Calibration.from_dict(meta["calibration"]), Vocabulary.load(path / VOCAB)
        return cls(model.eval(), calibration, vocab, Composite.load(path))
