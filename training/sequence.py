"""Fitting the sequence model behind the `Scorer` interface: the training loop and the calibration.

Prediction is the predictor's (`predictor.predictor.forward`), so a split is evaluated with the code
that serves; `to_predictor` gives the inference unit that the registry logs.

The loop takes the model, loss and optimiser as arguments of its parts; it runs in one process or under
`torchrun` as DDP (gloo on CPU, NCCL on GPUs), where every rank evaluates the whole validation window so
that all ranks take the same early-stopping decision.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from features.encoder import TOKEN_FIELDS
from features.history import HISTORY_FIELDS
from features.schema import ACTIONS, STAGES
from features.vocab import FIRST, Vocabulary
from predictor.model import JourneyModel, ModelConfig, ModelOutput
from predictor.predictor import Predictor, forward, raw_outputs
from training.budget import Checkpoints, deadline, epoch_seed, lr_schedule, past, resume
from training.data import FeatureData
from training.interface import Predictions
from training.temperature import temperatures

log = logging.getLogger(__name__)
NO_SEND = ACTIONS.index("no_send")


@dataclass(frozen=True)
class FitConfig:
    """Optimisation settings.

    Attributes:
        max_epochs: upper bound; early stopping on the validation loss usually stops sooner.
        patience: epochs without validation improvement before stopping.
        max_train_rows: sample at most this many training rows (0: all), seeded.
        max_next_items: relevant next items per row used by the item loss.
        ipw_clip: cap on 1 / logged propensity in the action-outcome loss.
        loss_weights: stage, propensity, items, action.
        stage_class_power: the stage loss weighs each stage by (1 / its share of the training rows) to
            this power, scaled to mean 1 over the rows (0: unweighted). Lapsed customers are most rows of a
            shop, so an unweighted loss learns to call the short stages (decision, awareness) rarely;
            weights trade a little accuracy for a better macro-F1, and the stage probabilities then lean
            toward the short stages (temperature scaling does not undo that).
        threads: torch, LightGBM and BLAS threads of a training run (0: `training.budget.threads()`, the
            free cores of this process; the environment variable JOURNEY_THREADS, if set, before that).
            Read by `training.train.train`; a `SequenceScorer` alone uses the process's settings.
        time_budget_s: stop at the first batch boundary after this many seconds of the fit (None: no
            budget), then keep the best validation state as usual. The validation pass of that last
            (partial) epoch and the calibration come on top.
        checkpoint_dir: where the best state so far is written (`training.budget.Checkpoints`); None: a
            temporary folder, removed when the fit ends normally, kept when it is interrupted.
        resume_from: a checkpoint (or its folder) to continue from: its weights, optimiser and schedule
            state, epoch, best validation loss and history; `max_epochs` still counts from the first epoch.
        lr_warmup_epochs, lr_decay_epochs, lr_min_ratio: the schedule (`training.budget.lr_schedule`):
            linear warmup, then a cosine down to `lr * lr_min_ratio` at `lr_decay_epochs`, then flat; in
            epochs of the data, so that it keeps its shape whatever `max_epochs` or the time budget. The
            horizon defaults to the default `max_epochs`.
    """

    max_epochs: int = 8
    patience: int = 2
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_train_rows: int = 0
    max_next_items: int = 10
    ipw_clip: float = 20.0
    # The item loss (a softmax over the catalogue, several nats) would otherwise drown the other heads'
    # gradients; in exploratory runs 0.25 helped the stage and propensity heads and left Recall@10 as it was.
    loss_weights: tuple[float, float, float, float] = (1.0, 1.0, 0.25, 1.0)
    stage_class_power: float = 0.5  # chosen on the validation window (BENCHMARKS.md, stage labels)
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    time_budget_s: float | None = None
    checkpoint_dir: str | None = None
    resume_from: str | None = None
    lr_warmup_epochs: float = 0.5
    lr_decay_epochs: float = 8.0
    lr_min_ratio: float = 0.1

    def resolve_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


class RowDataset(Dataset[dict[str, Tensor]]):
    """FeatureData as tensors, one dict per row."""

    def __init__(self, data: FeatureData, max_next_items: int, targets: tuple[str, ...]) -> None:
        self.tokens = {name: torch.from_numpy(data.tokens[name]) for name in TOKEN_FIELDS}
        self.history = {name: torch.from_numpy(v.astype(np.int64)) for name, v in data.history.items()}
        self.aggregates = torch.from_numpy(data.aggregates)
        self.stage = torch.from_numpy(data.stage)
        self.targets = torch.from_numpy(np.column_stack([data.targets[t] for t in targets]))
        nxt = np.full((len(data), max_next_items), -1, dtype=np.int64)
        for i, items in enumerate(data.next_items):
            items = items[items >= FIRST][:max_next_items]
            nxt[i, : len(items)] = items
        self.next_items = torch.from_numpy(nxt)
        self.action = torch.from_numpy(data.logged_action)
        self.propensity = torch.from_numpy(np.nan_to_num(data.logged_propensity, nan=1.0))
        self.outcome = torch.from_numpy(np.nan_to_num(data.outcome, nan=0.0))
        self.unsubscribed = torch.from_numpy(np.nan_to_num(data.unsubscribed, nan=-1.0))

    def __len__(self) -> int:
        return len(self.stage)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        row = {f"tok_{n}": t[i] for n, t in self.tokens.items()}
        row.update({f"hist_{n}": t[i] for n, t in self.history.items()})
        row.update(
            aggregates=self.aggregates[i],
            stage=self.stage[i],
            targets=self.targets[i],
            next_items=self.next_items[i],
            action=self.action[i],
            propensity=self.propensity[i],
            outcome=self.outcome[i],
            unsubscribed=self.unsubscribed[i],
        )
        return row


def split_batch(
    batch: dict[str, Tensor], device: torch.device
) -> tuple[dict[str, Tensor], Tensor, dict[str, Tensor] | None]:
    """The model's inputs of a loader batch: tokens, aggregates and the item profile (None if the
    data has none)."""
    tokens = {n: batch[f"tok_{n}"].to(device) for n in TOKEN_FIELDS}
    history = None
    if f"hist_{HISTORY_FIELDS[0]}" in batch:
        history = {n: batch[f"hist_{n}"].to(device) for n in HISTORY_FIELDS}
    return tokens, batch["aggregates"].to(device), history


def journey_loss(
    out: ModelOutput, batch: dict[str, Tensor], config: FitConfig, stage_weight: Tensor | None = None
) -> tuple[Tensor, dict[str, float]]:
    """The multi-task loss: stage CE (weighted per stage by `stage_weight`, if given) + propensity BCE
    (on the labelled rows of each head) + full-catalogue softmax CE for next items +
    inverse-propensity-weighted BCE for the logged action's outcome."""
    device = out.stage.device
    w_stage, w_prop, w_items, w_action = config.loss_weights
    y = batch["stage"].to(device)
    if stage_weight is None:
        stage = F.cross_entropy(out.stage, y)
    else:
        stage_weight = stage_weight.to(device)
        stage = (F.cross_entropy(out.stage, y, reduction="none") * stage_weight[y]).mean()

    targets = batch["targets"].to(device)  # (B, n_targets); the unsubscribe head comes last
    unsub = batch["unsubscribed"].to(device)  # -1 where no send was logged
    sent = (batch["action"].to(device) >= 0) & (batch["action"].to(device) != NO_SEND) & (unsub >= 0)
    # A NaN target is no label (cart abandonment without an open cart): the mean over the labelled cells,
    # which is the plain mean when every row is labelled; an unlabelled cell gets no gradient.
    labelled = ~torch.isnan(targets)
    cells = F.binary_cross_entropy_with_logits(
        out.propensity[:, : targets.shape[1]], torch.where(labelled, targets, 0.0), reduction="none"
    )
    prop = (cells * labelled).sum() / labelled.sum().clamp(min=1)
    if sent.any():
        prop = prop + F.binary_cross_entropy_with_logits(out.propensity[sent, -1], unsub[sent])

    nxt = batch["next_items"].to(device)  # (B, M), -1 padded
    has = nxt >= 0
    items = out.items.new_zeros(())
    if has.any():
        logp = torch.log_softmax(out.items, dim=-1)
        picked = logp.gather(1, nxt.clamp(min=0))  # (B, M)
        items = -torch.where(has, picked, 0.0).sum() / has.sum()

    action = batch["action"].to(device)
    logged = action >= 0
    act = out.action.new_zeros(())
    if logged.any():
        logit = out.action[logged].gather(1, action[logged].unsqueeze(1)).squeeze(1)
        weight = (1.0 / batch["propensity"].to(device)[logged]).clamp(max=config.ipw_clip)
        bce = F.binary_cross_entropy_with_logits(logit, batch["outcome"].to(device)[logged], reduction="none")
        act = (weight * bce).sum() / weight.sum()
    total = w_stage * stage + w_prop * prop + w_items * items + w_action * act
    parts = {"stage": stage.item(), "propensity": prop.item(), "items": items.item(), "action": act.item()}
    return total, parts


