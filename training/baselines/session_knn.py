"""Session item-KNN: items that co-occur within sessions with the items of the current session.

In session-based recommendation nearest-neighbour methods beat most neural models (Ludewig et al. 2021,
UMUAI; rn5l/session-rec, NOTES.md): the baseline a sequence model has to beat on a click stream. This is
the item-based form that issue 13 names: cosine similarity between items over the sessions they occur in
(the item columns of a binary session x item matrix), and a row's score of item j the sum over the items
i of its current session of decay ** (views after i) * sim(i, j). The session-based form (SKNN / V-SKNN,
neighbour sessions instead of neighbour items) scores the same co-occurrences through whole sessions.

Sessions are read from the rows' tokens, as every baseline reads them: an event starts a session when its
time-gap token says it came at least the session timeout after the previous one (or it is the customer's
first event). The tokens know gaps only by bucket (`features.encoder.DT_EDGES_S`), so the timeout is
rounded up to the next bucket edge (30 minutes is one). Training sessions are the training rows' current
sessions with their next item: consecutive rows of one session (prefixes of one visit, as the session
mode writes them) make one session, so a long visit counts once.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from features.encoder import DT_EDGES_S
from features.vocab import FIRST
from training.baselines.common import (
    _BLOCK_CELLS,
    _check_items,
    _Saveable,
    _with_next_items,
    rank_items,
    ranking_quality,
)
from training.baselines.item_knn import cosine_neighbours
from training.baselines.popularity import Popularity
from training.data import FeatureData
from training.interface import Predictions


def _break_token(gap_s: float) -> int:
    """The smallest time-gap token of a gap of at least `gap_s` rounded up to a bucket edge."""
    edge = int(np.searchsorted(DT_EDGES_S, gap_s, side="left"))
    return FIRST + 2 + edge


def current_session(data: FeatureData, gap_s: float) -> np.ndarray:
    """(n, max_len) bool: the events of each row's last session (after its last session start)."""
    dt = data.tokens["dt_bucket"]
    start = (dt == FIRST) | (dt >= _break_token(gap_s))
    # Position of the last start in each row (-1: the window begins inside the session).
    pos = np.arange(dt.shape[1])[None, :]
    last = np.max(np.where(start, pos, -1), axis=1)
    return (pos >= last[:, None]) & (dt > 0)  # padding has no gap token


def training_sessions(data: FeatureData, gap_s: float) -> sp.csr_matrix:
    """(n_sessions, n_items) 0/1: the items of each training session (current session + next items).

    A row continues the previous row's session when both are of one customer, its current session is
    longer, and both sessions start with the same event (item, hour, weekday and gap tokens).
    """
    n_items = data.n_items
    in_session = current_session(data, gap_s)
    item = data.tokens["item_id"]
    length = in_session.sum(axis=1)
    first = np.argmax(in_session, axis=1)
    rows = np.arange(len(data))
    head = np.stack([data.tokens[f][rows, first] for f in ("item_id", "hour", "weekday", "dt_bucket")], 1)
    same = np.zeros(len(data), dtype=bool)
    if len(data) > 1:
        same[1:] = (
            (data.customer_id[1:] == data.customer_id[:-1])
            & (length[1:] > length[:-1])
            & (head[1:] == head[:-1]).all(axis=1)
        )
    session = np.cumsum(~same) - 1
    r, c = np.nonzero(in_session & (item >= FIRST) & (item < n_items))
    next_rows = np.repeat(rows, [len(x) for x in data.next_items])
    next_items = np.concatenate(
        [np.asarray(x, dtype=np.int64) for x in data.next_items] or [np.zeros(0, dtype=np.int64)]
    )
    ok = (next_items >= FIRST) & (next_items < n_items)
    s = np.concatenate([session[r], session[next_rows[ok]]])
    i = np.concatenate([item[r, c], next_items[ok]]).astype(np.int64)
    n_sessions = int(session.max(initial=-1)) + 1
    matrix = sp.csr_matrix((np.ones(len(s)), (s, i)), shape=(n_sessions, n_items))
    matrix.data[:] = 1.0  # an item viewed twice in a session counts once
    return matrix


