"""The journey map end to end: a registered model's stage of every customer at every cutoff of a features
build, the map of those stages written to a folder, and that folder in MLflow.

The model is used only through the predictor's interface (`predictor.interface.InferenceUnit`, loaded with
`predictor.registry.load_registered`): the map scores padded tokens and aggregates with `score_arrays`, and
asks for no top items (`k=0`): it needs the stage only, not a ranking of the catalogue for every row.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from features.build import padded_tokens
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.history import padded_from_table
from features.schema import STAGES
from features.snapshots import SPLITS
from predictor.interface import InferenceUnit, Predictions
from reports.journey_map.compute import JourneyMap, compute_journey_map
from reports.journey_map.render import MapPaths
from training.data import FeatureBuild


@dataclass
class ModelInputs:
    """The model's inputs of some rows of a build, without their labels (the map needs the model's stage,
    not the label's).

    Attributes:
        tokens: field -> (n, max_len) int64 tokens, left-padded.
        length: (n,) sequence lengths.
        aggregates: (n, n_aggregates) float32, in `AGGREGATE_NAMES` order.
        history: field -> (n, history_items) the whole-history item profile (`features.history`), as
            training saw it; empty for a build without one.
    """

    tokens: Mapping[str, np.ndarray]
    length: np.ndarray
    aggregates: np.ndarray
    history: Mapping[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.length)

    @classmethod
    def of(cls, table: pa.Table, max_len: int, history_items: int = 0) -> ModelInputs:
        """The inputs of some rows of a build's `rows` table."""
        n = table.num_rows
        return cls(
            tokens={name: padded_tokens(table, name, max_len).astype(np.int64) for name in TOKEN_FIELDS},
            length=table.column("seq_len").to_numpy().astype(np.int64),
            aggregates=np.column_stack(
                [table.column(a).to_numpy().astype(np.float32) for a in AGGREGATE_NAMES]
            ).reshape(n, len(AGGREGATE_NAMES)),
            history=padded_from_table(table, history_items),
        )


# A model the map can score with: a registered predictor, or a function of the inputs (a test's stand-in)
# returning `Predictions` or an (n, len(STAGES)) array of stage probabilities.
StageModel = InferenceUnit | Callable[[ModelInputs], Predictions | np.ndarray]


def _stage_proba(model: StageModel, inputs: ModelInputs) -> np.ndarray:
    """(n, len(STAGES)) stage probabilities of the inputs' rows."""
    if isinstance(model, InferenceUnit):
        out: Predictions | np.ndarray
        out = model.score_arrays(inputs.tokens, inputs.aggregates, 0, inputs.history)
    elif callable(model):
        out = model(inputs)
    else:
        name = type(model).__name__
        raise TypeError(f"cannot score stages with {name}: neither an InferenceUnit nor a function")
    proba = out.stage_proba if isinstance(out, Predictions) else out
    if proba is None:
        raise ValueError("the model predicts no stage probabilities")
    proba = np.asarray(proba, dtype=np.float64)
    if proba.shape != (len(inputs), len(STAGES)):
        raise ValueError(f"stage probabilities of shape {proba.shape}, expected {(len(inputs), len(STAGES))}")
    return proba


