"""One split of a features build, in memory, as the model and every baseline read it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from features.build import load_rows, padded_tokens
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.history import padded_from_table
from features.labels import cart_abandon_target
from features.schema import ACTIONS, STAGES
from features.snapshots import population_rule
from features.vocab import FIRST, Vocabulary
from predictor.model import DEFAULT_TARGETS


def propensity_targets(labels: dict[str, Any]) -> tuple[str, ...]:
    """The propensity label columns a build with this label config writes, in a stable order.

    The cart-abandonment label comes last, where the config sets its window: a build from before the
    label (no `cart_abandon_hours` in its manifest) has no such column, and `null` turns it off.

    Args:
        labels: the `labels` section of a features manifest's config (`features.labels.LabelConfig`).
    """
    horizons = sorted({int(h) for h in labels.get("purchase_horizons", (7, 30))})
    out = (*(f"purchase_{h}d" for h in horizons), f"churn_{int(labels.get('churn_days', 30))}d")
    hours = labels.get("cart_abandon_hours")
    return out if hours is None else (*out, cart_abandon_target(int(hours)))


@dataclass
class FeatureData:
    """Inputs and labels of one split, row-aligned (sorted by customer, then cutoff).

    Attributes:
        customer_id: (n,) customer ids.
        cutoff_ms: (n,) cutoff as epoch milliseconds.
        tokens: field -> (n, max_len) int64, left-padded, as the encoder gives them.
        length: (n,) real events per sequence.
        aggregates: (n, len(AGGREGATE_NAMES)) float32, in AGGREGATE_NAMES order.
        stage: (n,) int64 index into STAGES.
        targets: name -> (n,) float32 0/1, one per propensity label column of the build; NaN where a
            row has no label (cart abandonment: no open cart), which every head then leaves out.
        next_items: list of n int arrays of vocabulary item indices (may be empty; OOV items kept as 1).
        logged_action: (n,) int64 index into ACTIONS, -1 where no decision was logged.
        logged_propensity: (n,) float64, NaN where none.
        outcome: (n,) float32, the logged decision's outcome (purchase in its window), NaN where none.
        unsubscribed: (n,) float32, unsubscribe after the logged decision, NaN where none.
        history: field -> (n, history_items) int32, the whole-history item profile
            (`features.history.HISTORY_FIELDS`), most-bought first, zero-padded; (n, 0) for a build
            from before the profile.
        segment: (n,) where each customer stands at the cutoff (`features.snapshots.SEGMENTS`), None for
            a build from before segments; the evaluation reports every metric per segment.
        split: the split's name, and `population` who has a row in it in words
            (`features.snapshots.population_rule`): the evaluation's population line.
    """

    customer_id: np.ndarray
    cutoff_ms: np.ndarray
    tokens: dict[str, np.ndarray]
    length: np.ndarray
    aggregates: np.ndarray
    stage: np.ndarray
    targets: dict[str, np.ndarray]
    next_items: list[np.ndarray]
    logged_action: np.ndarray
    logged_propensity: np.ndarray
    outcome: np.ndarray
    unsubscribed: np.ndarray
    n_items: int
    history: dict[str, np.ndarray] = field(default_factory=dict)
    segment: np.ndarray | None = None
    split: str | None = None
    population: str | None = None

    def __len__(self) -> int:
        return len(self.length)

    @property
    def has_decisions(self) -> np.ndarray:
        return self.logged_action >= 0

    def subset(self, rows: np.ndarray) -> FeatureData:
        """The rows at these positions (a boolean mask or indices)."""
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows
        return FeatureData(
            customer_id=self.customer_id[idx],
            cutoff_ms=self.cutoff_ms[idx],
            tokens={k: v[idx] for k, v in self.tokens.items()},
            length=self.length[idx],
            aggregates=self.aggregates[idx],
            stage=self.stage[idx],
            targets={k: v[idx] for k, v in self.targets.items()},
            next_items=[self.next_items[i] for i in idx],
            logged_action=self.logged_action[idx],
            logged_propensity=self.logged_propensity[idx],
            outcome=self.outcome[idx],
            unsubscribed=self.unsubscribed[idx],
            n_items=self.n_items,
            history={k: v[idx] for k, v in self.history.items()},
            segment=None if self.segment is None else self.segment[idx],
            split=self.split,
            population=self.population,
        )

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        max_len: int,
        n_items: int,
        targets: tuple[str, ...] = DEFAULT_TARGETS,
        history_items: int = 0,
    ) -> FeatureData:
        """Builds the arrays from rows written by `features.build`.

        Raises:
            ValueError: a target column is missing from the rows.
        """
        missing = [t for t in targets if t not in table.column_names]
        if missing:
            raise ValueError(f"the features rows have no label column {', '.join(missing)}")
        tokens = {name: padded_tokens(table, name, max_len).astype(np.int64) for name in TOKEN_FIELDS}
        aggregates = np.column_stack([table.column(n).to_numpy().astype(np.float32) for n in AGGREGATE_NAMES])
        stage_names = table.column("stage").to_pylist()
        index = {s: i for i, s in enumerate(STAGES)}
        action_index = {a: i for i, a in enumerate(ACTIONS)}
        actions = table.column("logged_action").fill_null("").to_pylist()
        next_col = table.column("next_items").combine_chunks()
        offsets = next_col.offsets.to_numpy()
        flat = next_col.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return cls(
            customer_id=np.asarray(table.column("customer_id").to_pylist(), dtype=object),
            cutoff_ms=table.column("cutoff").cast(pa.int64()).to_numpy() // 1000,
            tokens=tokens,
            length=table.column("seq_len").to_numpy().astype(np.int64),
            aggregates=aggregates,
            stage=np.array([index[s] for s in stage_names], dtype=np.int64),
            targets={t: _floats(table.column(t)).astype(np.float32) for t in targets},
            next_items=[flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)],
            logged_action=np.array([action_index.get(a, -1) for a in actions], dtype=np.int64),
            logged_propensity=_floats(table.column("logged_propensity")),
            outcome=_floats(table.column("outcome_purchase")).astype(np.float32),
            unsubscribed=_floats(table.column("outcome_unsubscribe")).astype(np.float32),
            n_items=n_items,
            history=padded_from_table(table, history_items),
            segment=(
                np.asarray(table.column("segment").to_pylist(), dtype=object)
                if "segment" in table.column_names
                else None
            ),
        )


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A nullable numeric or boolean column as float64 with NaN for nulls."""
    return np.array([np.nan if v is None else float(v) for v in column.to_pylist()], dtype=np.float64)


