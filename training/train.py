"""`journey train`, `journey evaluate` and `journey promote` as library functions.

One training run: load a features build, fit the sequence model and every baseline on the training window
(early stopping on validation), evaluate all of them with the same code on the test window, log the whole
config, the dataset and its digest, per-epoch losses, every scorer's test metrics under parallel names
(`sequence/...`, `popularity/...`), the plots, and the self-contained model, registered as
`journey-scorer` with the alias `challenger`. Under `torchrun` only rank 0 logs and registers.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from features.build import input_files, load_settings
from features.policy import RuleConfig
from training.data import FeatureBuild, FeatureData
from training.evaluate import EvaluationResult, evaluate, load_sim_truth, markdown_table, results_table
from training.interface import Predictions, Scorer
from training.model import ModelConfig
from training.registry import (
    CHAMPION,
    MODEL_NAME,
    GateDecision,
    champion_version,
    configure,
    gate,
    gate_metrics_for,
    log_scorer,
    resolve_version,
)
from training.sequence import FitConfig, SequenceScorer, model_config_for

log = logging.getLogger(__name__)

JOURNEY_MAP_SETTINGS = frozenset(
    {"enabled", "max_customers", "segments", "k", "window_days", "max_segments", "seed"}
)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; loaded from YAML plus `key=value` overrides, logged whole.

    Attributes:
        features: the features build to train on.
        shop: a simulated shop (for the true stages and policy values), if the data is simulated.
        experiment: MLflow experiment name.
        model: `training.model.ModelConfig` fields (sizes come from the build).
        fit: `training.sequence.FitConfig` fields.
        baselines: `training.baselines.BaselineConfig` fields; `enabled: false` skips them.
        ks: recommendation cut-offs.
        n_boot: bootstrap resamples for the intervals.
        register: log and register the model.
        journey_map: the journey map logged with the run (`training.journey_map.build_journey_map`
            options): `enabled` (true), `max_customers` (5,000: larger builds are mapped on a seeded
            sample, as scoring every cutoff of 20,000 customers takes minutes on two cores),
            `segments` (acquisition_channel), `k`, `window_days`, `max_segments`, `seed`.
    """

    features: str = "demo_output/features"
    shop: str | None = None
    experiment: str = "journey"
    model: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    baselines: dict[str, Any] = field(default_factory=dict)
    ks: tuple[int, ...] = (5, 10, 20, 50)
    n_boot: int = 200
    register: bool = True
    journey_map: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Checked here, not after an hour of training.
        unknown = sorted(set(self.journey_map) - JOURNEY_MAP_SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown journey_map setting(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(JOURNEY_MAP_SETTINGS))}"
            )

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        data = load_settings(path, overrides)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown train setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if "ks" in data:
            data["ks"] = tuple(data["ks"])
        return cls(**data)

    def fit_config(self) -> FitConfig:
        values = dict(self.fit)
        if "loss_weights" in values:
            values["loss_weights"] = tuple(values["loss_weights"])
        return FitConfig(**values)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed() -> bool:
    """Joins the process group when started by torchrun (gloo on CPU, NCCL on GPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    return True


@dataclass
class TrainResult:
    run_id: str | None
    version: str | None
    results: list[EvaluationResult]
    seconds: dict[str, float]


def fit_baselines(
    config: TrainConfig, train_data: FeatureData, valid: FeatureData, seconds: dict[str, float]
) -> dict[str, Scorer]:
    """Every baseline fitted on the same training window, timed."""
    fitted: dict[str, Scorer] = {}
    if not config.baselines.get("enabled", True):
        return fitted
    from training.baselines import all_baselines

    for baseline in all_baselines({k: v for k, v in config.baselines.items() if k != "enabled"}):
        started = time.perf_counter()
        baseline.fit(train_data, valid)
        seconds[baseline.name] = time.perf_counter() - started
        fitted[baseline.name] = baseline
    return fitted


def evaluate_scorers(
    scorers: dict[str, Scorer | Any],
    build: FeatureBuild,
    test: FeatureData,
    config: TrainConfig,
) -> list[EvaluationResult]:
    """The same evaluation for every scorer on the test window."""
    truth = None
    if config.shop:
        truth = load_sim_truth(Path(config.shop), build.path, "test", test)
    results = []
    for name, scorer in scorers.items():
        pred: Predictions = scorer.predict(test, k=max(config.ks))
        results.append(
            evaluate(
                pred,
                test,
                catalogue_size=len(build.catalogue),
                ks=config.ks,
                truth=truth,
                rules=RuleConfig(),
                n_boot=config.n_boot,
                name=name,
            )
        )
    return results


def train(config: TrainConfig, *, progress: bool = True) -> TrainResult:
    """Fits the model and the baselines, evaluates them on the test window, logs and registers."""
    distributed = init_distributed()
    rank = _rank()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("WORLD_SIZE", "1"))))
    build = FeatureBuild.open(Path(config.features))
    train_data, valid, test = build.split("train"), build.split("valid"), build.split("test")
    model_config: ModelConfig = model_config_for(build, **config.model)
    if rank == 0:
        configure(config.experiment)
        mlflow.start_run()
        flat: dict[str, Any] = {}
        _flatten("", asdict(config), flat)
        _flatten("model_config", model_config.to_dict(), flat)
        _flatten("fit_config", asdict(config.fit_config()), flat)
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        mlflow.log_dict(asdict(config), "config.yaml")
        mlflow.log_dict(build.manifest, "features_manifest.json")
        _log_dataset(build)
        mlflow.set_tags(
            {
                "features_digest": build.manifest["input"]["digest"],
                "world_size": os.environ.get("WORLD_SIZE", "1"),
            }
        )

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    sequence = SequenceScorer(model_config, config.fit_config(), on_epoch=on_epoch if rank == 0 else None,
                              progress=progress).fit(train_data, valid)  # fmt: skip
    seconds["sequence"] = time.perf_counter() - started
    if distributed:
        dist.barrier()
    if rank != 0:
        dist.destroy_process_group()
        return TrainResult(None, None, [], seconds)

    scorers: dict[str, Any] = {"sequence": sequence, **fit_baselines(config, train_data, valid, seconds)}
    results = evaluate_scorers(scorers, build, test, config)
    for r in results:
        mlflow.log_metrics(r.as_metrics(f"{r.name}/"))
        mlflow.log_metric(f"{r.name}/fit_seconds", seconds[r.name])
    table = results_table(results)
    mlflow.log_text(markdown_table(table), "comparison.md")
    from training.plots import evaluation_figures

    for filename, figure in evaluation_figures(results).items():
        mlflow.log_figure(figure, f"plots/{filename}")
    if config.journey_map.get("enabled", True):
        _log_journey_map(sequence, build, config.journey_map)
    version = None
    if config.register:
        example = _example_events(build)
        version = str(log_scorer(sequence, build.vocab, example))
        mlflow.set_tag("registered_version", version)
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    mlflow.end_run()
    if distributed:
        dist.destroy_process_group()
    return TrainResult(run_id, version, results, seconds)


def _log_journey_map(scorer: SequenceScorer, build: FeatureBuild, settings: dict[str, Any]) -> None:
    """Logs the journey map of the model just fitted, on its own build, to the active run.

    A reviewer then sees beside the metrics where the new model puts customers and where they stall
    (artifact `journey_map/journey_map.html`, tag `journey_map`). The cost is scoring every cutoff of the
    mapped customers once, so a large build is mapped on a seeded sample of them (the page says so).
    """
    from training.journey_map import build_journey_map, log_journey_map

    options: dict[str, Any] = {"max_customers": 5_000, "segments": "acquisition_channel", **settings}
    options.pop("enabled", None)
    run = mlflow.active_run()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="journey-map-") as tmp:
        model = f"sequence model of run {run.info.run_id}" if run else "sequence model"
        _, paths = build_journey_map(build.path, scorer, Path(tmp), model=model, **options)
        log_journey_map(paths)
    mlflow.log_metric("journey_map/seconds", time.perf_counter() - started)


def _log_dataset(build: FeatureBuild) -> None:
    """Logs the features build as the run's input dataset, with the digest of its source events."""
    import pandas as pd
    from mlflow.data.pandas_dataset import from_pandas

    manifest = build.manifest
    summary = pd.DataFrame(
        [
            {"split": split, "rows": n, "events_digest": manifest["input"]["digest"]}
            for split, n in manifest["rows"].items()
        ]
    )
    dataset = from_pandas(
        summary, source=str(build.path.resolve()), name="features", digest=manifest["input"]["digest"][:32]
    )
    mlflow.log_input(dataset, context="training")