def stage_assignments(
    model: StageModel,
    build: FeatureBuild,
    splits: Sequence[str] = SPLITS,
    *,
    max_customers: int | None = None,
    seed: int = 0,
    chunk_rows: int = 32_768,
) -> pd.DataFrame:
    """The model's stage of every customer at every cutoff of a features build.

    Only the model's inputs are read, optionally of a seeded sample of customers (whole customers, so that
    their flows stay intact), and scored in chunks so that memory stays flat: the padded tokens of a chunk
    are its only dense copy. Scoring is the cost (the map itself takes about a second for 200,000 rows):
    on two busy CPU cores the demo's model scores one to three thousand rows a second.

    Args:
        model: a registered predictor (an `InferenceUnit`: `score_arrays`), or a function of the rows'
            `ModelInputs` returning `Predictions` or an (n, len(STAGES)) array.
        build: the features build whose rows are scored.
        splits: the splits to score (every cutoff by default: the map is about time).
        max_customers: score at most this many customers, drawn with `seed`; None: all of them.
        seed: the sample's seed.
        chunk_rows: rows scored at once.

    Returns:
        One row per (customer, cutoff): customer_id, cutoff (UTC), split, stage, and `proba_<stage>` for
        every stage, sorted by customer and cutoff.
    """
    rows = ds.dataset(str(build.path / "rows"), format="parquet")
    wanted = pc.field("split").isin(list(splits))
    if "segment" in rows.schema.names:
        # The map follows the active base (`left`: inactive for `active_within_days`), as training rows do:
        # the lapsed customers that validation and test rows also hold, for evaluation, stay out of it
        # unless a decision was logged for them (features.snapshots.BuildConfig).
        filtered = build.manifest["config"].get("active_only_splits", SPLITS)
        wanted &= (
            pc.field("split").isin(list(filtered))
            | (pc.field("segment") != "lapsed")
            | pc.field("decision_id").is_valid()
        )
    if max_customers is not None:
        # Customers in a sorted order first, so that a seed draws the same sample from any file layout.
        ids = pc.unique(rows.to_table(columns=["customer_id"], filter=wanted).column("customer_id"))
        ids = ids.take(pc.sort_indices(ids))
        if len(ids) > max_customers:
            keep = np.sort(np.random.default_rng(seed).choice(len(ids), max_customers, replace=False))
            wanted &= pc.field("customer_id").isin(ids.take(pa.array(keep)))
    columns = [
        "customer_id",
        "cutoff",
        "split",
        "seq_len",
        *(f"tok_{n}" for n in TOKEN_FIELDS),
        *AGGREGATE_NAMES,
    ]
    table = rows.to_table(columns=columns, filter=wanted)
    probas = [
        _stage_proba(model, ModelInputs.of(table.slice(lo, chunk_rows), build.max_len, build.history_items))
        for lo in range(0, table.num_rows, chunk_rows)
    ]
    proba = np.concatenate(probas) if probas else np.zeros((0, len(STAGES)))
    frame = pd.DataFrame(
        {
            "customer_id": np.asarray(table.column("customer_id").to_pylist(), dtype=object),
            "cutoff": pd.to_datetime(table.column("cutoff").cast(pa.int64()).to_numpy(), unit="us", utc=True),
            "split": np.asarray(table.column("split").to_pylist(), dtype=object),
            "stage": np.asarray(STAGES, dtype=object)[proba.argmax(axis=1)] if len(proba) else [],
        }
    )
    for j, stage in enumerate(STAGES):
        frame[f"proba_{stage}"] = proba[:, j]
    return frame.sort_values(["customer_id", "cutoff"], ignore_index=True)


def _events_of(build: FeatureBuild) -> Path | None:
    """The build's input events as its manifest records them, or None where they are no longer there."""
    recorded = Path(build.manifest["input"]["events"])
    for candidate in (recorded, build.path / recorded):
        if candidate.exists():
            return candidate
    return None


