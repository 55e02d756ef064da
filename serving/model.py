"""The served model: loaded from the registry by alias, smoke-tested before it answers, swapped when the
alias moves, and kept when its successor is broken.

A replica never serves a model it has not seen answer: a candidate is loaded, asked to score a small
synthetic customer, and checked (finite probabilities that sum to one, items from its catalogue). Only
then does it replace the old one, under a lock, so that a request sees one model from start to end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from features.encoder import EncoderConfig
from features.schema import EVENT_COLUMNS, STAGES
from features.vocab import FIRST
from training.registry import JourneyPyfunc
from training.sequence import SequenceScorer

log = logging.getLogger(__name__)


class ModelRefused(RuntimeError):
    """A registered model that could not be loaded or did not pass the smoke request."""


@dataclass
class LoadedModel:
    """One registered version, ready to score."""

    name: str
    version: str
    alias: str
    run_id: str | None
    loaded_at: datetime
    pyfunc: JourneyPyfunc

    @property
    def scorer(self) -> SequenceScorer:
        return self.pyfunc.scorer

    @property
    def items(self) -> np.ndarray:
        """Item id per vocabulary index (pad and OOV are empty strings)."""
        return self.pyfunc.items

    @property
    def encoder_config(self) -> EncoderConfig:
        return self.pyfunc.encoder_config

    @property
    def catalogue_size(self) -> int:
        return len(self.items) - FIRST


def load_version(name: str, version: str, alias: str) -> LoadedModel:
    """Loads one registered version and smoke-tests it.

    Raises:
        ModelRefused: loading failed, or the model's answer to the smoke request is not usable.
    """
    try:
        model = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
        pyfunc = model.unwrap_python_model()
        run_id = MlflowClient().get_model_version(name, version).run_id
    except Exception as err:  # any failure to load refuses the candidate; the old model keeps serving
        raise ModelRefused(f"{name} version {version}: could not load: {type(err).__name__}: {err}") from err
    if not isinstance(pyfunc, JourneyPyfunc):
        raise ModelRefused(f"{name} version {version}: not a journey scorer ({type(pyfunc).__name__})")
    loaded = LoadedModel(name, version, alias, run_id, datetime.now(UTC), pyfunc)
    smoke_test(loaded)
    return loaded


def smoke_events(model: LoadedModel, now: datetime) -> pd.DataFrame:
    """A small customer who viewed and carted the model's first catalogue item."""
    item = str(model.items[FIRST]) if len(model.items) > FIRST else None
    rows = [
        ("page_view", None, now - timedelta(hours=3)),
        ("product_view", item, now - timedelta(hours=2)),
        ("add_to_cart", item, now - timedelta(hours=1)),
    ]
    frame = pd.DataFrame(
        {
            "customer_id": "__smoke__",
            "ts": pd.to_datetime([t for _, _, t in rows], utc=True),
            "event_type": [e for e, _, _ in rows],
            "channel": "web",
            "item_id": [i for _, i, _ in rows],
        }
    )
    for column in EVENT_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[list(EVENT_COLUMNS)]


def smoke_test(model: LoadedModel) -> None:
    """Scores the smoke customer and checks the answer.

    Raises:
        ModelRefused: an error, or probabilities that are not finite and normalised.
    """
    from serving.scoring import predict_customers  # the scoring code the routes use

    now = datetime.now(UTC)
    try:
        pred = predict_customers(model, smoke_events(model, now), np.array(["__smoke__"]), [now], k=3)
    except Exception as err:
        raise ModelRefused(
            f"version {model.version}: the smoke request failed: {type(err).__name__}: {err}"
        ) from err
    problems = []
    stage = pred.stage_proba
    if stage is None or stage.shape != (1, len(STAGES)) or not np.isfinite(stage).all():
        problems.append("stage probabilities missing or not finite")
    elif abs(float(stage.sum()) - 1.0) > 1e-3:
        problems.append(f"stage probabilities sum to {float(stage.sum()):.4f}")
    for name, p in pred.propensity.items():
        if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
            problems.append(f"propensity {name} not a probability")
    outcome = pred.action_outcome
    if outcome is None or not np.isfinite(outcome).all():
        problems.append("action outcomes missing or not finite")
    top = pred.top_items
    if top is None or top.shape[0] != 1 or (top < FIRST).any() or (top >= len(model.items)).any():
        problems.append("recommended items outside the catalogue")
    if problems:
        raise ModelRefused(
            f"version {model.version}: the smoke request's answer is unusable: " + "; ".join(problems)
        )


@dataclass
class ReloadStatus:
    """What the last check of the alias found."""

    checked_at: datetime | None = None
    error: str | None = None
    refused_version: str | None = None


@dataclass
class ModelManager:
    """Holds the served model and moves it when the registry's alias moves.

    `loader` is `load_version` (tests pass a wrapper to break a model on purpose).
    """

    name: str
    alias: str
    loader: Callable[[str, str, str], LoadedModel] = load_version
    current: LoadedModel | None = None
    status: ReloadStatus = field(default_factory=ReloadStatus)
    on_change: Callable[[LoadedModel], None] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def alias_version(self) -> str:
        """The version the alias points at now.

        Raises:
            ModelRefused: the registry cannot be reached or the alias does not exist.
        """
        try:
            return str(MlflowClient().get_model_version_by_alias(self.name, self.alias).version)
        except Exception as err:
            raise ModelRefused(f"{self.name}@{self.alias}: {type(err).__name__}: {err}") from err

    def reload(self) -> dict[str, Any]:
        """Loads the alias's version if it differs from the served one; keeps the old one on failure.

        Returns what happened: {"changed", "version", "previous", "error"}.
        """
        with self._lock:
            previous = self.current.version if self.current else None
            self.status.checked_at = datetime.now(UTC)
            try:
                version = self.alias_version()
                if version == previous:
                    self.status.error = None
                    return {"changed": False, "version": version, "previous": previous, "error": None}
                started = time.perf_counter()
                loaded = self.loader(self.name, version, self.alias)
            except ModelRefused as err:
                self.status.error = str(err)
                log.error(
                    "model reload refused, %s: %s",
                    "keeping version " + previous if previous else "no model",
                    err,
                )
                return {"changed": False, "version": previous, "previous": previous, "error": str(err)}
            self.current = loaded
            self.status.error = None
            self.status.refused_version = None
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
