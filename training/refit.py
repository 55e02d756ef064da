"""The refit before registration: the vocabulary up to the last labelled cutoff, the model fine-tuned on
every labelled row.

Model selection and the evaluation use a vocabulary fitted before the first validation cutoff, so that no
item of their own windows is known to them. The registered model has no such reason to stay blind: items
launched after that date and bought before the last labelled cutoff would otherwise never be recommended
(on UCI Online Retail, with a 70-day horizon, 15 % of the items bought in the test window). So, after the
gate and before registration (`training.train.train`, when `refit.enabled`):

1. the feature job runs again on the same events with `vocab_until: last_cutoff` (`features.snapshots.
   BuildConfig`): the same rows, tokenised with the wider vocabulary;
2. the selected network's item and category tables are widened to it (`widen`): every known token keeps
   its trained row; a new item starts from the mean embedding and bias of the known items of its category
   (of all known items where its category has none), so a cold item is reachable through its category;
3. it is fine-tuned on every labelled row (training, validation and test) for `refit.epochs` epochs at
   `refit.lr_scale` times the learning rate; the temperatures fitted on validation during selection stay.

What was evaluated and gated is the selected model; what is registered is the same model, refitted.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import torch
from torch.utils.data import ConcatDataset, DataLoader

from features.build import build_features, input_files
from features.snapshots import BuildConfig
from features.vocab import FIRST, Vocabulary
from predictor.model import JourneyModel, ModelConfig
from training.config import TrainConfig
from training.data import FeatureBuild
from training.sequence import RowDataset, SequenceScorer, model_config_for

log = logging.getLogger(__name__)


def refit_build(build: FeatureBuild, out: Path, progress: bool = False) -> FeatureBuild:
    """The same features build again with the vocabulary fitted up to the last labelled cutoff."""
    manifest = build.manifest
    config = BuildConfig.from_dict({**manifest["config"], "vocab_until": "last_cutoff"})
    decisions = manifest["input"].get("decisions")
    build_features(
        Path(manifest["input"]["events"]),
        out,
        config,
        decisions=Path(decisions) if decisions else None,
        progress=progress,
    )
    return FeatureBuild.open(out)


def item_categories(events: Path, vocab: Vocabulary) -> np.ndarray:
    """(n_items,) the category index (in `vocab`) of each item index, its last known category; 0 where an
    item has none."""
    table = ds.dataset([str(f) for f in input_files(events)], format="parquet").to_table(
        columns=["item_id", "category"]
    )
    frame = table.to_pandas()
    frame = frame[frame["item_id"].notna() & frame["category"].notna()]
    last = (
        frame.astype({"item_id": object, "category": object})
        .groupby("item_id", sort=False)["category"]
        .last()
    )
    out = np.zeros(vocab.size("item_id"), dtype=np.int64)
    if len(last):
        items = vocab.lookup("item_id", last.index.to_series().astype(object))
        cats = vocab.lookup("category", last.astype(object))
        known = items >= FIRST
        out[items[known]] = cats[known]
    return out


def _rows_of(old: Vocabulary, new: Vocabulary, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(new indices, old indices) of the tokens of a field that both vocabularies hold (pad and OOV too)."""
    position = {t: i + FIRST for i, t in enumerate(old.tokens[name])}
    new_idx, old_idx = list(range(FIRST)), list(range(FIRST))
    for i, token in enumerate(new.tokens[name]):
        j = position.get(token)
        if j is not None:
            new_idx.append(i + FIRST)
            old_idx.append(j)
    return np.asarray(new_idx), np.asarray(old_idx)


