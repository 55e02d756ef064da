"""The served model: loaded from the registry by alias, smoke-tested before it answers, swapped when the
alias moves, and kept when its successor is broken.

A replica never serves a model it has not seen answer. A candidate is loaded and checked before it
replaces the old one (under a lock, so that a request sees one model from start to end):

* every parameter and buffer of the network is finite, and so is each item's embedding (a model with one
  NaN item row answers most requests with NaN, which the API cannot serialise);
* it scores a real sample of customers: the online store's (when the manager is given a callable that
  returns sample events), the model's input example, a customer without events, and synthetic customers
  whose histories together cover every item of the vocabulary, in batches;
* every answer is finite and normalised: stage probabilities that sum to one, propensities and action
  outcomes in [0, 1], recommended items from the catalogue with finite probabilities.

A refused version is remembered: the manager does not download it again until the alias moves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features.columns import EventColumns
from features.encoder import EncoderConfig
from features.schema import ACTIONS, EVENT_COLUMNS, STAGES
from features.vocab import FIRST, Vocabulary
from predictor.interface import InferenceUnit, Predictions
from predictor.registry import NotAJourneyModel, load_registered, registered_version
from serving.scoring import customer_slices, score_customers

log = logging.getLogger(__name__)

# Customers scored per pass of the smoke test.
SMOKE_BATCH = 256
# A callable that returns a sample of real events (event contract columns), e.g. from the online store.
SampleEvents = Callable[[], pd.DataFrame]


class ModelRefused(RuntimeError):
    """A registered model that could not be loaded or did not pass the smoke test.

    Attributes:
        permanent: the version itself is broken (it failed the smoke test): loading it again gives the same
            answer. False for failures that may pass on a retry (the registry or the download failed).
    """

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass
class LoadedModel:
    """One registered version, ready to score."""

    name: str
    version: str
    alias: str
    run_id: str | None
    loaded_at: datetime
    predictor: InferenceUnit
    input_example: pd.DataFrame | None = None

    @property
    def items(self) -> np.ndarray:
        """Item id per vocabulary index (pad and OOV are empty strings)."""
        return self.predictor.items

    @property
    def vocab(self) -> Vocabulary:
        return self.predictor.vocab

    @property
    def encoder_config(self) -> EncoderConfig:
        return self.predictor.encoder_config

    @property
    def catalogue_size(self) -> int:
        return self.predictor.catalogue_size

    @property
    def head_sources(self) -> dict[str, str]:
        return self.predictor.head_sources


def load_version(
    name: str, version: str, alias: str, sample_events: SampleEvents | None = None
) -> LoadedModel:
    """Loads one registered version and smoke-tests it.

    Args:
        sample_events: returns real events to score in the smoke test (e.g. recent customers of the
            online store); the input example and synthetic customers are scored in any case.

    Raises:
        ModelRefused: loading failed (`permanent` False), or the smoke test refused it (`permanent` True).
    """
    try:
        found = load_registered(name, version=version)
    except NotAJourneyModel as err:
        raise ModelRefused(f"{name} version {version}: {err}", permanent=True) from err
    except Exception as err:  # any failure to load refuses the candidate; the old model keeps serving
        raise ModelRefused(f"{name} version {version}: could not load: {type(err).__name__}: {err}") from err
    loaded = LoadedModel(
        name, version, alias, found.run_id, datetime.now(UTC), found.pyfunc.predictor, found.input_example
    )
    smoke_test(loaded, sample_events=sample_events)
    return loaded


def smoke_events(model: LoadedModel, now: datetime) -> pd.DataFrame:
    """A small customer who viewed and carted the model's first catalogue item."""
    item = str(model.items[FIRST]) if len(model.items) > FIRST else None
    rows = [
        ("page_view", None, now - timedelta(hours=3)),
        ("product_view", item, now - timedelta(hours=2)),
        ("add_to_cart", item, now - timedelta(hours=1)),
    ]
    return _frame(
        ["__smoke__"] * len(rows), [t for _, _, t in rows], [e for e, _, _ in rows], [i for _, i, _ in rows]
    )


def catalogue_events(model: LoadedModel, now: datetime) -> pd.DataFrame:
    """Synthetic customers whose histories together hold every item of the vocabulary once.

    Each customer views `max_len` items (the last one carted), one a minute up to an hour before `now`, so
    every item's embedding goes through the encoder and the repeat head of some customer.
    """
    items = [str(i) for i in model.items[FIRST:]]
    per = max(1, model.encoder_config.max_len)
    customers, ts, types, ids = [], [], [], []
    for c, lo in enumerate(range(0, len(items), per)):
        chunk = items[lo : lo + per]
        for j, item in enumerate(chunk):
            customers.append(f"__smoke_catalogue_{c}__")
            ts.append(now - timedelta(hours=1) + timedelta(minutes=j * 50 / per))
            types.append("add_to_cart" if j == len(chunk) - 1 else "product_view")
            ids.append(item)
    return _frame(customers, ts, types, ids)


