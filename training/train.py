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
import numpy as np
import pyarrow.parquet as pq
import torch
import torch.distributed as dist
import yaml

from features.build import input_files
from features.config import load_settings
from features.policy import RuleConfig, load_rules
from predictor.model import ModelConfig
from predictor.registry import load_registered
from training.data import FeatureBuild, FeatureData
from training.evaluate import EvaluationResult, evaluate, load_sim_truth, markdown_table, results_table
from training.interface import Predictions, Scorer
from training.registry import (
    CHAMPION,
    MODEL_NAME,
    GateConfig,
    GateDecision,
    champion_version,
    check_gate,
    configure,
    gate_metrics_for,
    log_scorer,
    resolve_version,
)
from training.sequence import FitConfig, SequenceScorer, model_config_for

log = logging.getLogger(__name__)

JOURNEY_MAP_SETTINGS = frozenset(
    {"enabled", "max_customers", "segments", "k", "window_days", "max_segments", "seed"}
)


# The service's settings: the offline evaluation applies its rules (`TrainConfig.rules`).
SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve.yaml"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run needs; loaded from YAML plus `key=value` overrides, logged whole.

    Attributes:
        features: the features build to train on.
        shop: a simulated shop (for the true stages and policy values), if the data is simulated.
        experiment: MLflow experiment name.
        model: `predictor.model.ModelConfig` fields (sizes come from the build).
        fit: `training.sequence.FitConfig` fields.
        baselines: `training.baselines.BaselineConfig` fields; `enabled: false` skips them.
        ks: recommendation cut-offs.
        n_boot: bootstrap resamples for the intervals.
        register: log and register the model (only if it passes the gate: see `gate`).
        gate: what the model must reach to be registered, and to be promoted later
            (`training.registry.GateConfig` fields: `floors`, `baseline_tolerance`,
            `champion_tolerance`, `compare_baselines`, `metrics`); checked here against the floors and
            the baselines of this run on the same test rows.
        rules: the serve settings file whose `rules:` section the offline policy evaluation applies
            (consent, fatigue, eligibility), so that it judges decisions as the service will; None: the
            project's `configs/serve.yaml`.
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
    gate: dict[str, Any] = field(default_factory=dict)
    rules: str | None = None

    def __post_init__(self) -> None:
        # Checked here, not after an hour of training.
        self.gate_config()
        self.rule_config()
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

    def rule_config(self) -> RuleConfig:
        """The business rules of the offline evaluation: the service's own file (see `rules`)."""
        return load_rules(Path(self.rules) if self.rules else SERVE_CONFIG)

    def gate_config(self) -> GateConfig:
        return GateConfig.from_dict(self.gate)

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
    """What a training run made.

    Attributes:
        version: the registered version, None when nothing was registered (`register: false`, or the
            model failed the gate and was not forced).
        gate_failures: the gate's reasons to refuse the model, one line each ([]: it passed).
        forced: registered although the gate failed.
    """

    run_id: str | None
    version: str | None
    results: list[EvaluationResult]
    seconds: dict[str, float]
    gate_failures: list[str] = field(default_factory=list)
    forced: bool = False

    @property
    def refused(self) -> bool:
        """The model failed the gate and was therefore not registered."""
        return bool(self.gate_failures) and self.version is None


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
    rules = config.rule_config()  # read once: every scorer is judged by the same rules
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
                rules=rules,
                n_boot=config.n_boot,
                name=name,
            )
        )
    return results


def train(config: TrainConfig, *, progress: bool = True, force_register: bool = False) -> TrainResult:
    """Fits the model and the baselines, evaluates them on the test window, logs, and registers the model
    if it passes the gate.

    The gate (`config.gate`) refuses a model with a gate metric that is NaN (a head without labelled test
    rows), below its floor, or below the best baseline of this run on the same test rows by more than the
    tolerance. A refused model is not registered (the alias `challenger` does not move): the run keeps
    every metric, the tag `gate` (passed / refused / forced) and the tag `gate_reasons`, one line each.

    Args:
        force_register: register even if the gate fails (tag `gate` = forced, and a warning).
    """
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
        mlflow.log_dict(config.rule_config().to_dict(), "rules.yaml")  # what the policy evaluation applied
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
    # What `promote` needs to find these baselines again, and to know they were scored on the same rows.
    mlflow.set_tags({"baselines": ",".join(r.name for r in results if r.name != "sequence"),
                     "test_rows": str(len(test))})  # fmt: skip
    table = results_table(results)
    mlflow.log_text(markdown_table(table), "comparison.md")
    from training.plots import evaluation_figures

    for filename, figure in evaluation_figures(results).items():
        mlflow.log_figure(figure, f"plots/{filename}")
    if config.journey_map.get("enabled", True):
        _log_journey_map(sequence, build, config.journey_map)
    failures = gate_verdict(results, test, build.targets, config.gate_config())
    forced = bool(failures) and force_register and config.register
    mlflow.set_tags(
        {
            "gate": "forced" if forced else ("refused" if failures else "passed"),
            "gate_reasons": "\n".join(failures)[:5000],
        }
    )
    version = None
    if config.register and (not failures or force_register):
        if forced:
            log.warning("FORCED registration despite the gate: %s", "; ".join(failures))
        example = _example_events(build)
        version = str(log_scorer(sequence, build.vocab, example))
        mlflow.set_tag("registered_version", version)
    elif failures:
        log.warning("the model failed the gate and is not registered: %s", "; ".join(failures))
    run_id = mlflow.active_run().info.run_id  # type: ignore[union-attr]
    mlflow.end_run()
    if distributed:
        dist.destroy_process_group()
    return TrainResult(run_id, version, results, seconds, failures, forced)