def session_query(data: FeatureData, n_items: int, decay: float, gap_s: float) -> sp.csr_matrix:
    """(n, n_items): each row's current-session items, decay ** (item views after it) summed per item."""
    item = data.tokens["item_id"]
    scored = current_session(data, gap_s) & (item >= FIRST) & (item < n_items)
    after: np.ndarray = np.cumsum(scored[:, ::-1], axis=1)[:, ::-1] - scored  # item views after each
    r, c = np.nonzero(scored)
    values = np.power(decay, after[r, c])
    matrix = sp.coo_matrix((values, (r, item[r, c])), shape=(len(item), n_items)).tocsr()
    matrix.sum_duplicates()
    return matrix


class SessionKNN(_Saveable):
    """Session item-KNN (module doc); the decay is chosen on the validation split, popularity fills.

    Args:
        neighbours: similar items kept per item (bounds memory at n_items x neighbours).
        decay_grid: candidate recency factors per view of the current session (1: no decay).
        gap_minutes: the session timeout (the build's `sessions.gap_minutes`).
        tune_k: cut-off of the validation NDCG that picks the decay.
    """

    name = "session_knn"

    def __init__(
        self,
        neighbours: int = 200,
        decay_grid: Sequence[float] = (1.0, 0.8, 0.5),
        gap_minutes: float = 30.0,
        tune_k: int = 20,
    ) -> None:
        self.neighbours = neighbours
        self.decay_grid = decay_grid
        self.gap_minutes = gap_minutes
        self.tune_k = tune_k

    @property
    def _gap_s(self) -> float:
        return self.gap_minutes * 60.0

    def fit(self, train: FeatureData, valid: FeatureData) -> SessionKNN:
        """Item similarity over the training sessions; the decay that ranks the validation rows best."""
        self.n_items_ = train.n_items
        self.popularity_ = Popularity((None,), tune_k=self.tune_k).fit(train, valid)
        sessions = training_sessions(train, self._gap_s)
        self.n_sessions_ = sessions.shape[0]
        self.similarity_ = cosine_neighbours(sessions, self.neighbours)
        self.decay_ = float(self.decay_grid[0])
        self.validation_: dict[str, float] = {}
        target = _with_next_items(valid)
        if len(self.decay_grid) > 1 and len(target):
            best = -1.0
            for decay in self.decay_grid:
                top = rank_items(self._scores(target, decay), self.popularity_.order_, self.tune_k)
                ndcg = ranking_quality(top, target.next_items, self.tune_k)["ndcg"]
                self.validation_[f"decay={decay}"] = ndcg
                if ndcg > best:
                    best, self.decay_ = ndcg, float(decay)
        return self

    def _scores(self, data: FeatureData, decay: float) -> sp.csr_matrix:
        return sp.csr_matrix(session_query(data, self.n_items_, decay, self._gap_s) @ self.similarity_)

    def scores(self, data: FeatureData) -> sp.csr_matrix:
        """(n, n_items) the k-NN score of every item for each row (zero where no co-occurrence)."""
        _check_items(data, self.n_items_)
        return self._scores(data, self.decay_)

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        _check_items(data, self.n_items_)
        batch = max(1, _BLOCK_CELLS // max(1, self.neighbours * data.tokens["item_id"].shape[1]))
        tops = [
            rank_items(
                self.scores(data.subset(np.arange(lo, min(lo + batch, len(data))))),
                self.popularity_.order_,
                k,
            )
            for lo in range(0, len(data), batch)
        ]
        if not tops:
            return Predictions(top_items=np.zeros((0, min(k, len(self.popularity_.order_))), dtype=np.int64))
        return Predictions(top_items=np.concatenate(tops))

    def save(self, path: Path) -> None:
        """Writes `meta.json`, the similarity (scipy sparse `.npz`) and the popularity fill."""
        fitted = {"n_items": self.n_items_, "decay": self.decay_, "n_sessions": self.n_sessions_,
                  "validation": self.validation_}  # fmt: skip
        self._write_meta(Path(path), fitted)
        sp.save_npz(Path(path) / "similarity.npz", self.similarity_)
        self.popularity_.save(Path(path) / "popularity")

    @classmethod
    def load(cls, path: Path) -> SessionKNN:
        """Reads what `save` wrote."""
        self, fitted = cls._read_meta(path)
        self.n_items_, self.decay_ = fitted["n_items"], fitted["decay"]
        self.n_sessions_, self.validation_ = fitted["n_sessions"], fitted["validation"]
        self.similarity_ = sp.csr_matrix(sp.load_npz(Path(path) / "similarity.npz"))
        self.popularity_ = Popularity.load(Path(path) / "popularity")
        return self