def _frame(
    customers: Sequence[str], ts: Sequence[datetime], types: Sequence[str], items: Sequence[str | None]
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "customer_id": pd.Series(customers, dtype=object),
            "ts": pd.to_datetime(pd.Series(ts), utc=True).astype("datetime64[us, UTC]"),
            "event_type": pd.Series(types, dtype=object),
            "channel": "web",
            "item_id": pd.Series(list(items), dtype=object),
        }
    )
    for column in EVENT_COLUMNS:
        if column not in frame:
            frame[column] = np.nan if column in ("value", "quantity") else None
    return frame[list(EVENT_COLUMNS)]


def _as_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Events from the store or an input example in the encoder's form (UTC times, object columns)."""
    out = frame.copy()
    for column in EVENT_COLUMNS:
        if column not in out:
            out[column] = np.nan if column in ("value", "quantity") else None
    out["ts"] = pd.to_datetime(out["ts"], utc=True, format="ISO8601").astype("datetime64[us, UTC]")
    for column in EVENT_COLUMNS:
        if column not in ("ts", "value", "quantity"):
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    out["customer_id"] = out["customer_id"].astype(str)
    return out[list(EVENT_COLUMNS)]


def answer_problems(pred: Predictions, n: int, n_items: int, what: str) -> list[str]:
    """What is wrong with a model's answer for `n` customers (empty: nothing)."""
    problems = []

    def rows_bad(values: np.ndarray, *, lo: float = 0.0, hi: float = 1.0) -> int:
        ok = np.isfinite(values) & (values >= lo) & (values <= hi)
        return int((~ok.reshape(len(values), -1).all(axis=1)).sum())

    stage = pred.stage_proba
    if stage is None or stage.shape != (n, len(STAGES)):
        problems.append(f"stage probabilities missing or of the wrong shape for {what}")
    else:
        bad = rows_bad(stage)
        if bad:
            problems.append(f"stage probabilities not finite or outside [0, 1] for {bad} of {n} {what}")
        else:
            off = int((np.abs(stage.sum(axis=1) - 1.0) > 1e-3).sum())
            if off:
                problems.append(f"stage probabilities do not sum to 1 for {off} of {n} {what}")
    for name, p in pred.propensity.items():
        p = np.asarray(p)
        if p.shape[0] != n or rows_bad(p):
            problems.append(f"propensity {name} not a probability for {rows_bad(p)} of {n} {what}")
    outcome = pred.action_outcome
    if outcome is None or outcome.shape != (n, len(ACTIONS)):
        problems.append(f"action outcomes missing or of the wrong shape for {what}")
    elif rows_bad(outcome):
        problems.append(f"action outcomes not finite or outside [0, 1] for {rows_bad(outcome)} of {n} {what}")
    top = pred.top_items
    if top is None or top.shape[0] != n or ((top < FIRST) | (top >= n_items)).any():
        problems.append(f"recommended items outside the catalogue for {what}")
    scores = pred.top_scores
    if scores is None or scores.shape[0] != n:
        problems.append(f"recommendation scores missing for {what}")
    else:
        bad = rows_bad(scores)
        if bad:
            problems.append(f"recommendation scores not finite or outside [0, 1] for {bad} of {n} {what}")
        elif (scores.sum(axis=1) > 1.0 + 1e-3).any():
            problems.append(f"recommendation probabilities sum above 1 for {what}")
    return problems


def smoke_samples(
    model: LoadedModel, now: datetime, sample_events: SampleEvents | None = None
) -> Iterator[tuple[str, pd.DataFrame, np.ndarray]]:
    """(what, events, customer ids) of each sample the smoke test scores."""
    if sample_events is not None:
        try:
            sample = sample_events()
        except Exception:  # the store's trouble is not the model's: the other samples still run
            log.warning("no sample of the online store's customers for the smoke test", exc_info=True)
        else:
            if sample is not None and len(sample):
                events = _as_events(sample)
                yield "customers of the online store", events, np.unique(events["customer_id"].to_numpy())
    if model.input_example is not None:
        try:
            events = _as_events(model.input_example)
        except Exception:
            log.warning("the model's input example is not in the event contract's form", exc_info=True)
        else:
            yield "customers of the input example", events, np.unique(events["customer_id"].to_numpy())
    events = pd.concat([smoke_events(model, now), catalogue_events(model, now)], ignore_index=True)
    ids = np.concatenate([["__smoke_cold_start__"], pd.unique(events["customer_id"])]).astype(object)
    yield "synthetic customers (cold start and the whole catalogue)", events, ids