def gate_verdict(
    results: list[EvaluationResult], test: FeatureData, targets: tuple[str, ...], config: GateConfig
) -> list[str]:
    """The gate on a training run's results: the `sequence` result against the floors and against the
    other results (the baselines of the run, on the same test rows)."""
    metrics = config.metrics or gate_metrics_for(targets)
    model = next(r for r in results if r.name == "sequence")
    baselines = {r.name: r.metrics for r in results if r.name != "sequence"}
    return check_gate(model.metrics, metrics, config, baselines=baselines, test_stage=test.stage)


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


def run_baseline_metrics(run: Any) -> dict[str, dict[str, float]]:
    """Baseline name -> its test metrics, as a training run logged them (`<baseline>/<metric>`)."""
    tagged = run.data.tags.get("baselines")
    if tagged is not None:
        names = {b for b in tagged.split(",") if b}
    else:  # runs from before the tag: every prefix of a logged test metric but the model's own
        names = {k.split("/", 1)[0] for k in run.data.metrics if "/" in k} - {"sequence", "journey_map"}
    out: dict[str, dict[str, float]] = {}
    for key, value in run.data.metrics.items():
        name, _, metric = key.partition("/")
        if name in names and metric:
            out.setdefault(name, {})[metric] = float(value)
    return out


def _run_test_rows(run: Any) -> int | None:
    value = run.data.tags.get("test_rows")
    if value is None:  # runs from before the tag: the stage evaluation's row count
        metric = run.data.metrics.get("sequence/stage/n_rows")
        return None if metric is None else int(metric)
    return int(value)


def _ks_for(metrics: tuple[str, ...]) -> tuple[int, ...]:
    """The recommendation cut-offs the gate metrics need (10 at least)."""
    ks = {10}
    for m in metrics:
        last = m.rsplit("/", 1)[-1]
        head, _, k = last.rpartition("_at_")
        if head and k.isdigit():
            ks.add(int(k))
    return tuple(sorted(ks))


def same_run_baselines(
    run: Any,
    build: FeatureBuild,
    test: FeatureData,
    metrics: tuple[str, ...],
    *,
    progress: bool = False,
) -> tuple[dict[str, dict[str, float]], str]:
    """The baselines of the candidate's run, scored on the same test rows as the candidate.

    When the build is the one the run trained on (same `features_digest` tag and test row count) and the
    run logged its baselines, those logged metrics; otherwise the baselines are fitted on this build's
    training window and evaluated on its test window by the same code as in training (`fit_baselines`,
    `evaluate_scorers`), with the run's baseline settings.

    Returns:
        (baseline -> its gate metrics, a line saying where they come from).
    """
    digest = build.manifest["input"]["digest"]
    same_build = run is not None and run.data.tags.get("features_digest") == digest
    if same_build and _run_test_rows(run) == len(test):
        logged = run_baseline_metrics(run)
        if logged:
            return (
                {b: {m: v[m] for m in metrics if m in v} for b, v in logged.items()},
                f"as logged by the candidate's training run {run.info.run_id} (same build, {len(test):,} "
                "test rows)",
            )
    settings: dict[str, Any] = {}
    if run is not None:
        for key, value in run.data.params.items():
            if key.startswith("baselines."):
                settings[key.removeprefix("baselines.")] = yaml.safe_load(value)
    settings.pop("enabled", None)
    config = TrainConfig(features=str(build.path), baselines=settings, ks=_ks_for(metrics), n_boot=0)
    fitted = fit_baselines(config, build.split("train"), build.split("valid"), {})
    results = evaluate_scorers(fitted, build, test, config)
    why = "another build" if run is not None and not same_build else "the run logged none for this build"
    return (
        {r.name: {m: r.metrics[m] for m in metrics if m in r.metrics} for r in results},
        f"fitted on {build.path} ({why}) and evaluated on its {len(test):,} test rows",
    )


def _resolved_floors(
    gate_config: GateConfig, metrics: tuple[str, ...], test: FeatureData
) -> dict[str, float]:
    """Each gate metric's floor as a number ("majority" resolved on the test rows)."""
    floors = {m: gate_config.floor_value(m, test.stage) for m in metrics}
    return {m: f for m, f in floors.items() if f is not None}


