"""Where registered models live and the one way to load one by version or alias.

Training registers into this store (`training.registry`); the service and the reports load from it here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient

from predictor.pyfunc import JourneyPyfunc

log = logging.getLogger(__name__)

MODEL_NAME = "journey-scorer"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the project's SQLite store (artifacts under mlruns/)."""
    return os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)


def configure(experiment: str | None = None) -> None:
    """Points MLflow at the store and selects the experiment; called by commands, never at import.

    With a SQLite store, artifacts live beside the database file (for the default, in mlruns/).
    """
    uri = tracking_uri()
    artifacts: Path | None = None
    if uri.startswith("sqlite:///"):
        artifacts = Path(uri.removeprefix("sqlite:///")).resolve().parent
        artifacts.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if experiment:
        if artifacts is not None and mlflow.get_experiment_by_name(experiment) is None:
            mlflow.create_experiment(experiment, artifact_location=(artifacts / experiment).as_uri())
        mlflow.set_experiment(experiment)


def model_uri(name: str, *, version: str | None = None, alias: str | None = None) -> str:
    """`models:/name/version` or `models:/name@alias` (exactly one of the two)."""
    if (version is None) == (alias is None):
        raise ValueError("give a version or an alias, not both or neither")
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"


@dataclass
class Registered:
    """A registered version, loaded.

    Attributes:
        input_example: the events the model was logged with (None when it cannot be read).
    """

    name: str
    version: str
    run_id: str | None
    pyfunc: JourneyPyfunc
    input_example: pd.DataFrame | None


class NotAJourneyModel(TypeError):
    """The registered model is some other pyfunc."""


def registered_version(
    name: str = MODEL_NAME, *, version: str | None = None, alias: str | None = None
) -> Any:
    """The registry's record of a version (`mlflow.entities.model_registry.ModelVersion`: `.version`,
    `.run_id`), by number or alias (exactly one of the two): the one lookup every caller goes through.

    Raises:
        MlflowException: no such version or alias, or the registry cannot be read.
    """
    model_uri(name, version=version, alias=alias)  # checks that exactly one is given
    client = MlflowClient()
    if version is not None:
        return client.get_model_version(name, version)
    return client.get_model_version_by_alias(name, str(alias))


def load_registered(
    name: str = MODEL_NAME, *, version: str | None = None, alias: str | None = None
) -> Registered:
    """Loads a registered version (by number or alias) as our pyfunc, with its run and input example.

    Raises:
        NotAJourneyModel: the version is not a journey scorer.
        Exception: whatever MLflow raises when the registry or the artifacts cannot be read.
    """
    model = mlflow.pyfunc.load_model(model_uri(name, version=version, alias=alias))
    pyfunc = model.unwrap_python_model()
    if not isinstance(pyfunc, JourneyPyfunc):
        raise NotAJourneyModel(f"{name}: not a journey scorer ({type(pyfunc).__name__})")
    found = registered_version(name, version=version, alias=alias)
    return Registered(name, str(found.version), found.run_id, pyfunc, _input_example(model))


def _input_example(model: Any) -> pd.DataFrame | None:
    """The events the model was logged with as its input example, if they can be read."""
    try:
        example = model.input_example
    except Exception:  # an example that cannot be read is not a reason to refuse the model
        log.warning("the model's input example could not be read", exc_info=True)
        return None
    return example if isinstance(example, pd.DataFrame) and len(example) else None