def widen(
    model: JourneyModel, config: ModelConfig, old: Vocabulary, new: Vocabulary, category_of: np.ndarray
) -> JourneyModel:
    """A copy of `model` sized for `config` (the wider vocabulary `new`): every parameter copied, the rows of
    item- and category-indexed tables moved to their tokens' new indices, and new items initialised from
    the known items of their category (`category_of`: category index per new item index).
    """
    sizes = {"item_id": (old.size("item_id"), new.size("item_id")),
             "category": (old.size("category"), new.size("category"))}  # fmt: skip
    rows = {name: _rows_of(old, new, name) for name in sizes}
    wide = JourneyModel(config)
    state = wide.state_dict()
    with torch.no_grad():
        for key, value in model.state_dict().items():
            target = state[key]
            if target.shape == value.shape:
                target.copy_(value)
                continue
            field = next(
                (n for n, (o, w) in sizes.items() if value.shape[0] == o and target.shape[0] == w), None
            )
            if field is None or target.shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"refit: cannot widen {key} from {tuple(value.shape)} to {tuple(target.shape)}"
                )
            new_idx, old_idx = rows[field]
            target.copy_(
                _filled(value, target.shape[0], new_idx, old_idx, category_of if field == "item_id" else None)
            )
    wide.load_state_dict(state)
    return wide


def _filled(
    value: torch.Tensor, size: int, new_idx: np.ndarray, old_idx: np.ndarray, category_of: np.ndarray | None
) -> torch.Tensor:
    """The rows of `value` at their new indices; the other rows from the mean of the known rows of the
    same category (items), or of all known rows."""
    out = torch.empty((size, *value.shape[1:]), dtype=value.dtype)
    known_rows = value[torch.from_numpy(old_idx[FIRST:])] if len(old_idx) > FIRST else value[FIRST:]
    out[:] = known_rows.mean(dim=0) if len(known_rows) else 0.0
    out[torch.from_numpy(new_idx)] = value[torch.from_numpy(old_idx)]
    if category_of is not None and len(new_idx) > FIRST:
        fresh = np.setdiff1d(np.arange(FIRST, size), new_idx)
        known_items = new_idx[FIRST:]
        for cat in np.unique(category_of[fresh]):
            if cat < FIRST:
                continue
            peers = known_items[category_of[known_items] == cat]
            if len(peers):
                out[torch.from_numpy(fresh[category_of[fresh] == cat])] = out[torch.from_numpy(peers)].mean(
                    dim=0
                )
    return out


def refit_for_registration(
    sequence: SequenceScorer, build: FeatureBuild, config: TrainConfig, progress: bool = False
) -> tuple[SequenceScorer, Vocabulary]:
    """The selected network with the vocabulary up to the last labelled cutoff, fine-tuned on every
    labelled row; and that vocabulary. See the module docstring."""
    work = Path(tempfile.mkdtemp(prefix="journey-refit-"))
    try:
        wide_build = refit_build(build, work / "features", progress)
        model_config = replace(
            model_config_for(wide_build, **config.model.model_dump()), targets=sequence.model_config.targets
        )
        category_of = item_categories(Path(build.manifest["input"]["events"]), wide_build.vocab)
        model = widen(sequence.model_, model_config, build.vocab, wide_build.vocab, category_of)
        fitted = SequenceScorer(model_config, sequence.fit_config, progress=progress)
        fitted.stage_weight_ = sequence.stage_weight_
        fitted.calibration_ = sequence.calibration_
        fitted.history_ = list(sequence.history_)
        fit = sequence.fit_config
        rows: ConcatDataset[dict[str, torch.Tensor]] = ConcatDataset(
            [
                RowDataset(wide_build.split(s), fit.max_next_items, model_config.targets)
                for s in ("train", "valid", "test")
            ]
        )
        loader = DataLoader(rows, batch_size=fit.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(fit.seed))  # fmt: skip
        optimiser = torch.optim.AdamW(model.parameters(), lr=fit.lr * config.refit.lr_scale,
                                      weight_decay=fit.weight_decay)  # fmt: skip
        constant = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda _: 1.0)
        torch.manual_seed(fit.seed)
        for epoch in range(config.refit.epochs):
            loss, _, _ = fitted._train_epoch(model, loader, optimiser, constant, torch.device("cpu"), epoch)
            log.info("refit epoch %d on %d labelled rows: loss %.4f", epoch, len(rows), loss)
        fitted.model_ = model.eval()
        return fitted, wide_build.vocab
    finally:
        shutil.rmtree(work, ignore_errors=True)