def build_journey_map(
    features: Path,
    predictor: StageModel,
    out_dir: Path,
    *,
    events: Path | None = None,
    segments: str | Path | pd.Series | dict[str, str] | None = "acquisition_channel",
    max_customers: int | None = None,
    seed: int = 0,
    k: int = 4,
    window_days: float | None = None,
    max_segments: int = 8,
    model: str = "",
) -> tuple[JourneyMap, MapPaths]:
    """Scores a features build with a model, maps the journeys and writes the page, PNGs and CSVs.

    Used by `journey map`, by every training run and by the demo.

    Args:
        features: the features build (its rows at every cutoff are scored).
        predictor: the model: a registered predictor, or a function (see `stage_assignments`).
        out_dir: where to write (journey_map.html, *.png, *.csv, summary.json).
        events: the events for touchpoints and built-in segments; default: the build's input, as its
            manifest records it (the map says so when they are gone).
        segments: see `compute_journey_map`; None: the whole base only.
        max_customers: map a seeded sample of this many customers (the page says so); None: all.
        seed: the sample's seed.
        k: the horizon of the within-k-steps conversion.
        window_days: the touchpoint window before a cutoff (default: one step).
        max_segments: segments beyond the largest ones are grouped as "other".
        model: how to name the model on the page.
    """
    build = FeatureBuild.open(Path(features))
    stages = stage_assignments(predictor, build, max_customers=max_customers, seed=seed)
    total = int(sum(build.manifest["rows"].get(s, 0) for s in SPLITS))
    notes = []
    if len(stages) < total:
        notes.append(
            f"a seeded sample (seed {seed}) of {stages['customer_id'].nunique():,} customers "
            f"({len(stages):,} of the build's {total:,} customer-cutoffs) is mapped, to keep it cheap"
        )
    events_path = Path(events) if events is not None else _events_of(build)
    if events_path is None:
        notes.append(
            f"the build's input events ({build.manifest['input']['events']}) are no longer there: "
            "touchpoints and event-based segments are left out"
        )
    meta = {
        "title": "Journey map",
        "model": model or type(predictor).__name__,
        "features": str(Path(features)),
        "events_path": str(events_path) if events_path else "none",
        "features_digest": build.manifest["input"].get("digest", ""),
        "notes": notes,
    }
    journey = compute_journey_map(
        stages, events_path, segments, k=k, window_days=window_days, max_segments=max_segments, meta=meta
    )
    return journey, journey.write(Path(out_dir))


def log_journey_map(journey: JourneyMap | MapPaths, artifact_path: str = "journey_map") -> str:
    """Logs a journey map's folder to the active MLflow run; returns the page's artifact path.

    A `JourneyMap` not yet written is written to a temporary folder first. The run gets the tag
    `journey_map` with the page's path, so that a reviewer finds it from the run's overview.
    """
    import mlflow

    if isinstance(journey, MapPaths):
        mlflow.log_artifacts(str(journey.folder), artifact_path)
    else:
        with tempfile.TemporaryDirectory(prefix="journey-map-") as tmp:
            mlflow.log_artifacts(str(journey.write(Path(tmp)).folder), artifact_path)
    page = f"{artifact_path}/journey_map.html"
    mlflow.set_tag("journey_map", page)
    return page


def fetch_journey_map(run_id: str, out_dir: Path, artifact_path: str = "journey_map") -> Path:
    """Downloads the journey map a training run logged; returns the page's local path.

    What the demo shows after training: the map of the run's own model, without scoring the build again.
    """
    import mlflow

    out_dir.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=artifact_path, dst_path=str(out_dir)
    )
    return Path(local) / "journey_map.html"


def registered_journey_map(
    features: Path, model: str, out_dir: Path, **options: Any
) -> tuple[JourneyMap, MapPaths]:
    """The journey map of a registered `journey-scorer` (an alias such as champion, or a version).

    Raises:
        ValueError: no such alias or version in the registry.
    """
    from mlflow.exceptions import MlflowException

    from predictor.registry import MODEL_NAME, configure, load_registered

    configure()
    try:
        found = (
            load_registered(MODEL_NAME, version=model)
            if model.isdigit()
            else load_registered(MODEL_NAME, alias=model)
        )
    except MlflowException as exc:
        raise ValueError(f"no {MODEL_NAME} {model!r} in the registry ({exc.message})") from exc
    label = f"{MODEL_NAME} version {found.version}" + ("" if model.isdigit() else f" (@{model})")
    return build_journey_map(features, found.pyfunc.predictor, out_dir, model=label, **options)