def smoke_test(
    model: LoadedModel, sample_events: SampleEvents | None = None, batch: int = SMOKE_BATCH
) -> None:
    """Checks the weights, then scores the smoke samples in batches and checks every answer.

    Raises:
        ModelRefused (permanent): non-finite weights, an error, or an answer that is not finite and
            normalised; the message names every problem found.
    """
    problems = model.predictor.weight_problems()
    now = datetime.now(UTC)
    scored = 0
    for what, events, ids in smoke_samples(model, now, sample_events):
        columns = EventColumns.from_frame(events).sorted()
        first, last = customer_slices(columns, [str(c) for c in ids])
        for lo in range(0, len(ids), batch):
            chunk = [str(c) for c in ids[lo : lo + batch]]
            rows = [np.arange(first[j], last[j]) for j in range(lo, lo + len(chunk))]
            part = columns.take(np.concatenate(rows))
            try:
                # The scoring code the routes use.
                pred = score_customers(model.predictor, part, chunk, [now] * len(chunk), k=10).pred
            except Exception as err:
                problems.append(f"scoring {what} failed: {type(err).__name__}: {err}")
                break
            found = answer_problems(pred, len(chunk), len(model.items), what)
            scored += len(chunk)
            if found:
                problems.extend(found)
                break  # one batch says enough about this sample
    if problems:
        raise ModelRefused(
            f"version {model.version}: the smoke test refused it: " + "; ".join(problems), permanent=True
        )
    log.info("version %s passed the smoke test (%d customers scored)", model.version, scored)


@dataclass
class ReloadStatus:
    """What the last check of the alias found.

    Attributes:
        refused_version: the version the alias points at that the smoke test refused (not loaded again
            until the alias moves), None when the alias's version is served.
        refused_error: why it was refused.
    """

    checked_at: datetime | None = None
    error: str | None = None
    refused_version: str | None = None
    refused_error: str | None = None


@dataclass
class ModelManager:
    """Holds the served model and moves it when the registry's alias moves.

    `loader` is `load_version` (tests pass a wrapper to break a model on purpose); `sample_events`, when
    given, returns real events (e.g. recent customers of the online store) that the default loader's smoke
    test scores besides its own samples. A version the smoke test refused is remembered: `reload` does not
    load it again while the alias stays on it, and reports the remembered refusal.
    """

    name: str
    alias: str
    loader: Callable[..., LoadedModel] | None = None
    current: LoadedModel | None = None
    status: ReloadStatus = field(default_factory=ReloadStatus)
    on_change: Callable[[LoadedModel], None] | None = None
    sample_events: SampleEvents | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def alias_version(self) -> str:
        """The version the alias points at now.

        Raises:
            ModelRefused: the registry cannot be reached or the alias does not exist.
        """
        try:
            return str(registered_version(self.name, alias=self.alias).version)
        except Exception as err:
            raise ModelRefused(f"{self.name}@{self.alias}: {type(err).__name__}: {err}") from err

    def _load(self, version: str) -> LoadedModel:
        if self.loader is not None:
            return self.loader(self.name, version, self.alias)
        return load_version(self.name, version, self.alias, sample_events=self.sample_events)

    def reload(self) -> dict[str, Any]:
        """Loads the alias's version if it differs from the served one; keeps the old one on failure.

        Returns what happened: {"changed", "version", "previous", "error"}.
        """
        with self._lock:
            previous = self.current.version if self.current else None
            self.status.checked_at = datetime.now(UTC)
            version: str | None = None
            try:
                version = self.alias_version()
                if version == previous:
                    self.status.error = None
                    self.status.refused_version = self.status.refused_error = None
                    return {"changed": False, "version": version, "previous": previous, "error": None}
                if version == self.status.refused_version:
                    # Refused before, and the alias has not moved since: not downloaded again.
                    self.status.error = f"{self.status.refused_error} (refused earlier; not loaded again "
                    self.status.error += "until the alias moves)"
                    return {"changed": False, "version": previous, "previous": previous,
                            "error": self.status.error}  # fmt: skip
                started = time.perf_counter()
                loaded = self._load(version)
            except ModelRefused as err:
                self.status.error = str(err)
                if err.permanent and version is not None:
                    self.status.refused_version, self.status.refused_error = version, str(err)
                log.error(
                    "model reload refused, %s: %s",
                    "keeping version " + previous if previous else "no model",
                    err,
                )
                return {"changed": False, "version": previous, "previous": previous, "error": str(err)}
            self.current = loaded
            self.status.error = None
            self.status.refused_version = self.status.refused_error = None
            log.info(
                "serving %s version %s (%s; loaded in %.1f s)",
                self.name,
                version,
                self.alias,
                time.perf_counter() - started,
            )
        if self.on_change is not None:
            self.on_change(loaded)
        return {"changed": True, "version": version, "previous": previous, "error": None}


class PeriodicReload:
    """Checks the alias every `interval_s` seconds in a daemon thread (and retries a failed start)."""

    def __init__(self, manager: ModelManager, interval_s: float) -> None:
        self.manager = manager
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval_s <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="journey-model-reload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.manager.reload()
            except Exception:  # a crashed checker would silently stop all future reloads
                log.exception("periodic model check failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