def promote(
    features: Path,
    candidate: str = "challenger",
    *,
    metrics: tuple[str, ...] | None = None,
    tolerance: float | None = None,
    force: bool = False,
    n_boot: int = 0,
    gate_config: GateConfig | None = None,
) -> GateDecision:
    """Moves `champion` to the candidate only if it passes the gate (`training.registry.GateConfig`).

    The candidate is refused when a gate metric is NaN (no labelled rows), below its floor, below the best
    baseline of its own training run by more than the baseline tolerance, or below the current champion by
    more than the champion tolerance. Candidate, champion and baselines are all scored on the same rows:
    the given build's test window (the baselines' logged metrics when it is the build the candidate's run
    trained on, else the baselines fitted on this build by the same code). The decision, every figure and
    the reasons are logged to the `journey-promotions` experiment. Promoting the version that is already
    the champion changes nothing and logs nothing.

    Args:
        metrics: the gate metrics (all higher-is-better); by default the config's, else `gate_metrics_for`
            the build's targets.
        tolerance: how far below the champion a gate metric may be (overrides the config's
            `champion_tolerance`).
        force: promote even if the gate fails (logged as forced, and warned about).
        gate_config: floors and tolerances (default: `GateConfig()`, the values of configs/train.yaml).

    Raises:
        ValueError: a gate metric the evaluation cannot produce.
    """
    configure("journey-promotions")
    client = mlflow.MlflowClient()
    version = resolve_version(candidate)
    current = champion_version()
    if current == version:
        log.info("version %s is already the champion: nothing to promote", version)
        return GateDecision(version, current, False, False, {}, {}, [], already_champion=True)
    gate_config = (gate_config or GateConfig()).with_overrides(champion_tolerance=tolerance)
    build = FeatureBuild.open(features)
    test = build.split("test")
    metrics = metrics or gate_config.metrics or gate_metrics_for(build.targets)
    _check_metric_names(metrics, build.targets)

    def metrics_of(v: str) -> dict[str, float]:
        model = load_registered(MODEL_NAME, version=v).pyfunc
        result = evaluate(model.predict_features(test, k=max(_ks_for(metrics))), test,
                          catalogue_size=len(build.catalogue), ks=_ks_for(metrics), n_boot=n_boot,
                          name=f"v{v}")  # fmt: skip
        return {m: float(result.metrics.get(m, float("nan"))) for m in metrics}

    cand = metrics_of(version)
    champ = metrics_of(current) if current else None
    baselines: dict[str, dict[str, float]] = {}
    source = ""
    if gate_config.compare_baselines:
        run_id = client.get_model_version(MODEL_NAME, version).run_id
        run = client.get_run(run_id) if run_id else None
        baselines, source = same_run_baselines(run, build, test, metrics)
    failures = check_gate(
        cand, metrics, gate_config, baselines=baselines, champion=champ, test_stage=test.stage
    )
    promoted = not failures or force
    forced = force and bool(failures)
    floors = _resolved_floors(gate_config, metrics, test)
    with mlflow.start_run(run_name=f"promote v{version}"):
        params = {"candidate": version, "champion": current or "", "force": force,
                  "tolerance": gate_config.champion_tolerance, "features": str(features),
                  "gate_metrics": ",".join(metrics)}  # fmt: skip
        mlflow.log_params({**params, **gate_config.to_params()})
        mlflow.log_metrics({f"candidate/{k}": v for k, v in cand.items() if np.isfinite(v)})
        if champ:
            mlflow.log_metrics({f"champion/{k}": v for k, v in champ.items() if np.isfinite(v)})
        for name, values in baselines.items():
            mlflow.log_metrics({f"baseline/{name}/{k}": v for k, v in values.items() if np.isfinite(v)})
        mlflow.log_metrics({f"floor/{k}": v for k, v in floors.items() if np.isfinite(v)})
        mlflow.set_tags(
            {
                "decision": "promoted" if promoted else "refused",
                "forced": str(forced),
                "gate_reasons": "\n".join(failures)[:5000],
                "baseline_source": source[:5000],
            }
        )
    if promoted:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        if forced:
            log.warning("FORCED promotion of version %s despite the gate: %s", version, "; ".join(failures))
    return GateDecision(version, current, promoted, forced, cand, champ or {}, failures,
                        baselines=baselines, baseline_source=source, floors=floors)  # fmt: skip


def _check_metric_names(metrics: tuple[str, ...], targets: tuple[str, ...]) -> None:
    """Refuses a gate metric the evaluation never produces (a typo), before anything is scored."""
    heads = {"stage", "stage_true", "rec", "policy", "unsubscribe", *targets}
    unknown = [m for m in metrics if m.split("/", 1)[0] not in heads or "/" not in m]
    if unknown:
        raise ValueError(
            f"gate metric(s) {', '.join(unknown)} are not produced by the evaluation "
            f"(heads: {', '.join(sorted(heads))})"
        )


def comparison_markdown(results: list[EvaluationResult], metrics: tuple[str, ...] | None = None) -> str:
    """The scorers side by side, one column each, as a Markdown table."""
    return markdown_table(results_table(results, list(metrics) if metrics else None))