@dataclass
class FeatureBuild:
    """A features build on disk: its manifest, vocabulary and splits."""

    path: Path
    manifest: dict
    vocab: Vocabulary

    @classmethod
    def open(cls, path: Path) -> FeatureBuild:
        manifest = json.loads((path / "manifest.json").read_text())
        return cls(path=path, manifest=manifest, vocab=Vocabulary.load(path / "vocab.json"))

    @property
    def max_len(self) -> int:
        return int(self.manifest["config"]["encoder"]["max_len"])

    @property
    def n_items(self) -> int:
        """Size of the item index space (padding and OOV included); real items are FIRST .. n_items-1."""
        return self.vocab.size("item_id")

    @property
    def history_items(self) -> int:
        """Profile items per row (`features.encoder.EncoderConfig.history_items`; 0 for a build from
        before the profile)."""
        return int(self.manifest["config"]["encoder"].get("history_items", 0))

    @property
    def catalogue(self) -> np.ndarray:
        """Vocabulary indices of every recommendable item (the whole catalogue the model ranks)."""
        return np.arange(FIRST, self.n_items)

    @property
    def targets(self) -> tuple[str, ...]:
        """The propensity label columns of this build (they follow its label horizons)."""
        return propensity_targets(self.manifest["config"].get("labels", {}))

    def split(self, name: str) -> FeatureData:
        data = FeatureData.from_table(
            load_rows(self.path, name), self.max_len, self.n_items, self.targets, self.history_items
        )
        data.split = name
        data.population = population_rule(self.manifest["config"], name)
        return data
