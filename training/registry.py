"""MLflow: the self-contained pyfunc model, registration as `journey-scorer`, and the promotion gate.

The logged model carries everything it needs to score raw events: the weights, the vocabularies (and so
the catalogue), the label maps, the configs, and the code of `features` and `training` (code_paths), so
that the service loads it without importing `training` itself.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel

import features
import training
from features.encoder import EncoderConfig, encode
from features.schema import ACTIONS, EVENT_COLUMNS, STAGES
from features.vocab import Vocabulary
from training.data import FeatureData, from_encoded
from training.interface import Predictions
from training.sequence import SequenceScorer

log = logging.getLogger(__name__)

MODEL_NAME = "journey-scorer"
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
GATE_METRICS: tuple[str, ...] = (
    "stage/macro_f1",
    "purchase_7d/roc_auc",
    "churn_30d/roc_auc",
    "rec/ndcg_at_10",
)


def gate_metrics_for(targets: tuple[str, ...]) -> tuple[str, ...]:
    """The gate metrics of a build with these propensity targets: stage macro-F1, the shortest purchase
    horizon's and the churn target's ROC AUC, NDCG@10 (`GATE_METRICS` for the default labels)."""
    purchase = [t for t in targets if t.startswith("purchase_")]
    churn = [t for t in targets if t.startswith("churn_")]
    picked = [f"{t}/roc_auc" for t in purchase[:1] + churn[:1]]
    return ("stage/macro_f1", *picked, "rec/ndcg_at_10")


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


class JourneyPyfunc(PythonModel):
    """Scores customers from their raw events: stage, propensities, action outcomes, top items.

    Input: events following the event contract (one or many customers). Params: `now` (ISO time of
    scoring; default: just after each customer's last event) and `k` (items to return).
    Output: one row per customer.
    """

    def load_context(self, context: Any) -> None:
        path = Path(context.artifacts["scorer"])
        self.load_from(path)

    def load_from(self, path: Path) -> None:
        self.scorer = SequenceScorer.load(path)
        self.vocab = Vocabulary.load(path / "vocab.json")
        self.items = np.array(["", ""] + self.vocab.tokens["item_id"], dtype=object)
        self.encoder_config = EncoderConfig(max_len=self.scorer.model_config.max_len)

    def predict_features(self, data: FeatureData, k: int = 50) -> Predictions:
        """Predictions on a features split (what the promotion gate evaluates)."""
        return self.scorer.predict(data, k=k)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        params = params or {}
        k = int(params.get("k", 10))
        events = model_input.copy()
        events["ts"] = pd.to_datetime(events["ts"], utc=True, format="ISO8601")
        customers = np.sort(events["customer_id"].astype(str).unique())
        if params.get("now"):
            now = pd.Series(pd.Timestamp(params["now"]), index=customers)
            now = now.dt.tz_localize("UTC") if now.dt.tz is None else now.dt.tz_convert("UTC")
        else:
            now = events.groupby(events["customer_id"].astype(str))["ts"].max() + pd.Timedelta(microseconds=1)
        cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": now.loc[customers].to_numpy()})
        batch = encode(events, cutoffs, self.vocab, self.encoder_config)
        config = self.scorer.model_config
        pred = self.scorer.predict(from_encoded(batch, customers, config.n_items, config.targets), k=k)
        return predictions_frame(customers, pred, self.items)


def predictions_frame(customers: np.ndarray, pred: Predictions, items: np.ndarray) -> pd.DataFrame:
    """One row per customer: stage, its probabilities, propensities, action outcomes, top item ids."""
    if pred.stage_proba is None or pred.action_outcome is None or pred.top_items is None:
        raise ValueError("the scorer must predict stage, action outcomes and items")
    out = pd.DataFrame({"customer_id": customers, "stage": np.array(STAGES)[pred.stage_proba.argmax(1)]})
    for j, s in enumerate(STAGES):
        out[f"p_stage_{s}"] = pred.stage_proba[:, j]
    for name, p in pred.propensity.items():
        out[f"p_{name}"] = p
    for j, a in enumerate(ACTIONS):
        out[f"p_outcome_{a}"] = pred.action_outcome[:, j]
    out["top_items"] = [" ".join(items[row]) for row in pred.top_items]
    return out


def _requirements() -> list[str]:
    names = ["torch", "numpy", "pandas", "pyarrow", "mlflow", "pyyaml", "pydantic", "rich"]
    reqs = []
    for n in names:
        try:
            version = importlib.metadata.version(n).split("+")[0]
            reqs.append(f"{n}=={version}")
        except importlib.metadata.PackageNotFoundError:
            reqs.append(n)
    return reqs


def log_scorer(scorer: SequenceScorer, vocab: Vocabulary, example_events: pd.DataFrame) -> Any:
    """Logs the sequence model as a pyfunc in the active run and registers it; returns the version."""
    work = Path(tempfile.mkdtemp(prefix="journey-model-"))
    try:
        scorer.save(work / "scorer")
        vocab.save(work / "scorer" / "vocab.json")
        (work / "scorer" / "labels.json").write_text(
            json.dumps(
                {
                    "stages": list(STAGES),
                    "actions": list(ACTIONS),
                    "propensities": list(scorer.model_config.propensity_heads),
                }
            )
        )
        model = JourneyPyfunc()
        model.load_from(work / "scorer")
        example = example_events[list(EVENT_COLUMNS)].copy()
        example["ts"] = example["ts"].astype(str)
        params = {"now": "", "k": 10}
        output = model.predict(None, example, params={"k": 10})
        signature = infer_signature(example, output, params=params)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts={"scorer": str(work / "scorer")},
            code_paths=[str(Path(features.__file__).parent), str(Path(training.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=MODEL_NAME,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = info.registered_model_version
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHALLENGER, str(version))
    return version


def load_by_alias(alias: str = CHAMPION) -> JourneyPyfunc:
    """The registered model behind an alias, as our pyfunc class."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{alias}")
    python_model: JourneyPyfunc = model.unwrap_python_model()
    return python_model


@dataclass
class GateDecision:
    candidate: str
    champion: str | None
    promoted: bool
    forced: bool
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    failures: list[str]

    def summary(self) -> str:
        lines = [f"candidate version {self.candidate} vs champion {self.champion or '(none)'}"]
        for m in self.candidate_metrics:
            champ = self.champion_metrics.get(m)
            lines.append(
                f"  {m}: {self.candidate_metrics[m]:.4f}" + (f" vs {champ:.4f}" if champ is not None else "")
            )
        if self.forced and self.failures:
            lines.append("FORCED: promoted although the gate failed on " + ", ".join(self.failures))
        elif self.promoted:
            lines.append(f"promoted: alias {CHAMPION} -> version {self.candidate}")
        else:
            lines.append("refused: worse on " + ", ".join(self.failures))
        return "\n".join(lines)


def gate(
    candidate: Mapping[str, float],
    champion: Mapping[str, float] | None,
    metrics: tuple[str, ...],
    tolerance: float,
) -> list[str]:
    """The gate metrics on which the candidate is worse than the champion (all are higher-is-better)."""
    if champion is None:
        return []
    return [m for m in metrics if candidate[m] < champion[m] - tolerance]


def resolve_version(candidate: str) -> str:
    """A version number, or the version behind an alias."""
    if candidate.isdigit():
        return candidate
    return str(MlflowClient().get_model_version_by_alias(MODEL_NAME, candidate).version)


def champion_version() -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    except MlflowException:
        return None