def _example_events(build: FeatureBuild, n: int = 20) -> Any:
    """A few real events of one customer from the build's input, for the model's input example."""
    events_path = Path(build.manifest["input"]["events"])
    table = pq.read_table(input_files(events_path)[0]).slice(0, 2000).to_pandas()
    for col in table.columns:
        if hasattr(table[col], "cat"):
            table[col] = table[col].astype(object)
    first = table["customer_id"].iloc[0]
    return table[table["customer_id"] == first].head(n).reset_index(drop=True)


def promote(
    features: Path,
    candidate: str = "challenger",
    *,
    metrics: tuple[str, ...] | None = None,
    tolerance: float = 0.0,
    force: bool = False,
    n_boot: int = 0,
) -> GateDecision:
    """Moves `champion` to the candidate only if it is at least as good on the gate metrics.

    Both models are evaluated by the same code on the same test data (the given build's test window);
    the decision and its figures are logged to the `journey-promotions` experiment.

    Args:
        metrics: the gate metrics (all higher-is-better); by default `gate_metrics_for` the build's targets.

    Raises:
        ValueError: a gate metric the evaluation does not produce.
    """
    configure("journey-promotions")
    client = mlflow.MlflowClient()
    version = resolve_version(candidate)
    current = champion_version()
    build = FeatureBuild.open(features)
    test = build.split("test")
    metrics = metrics or gate_metrics_for(build.targets)

    def metrics_of(v: str) -> dict[str, float]:
        model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{v}").unwrap_python_model()
        result = evaluate(model.predict_features(test, k=10), test, catalogue_size=len(build.catalogue),
                          ks=(10,), n_boot=n_boot, name=f"v{v}")  # fmt: skip
        unknown = [m for m in metrics if m not in result.metrics]
        if unknown:
            raise ValueError(f"gate metric(s) {', '.join(unknown)} are not produced by the evaluation")
        return {m: result.metrics[m] for m in metrics}

    cand = metrics_of(version)
    champ = metrics_of(current) if current and current != version else None
    failures = gate(cand, champ, metrics, tolerance)
    promoted = not failures or force
    with mlflow.start_run(run_name=f"promote v{version}"):
        params = {"candidate": version, "champion": current or "", "tolerance": tolerance, "force": force}
        mlflow.log_params({**params, "features": str(features), "gate_metrics": ",".join(metrics)})
        mlflow.log_metrics({f"candidate/{k}": v for k, v in cand.items()})
        if champ:
            mlflow.log_metrics({f"champion/{k}": v for k, v in champ.items()})
        mlflow.set_tags(
            {"decision": "promoted" if promoted else "refused", "forced": str(force and bool(failures))}
        )
    if promoted:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        if force and failures:
            log.warning("FORCED promotion of version %s despite failing %s", version, failures)
    return GateDecision(version, current, promoted, force and bool(failures), cand, champ or {}, failures)


def comparison_markdown(results: list[EvaluationResult], metrics: tuple[str, ...] | None = None) -> str:
    """The scorers side by side, one column each, as a Markdown table."""
    return markdown_table(results_table(results, list(metrics) if metrics else None))