def stage_class_weights(stage: np.ndarray, n_classes: int, power: float) -> Tensor | None:
    """Per-stage weights (1 / share) ** power, scaled so that the weighted rows average 1; None at power 0.

    A stage without training rows gets the largest weight of the others (it never enters the loss).
    """
    if power == 0:
        return None
    counts = np.bincount(np.asarray(stage, dtype=np.int64), minlength=n_classes).astype(np.float64)
    share = counts / max(counts.sum(), 1.0)
    weight = np.zeros(n_classes)
    seen = share > 0
    weight[seen] = share[seen] ** -power
    weight[~seen] = weight[seen].max() if seen.any() else 1.0
    weight /= max(float((share * weight).sum()), 1e-12)
    return torch.tensor(weight, dtype=torch.float32)


def _ddp() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SequenceScorer:
    """The PyTorch sequence model as a `Scorer`."""

    name = "sequence"

    def __init__(
        self,
        model_config: ModelConfig,
        fit_config: FitConfig | None = None,
        on_epoch: Callable[[int, dict[str, float]], None] | None = None,
        progress: bool = True,
    ) -> None:
        self.model_config = model_config
        self.fit_config = fit_config or FitConfig()
        self.on_epoch = on_epoch
        self.progress = progress

    # -- training -------------------------------------------------------------------------------------
    def fit(self, train: FeatureData, valid: FeatureData) -> SequenceScorer:
        """Trains on `train` until `max_epochs`, the patience on `valid`'s loss or the time budget runs out
        (`stopped_` says which), keeps the best validation state (on disk too: `FitConfig.checkpoint_dir`)
        and calibrates on `valid`. Every epoch shuffles and drops out from a seed of its own, so that a fit
        resumed from a checkpoint continues as the uninterrupted one would have."""
        cfg = self.fit_config
        started = time.perf_counter()
        deadline_at = deadline(started, cfg.time_budget_s)
        torch.manual_seed(cfg.seed)
        rank, world = _ddp()
        device = cfg.resolve_device()
        if world > 1 and device.type == "cuda":
            device = torch.device("cuda", rank % torch.cuda.device_count())
        if cfg.max_train_rows and len(train) > cfg.max_train_rows:
            rng = np.random.default_rng(cfg.seed)
            train = train.subset(np.sort(rng.choice(len(train), cfg.max_train_rows, replace=False)))
        self.stage_weight_ = stage_class_weights(train.stage, len(STAGES), cfg.stage_class_power)
        model = JourneyModel(self.model_config).to(device)
        model.agg_scale.copy_(torch.from_numpy(_agg_scale(train.aggregates)).to(device))
        net: nn.Module = model
        if world > 1:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        dataset = RowDataset(train, cfg.max_next_items, self.model_config.targets)
        sampler: DistributedSampler[dict[str, Tensor]] | None = (
            DistributedSampler(dataset, shuffle=True, seed=cfg.seed) if world > 1 else None
        )
        generator = torch.Generator().manual_seed(cfg.seed)
        loader = DataLoader(
            dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator
        )
        optimiser = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = lr_schedule(optimiser, len(loader), cfg.lr_warmup_epochs, cfg.lr_decay_epochs,
                                cfg.lr_min_ratio)  # fmt: skip
        saved = resume(cfg.resume_from, model, optimiser, scheduler) if cfg.resume_from else {}
        best, bad, first = saved.get("best", math.inf), 0, saved.get("epoch", -1) + 1
        best_state = saved.get("model")
        self.history_: list[dict[str, float]] = list(saved.get("history", []))
        self.stopped_, whole = "max_epochs", []
        checkpoints = Checkpoints(cfg.checkpoint_dir) if rank == 0 else None
        try:
            for epoch in range(first, cfg.max_epochs):
                seed = epoch_seed(cfg.seed, epoch)
                torch.manual_seed(seed)  # this epoch's dropout
                generator.manual_seed(seed)  # this epoch's order
                if sampler is not None:
                    sampler.set_epoch(epoch)
                epoch_started = time.perf_counter()
                train_loss, steps, over = self._train_epoch(net, loader, optimiser, scheduler, device, epoch,
                                                            deadline_at)  # fmt: skip
                valid_loss, parts = self._valid_loss(model, valid, device)
                record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss,
                          "epoch_seconds": time.perf_counter() - epoch_started,
                          "lr": float(scheduler.get_last_lr()[0]), "steps": steps}  # fmt: skip
                record.update({f"valid_{k}_loss": v for k, v in parts.items()})
                self.history_.append(record)
                if not over:
                    whole.append(record["epoch_seconds"])
                if rank == 0:
                    log.info("epoch %d: train %.4f valid %.4f (%.0f s)", epoch, train_loss, valid_loss,
                             record["epoch_seconds"])  # fmt: skip
                    if self.on_epoch:
                        self.on_epoch(epoch, record)
                if valid_loss < best - 1e-4:
                    best, bad = valid_loss, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if checkpoints is not None:
                        checkpoints.save(model, optimiser, scheduler, epoch=epoch, best=best,
                                         history=self.history_, fit_config=asdict(cfg))  # fmt: skip
                else:
                    bad += 1
                    if bad >= cfg.patience:
                        self.stopped_ = "patience"
                        break
                if over:
                    self.stopped_ = "budget"
                    log.info("time budget of %.0f s spent after epoch %d", cfg.time_budget_s or 0, epoch)
                    break
        except BaseException:
            if checkpoints is not None:
                checkpoints.interrupted()
            raise
        if checkpoints is not None:
            checkpoints.close()
        # Epochs of this fit that ran whole (a partial one where none did), training and validation.
        spent = whole or [h["epoch_seconds"] for h in self.history_[first:]]
        self.seconds_per_epoch_ = float(np.median(spent)) if spent else math.nan
        if best_state is not None:
            model.load_state_dict(best_state)
        self.model_ = model.to("cpu").eval()
        self.calibration_ = temperatures(self._forward_all(valid), valid, self.model_config.propensity_heads)
        return self

    def _train_epoch(
        self,
        net: nn.Module,
        loader: DataLoader[dict[str, Tensor]],
        optimiser: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        device: torch.device,
        epoch: int,
        deadline_at: float = math.inf,
    ) -> tuple[float, int, bool]:
        """One pass over `loader` (mean training loss, optimiser steps, whether it stopped on the deadline:
        at the first batch boundary past it, after one step at least)."""
        from features.progress import progress_bar

        net.train()
        total, n, steps, over = 0.0, 0, 0, False
        rank, world = _ddp()
        with progress_bar(self.progress and rank == 0, f"epoch {epoch}", total=len(loader)) as advance:
            for batch in loader:
                tokens, agg, history = split_batch(batch, device)
                loss, _ = journey_loss(net(tokens, agg, history), batch, self.fit_config, self.stage_weight_)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                optimiser.step()
                scheduler.step()
                total += loss.item() * len(batch["stage"])
                n += len(batch["stage"])
                steps += 1
                advance(1)
                if past(deadline_at, device):
                    over = True
                    break
        if world > 1:
            t = torch.tensor([total, n], dtype=torch.float64, device=device)
            dist.all_reduce(t)
            total, n = float(t[0]), int(t[1])
        return total / max(n, 1), steps, over

    @torch.inference_mode()
    def _valid_loss(
        self, model: JourneyModel, valid: FeatureData, device: torch.device
    ) -> tuple[float, dict[str, float]]:
        model.eval()
        loader = DataLoader(
            RowDataset(valid, self.fit_config.max_next_items, self.model_config.targets), batch_size=2048
        )
        total, n = 0.0, 0
        parts: dict[str, float] = {}
        for batch in loader:
            tokens, agg, history = split_batch(batch, device)
            loss, p = journey_loss(model(tokens, agg, history), batch, self.fit_config, self.stage_weight_)
            size = len(batch["stage"])
            total += loss.item() * size
            n += size
            for k, v in p.items():
                parts[k] = parts.get(k, 0.0) + v * size
        return total / max(n, 1), {k: v / max(n, 1) for k, v in parts.items()}

    # -- prediction ---------------------------------------------------------------------------------
    def _forward_all(self, data: FeatureData, k: int = 0) -> dict[str, np.ndarray]:
        return raw_outputs(self.model_, data.tokens, data.aggregates, k, data.history)

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        return forward(self.model_, self.calibration_, data.tokens, data.aggregates, k, data.history)

    def to_predictor(self, vocab: Vocabulary) -> Predictor:
        """The fitted network, its calibration and the build's vocabularies: what is registered."""
        return Predictor(self.model_, self.calibration_, vocab)


def _agg_scale(aggregates: np.ndarray) -> np.ndarray:
    """Per-aggregate scale (median of non-zero absolute values) for the model's log transform."""
    scale = np.ones(aggregates.shape[1], dtype=np.float32)
    for j in range(aggregates.shape[1]):
        nz = np.abs(aggregates[:, j])
        nz = nz[nz > 0]
        if len(nz):
            scale[j] = max(float(np.median(nz)), 1e-3)
    return scale


def model_config_for(build: Any, **overrides: Any) -> ModelConfig:
    """A model config sized for a features build (`training.data.FeatureBuild`)."""
    from features.encoder import AGGREGATE_NAMES

    return ModelConfig(
        token_sizes={k: int(v) for k, v in build.manifest["token_sizes"].items()},
        n_items=build.n_items,
        n_aggregates=len(AGGREGATE_NAMES),
        max_len=build.max_len,
        targets=build.targets,
        history_items=getattr(build, "history_items", 0),
        **overrides,
    )
