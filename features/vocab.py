"""Vocabularies: token string -> integer index, fitted on the training window only.

Index 0 is padding (and "no value", e.g. the item of a page view), index 1 is out-of-vocabulary, and the
fitted tokens start at 2, most frequent first. The closed enums of the contract (event types, channels,
actions) are vocabularies too, with their contract order, so that every build encodes them the same way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from features.schema import ACTIONS, CHANNELS, EVENT_TYPES

PAD = 0
OOV = 1
FIRST = 2

# Fields encoded through a vocabulary, in the order the encoder emits them.
ENUM_FIELDS: dict[str, tuple[str, ...]] = {
    "event_type": EVENT_TYPES,
    "channel": CHANNELS,
    "message_type": ACTIONS,
}
FITTED_FIELDS: tuple[str, ...] = ("item_id", "category")


@dataclass
class Vocabulary:
    """Token lists per field; the index of `tokens[f][i]` is `i + FIRST`.

    Attributes:
        tokens: field name -> tokens in index order.
        counts: field name -> training-window count of each token (same order), for popularity.
    """

    tokens: dict[str, list[str]]
    counts: dict[str, list[int]] = field(default_factory=dict)
    # field -> (token count when built, index of the tokens): building the index of a 100,000-item field
    # takes about 20 ms, more than scoring one customer, so a lookup reuses it.
    _indexes: dict[str, tuple[int, pd.Index]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    _positions: dict[str, tuple[int, dict[str, int]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def size(self, name: str) -> int:
        """Number of indices of a field, padding and OOV included (the embedding table size)."""
        return len(self.tokens[name]) + FIRST

    def sizes(self) -> dict[str, int]:
        return {name: self.size(name) for name in self.tokens}

    def lookup(self, name: str, values: pd.Series) -> np.ndarray:
        """Maps a column to indices: null -> PAD, unknown -> OOV.

        Categorical input (what Parquet dictionary columns read as) is mapped through its categories
        only, which keeps lookups fast on millions of rows.
        """
        tokens = self._token_index(name)
        if isinstance(values.dtype, pd.CategoricalDtype):
            cats = values.cat.categories
            table = _index(tokens, pd.Series(cats.astype(str), dtype=object))
            codes = values.cat.codes.to_numpy()
            out = np.where(codes >= 0, table[np.maximum(codes, 0)] if len(table) else OOV, PAD)
            return out.astype(np.int32)
        series = values.astype(object)
        out = _index(tokens, series)
        out[series.isna().to_numpy()] = PAD
        return out

    def lookup_array(self, name: str, values: np.ndarray) -> np.ndarray:
        """`lookup` for an object array (str or None). A few hundred values (the real-time path's few
        customers) take a dict lookup each; more go through `lookup`'s vectorised index."""
        if len(values) > 512:
            return self.lookup(name, pd.Series(values, dtype=object))
        tokens = self.tokens[name]
        hit = self._positions.get(name)
        if hit is None or hit[0] != len(tokens):
            hit = (len(tokens), {t: i + FIRST for i, t in enumerate(tokens)})
            self._positions[name] = hit
        index = hit[1]
        return np.fromiter(
            (PAD if v is None else index.get(v, OOV) for v in values), dtype=np.int32, count=len(values)
        )

    def _token_index(self, name: str) -> pd.Index:
        """The tokens of a field as an index, built once (again only if tokens were appended since)."""
        tokens = self.tokens[name]
        hit = self._indexes.get(name)
        if hit is None or hit[0] != len(tokens):
            hit = (len(tokens), pd.Index(tokens, dtype=object))
            self._indexes[name] = hit
        return hit[1]

    def to_json(self) -> str:
        return json.dumps({"tokens": self.tokens, "counts": self.counts})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        data = json.loads(text)
        return cls(tokens=data["tokens"], counts=data.get("counts", {}))

    def save(self, path: Path) -> None:
        path.write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        return cls.from_json(path.read_text())

    @classmethod
    def fit(
        cls,
        counts: dict[str, pd.Series],
        *,
        min_count: int = 1,
        max_size: dict[str, int] | None = None,
    ) -> Vocabulary:
        """Builds the vocabulary from training-window token counts.

        Args:
            counts: for each fitted field, a Series token -> count over the training window.
            min_count: tokens seen fewer times map to OOV.
            max_size: optional cap on the number of tokens per field (most frequent kept).
        """
        tokens: dict[str, list[str]] = {name: list(values) for name, values in ENUM_FIELDS.items()}
        kept: dict[str, list[int]] = {}
        for name in FITTED_FIELDS:
            c = counts.get(name, pd.Series(dtype="int64"))
            c = c[c >= min_count]
            # Most frequent first; ties broken by token so the result does not depend on input order.
            frame = pd.DataFrame({"token": c.index.astype(str), "n": c.to_numpy()})
            frame = frame.sort_values(["n", "token"], ascending=[False, True], kind="stable")
            if max_size and name in max_size:
                frame = frame.head(max_size[name])
            tokens[name] = frame["token"].tolist()
            kept[name] = frame["n"].astype(int).tolist()
        return cls(tokens=tokens, counts=kept)


def translation(source: Vocabulary, target: Vocabulary, name: str) -> np.ndarray:
    """(source.size(name),) the index in `target` of each index of `source` for one field: padding and OOV
    keep theirs, a token `target` does not hold becomes OOV. Tokens of one vocabulary read by a model of
    another (a registered model refitted on a wider vocabulary, scored on a build's rows) go through it."""
    out = np.full(source.size(name), OOV, dtype=np.int64)
    out[PAD] = PAD
    if source.tokens[name]:
        out[FIRST:] = target.lookup(name, pd.Series(source.tokens[name], dtype=object))
    return out


def _index(tokens: pd.Index, values: pd.Series) -> np.ndarray:
    """Index of each value in `tokens` (+FIRST), OOV where absent."""
    codes = tokens.get_indexer_for(pd.Index(values, dtype=object))
    return np.where(codes >= 0, codes.astype(np.int64) + FIRST, OOV).astype(np.int32)
