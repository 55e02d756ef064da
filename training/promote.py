"""`journey promote`: move the alias `champion` to a candidate only if it passes the gate.

Candidate, current champion and the baselines of the candidate's own training run are all scored on the
same rows (a features build's test window), by the same evaluation code as in training; the decision, every
figure and the reasons are logged to the `journey-promotions` experiment.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import yaml

from predictor.registry import CHAMPION, MODEL_NAME, configure, load_registered, registered_version
from training.config import BaselineSettings, TrainConfig
from training.data import FeatureBuild, FeatureData
from training.evaluate import evaluate
from training.registry import (
    GateConfig,
    GateDecision,
    champion_version,
    check_gate,
    gate_metrics_for,
    resolve_version,
)
from training.train import evaluate_scorers, fit_baselines

log = logging.getLogger(__name__)


def run_baseline_metrics(run: Any) -> dict[str, dict[str, float]]:
    """Baseline name -> its test metrics, as a training run logged them (`<baseline>/<metric>`)."""
    tagged = run.data.tags.get("baselines")
    if tagged is not None:
        names = {b for b in tagged.split(",") if b}
    else:  # runs from before the tag: every prefix of a logged test metric but the model's own
        names = {k.split("/", 1)[0] for k in run.data.metrics if "/" in k}
        names -= {"sequence", "composite", "journey_map"}
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
    baselines = BaselineSettings.model_validate(settings)
    config = TrainConfig(features=str(build.path), baselines=baselines, ks=_ks_for(metrics), n_boot=0)
    fitted = fit_baselines(config, build.split("train"), build.split("valid"), {})
    results = evaluate_scorers(fitted, build, test, config)
    why = "another build" if run is not None and not same_build else "the run logged none for this build"
    return (
        {r.name: {m: r.metrics[m] for m in metrics if m in r.metrics} for r in results},
        f"fitted on {build.path} ({why}) and evaluated on its {len(test):,} test rows",
    )


def refitted_run_metrics(
    client: Any, version: str, build: FeatureBuild, test: FeatureData, metrics: tuple[str, ...]
) -> dict[str, float] | None:
    """A refitted version's gate metrics as its training run measured them before the refit, when `build`
    is the one it trained on (same `features_digest`, same test rows); None otherwise (score it again).

    A refitted model (`training.refit`) was fine-tuned on every labelled row of its build, the test window's
    too: scored again on that window it would be judged on rows it was fitted on. Its run measured the
    selected model (the same one before the refit) on those rows, under the name of what was registered
    (`composite/...`, else `sequence/...`).
    """
    run_id = registered_version(MODEL_NAME, version=version).run_id
    run = client.get_run(run_id) if run_id else None
    if run is None or "refit" not in run.data.tags:
        return None
    if run.data.tags.get("features_digest") != build.manifest["input"]["digest"] or _run_test_rows(
        run
    ) != len(test):
        return None
    logged = run.data.metrics
    prefix = "composite/" if any(k.startswith("composite/") for k in logged) else "sequence/"
    log.info(
        "version %s was refitted on this build's test window: its run's figures before the refit", version
    )
    return {m: float(logged.get(prefix + m, float("nan"))) for m in metrics}


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
    build = FeatureBuild.open(features)  # a wrong path fails here, before the registry is read
    configure("journey-promotions")
    client = mlflow.MlflowClient()
    version = resolve_version(candidate)
    current = champion_version()
    if current == version:
        log.info("version %s is already the champion: nothing to promote", version)
        return GateDecision(version, current, False, False, {}, {}, [], already_champion=True)
    gate_config = (gate_config or GateConfig()).with_overrides(champion_tolerance=tolerance)
    test = build.split("test")
    metrics = metrics or gate_config.metrics or gate_metrics_for(build.targets)
    _check_metric_names(metrics, build.targets)

    def metrics_of(v: str) -> dict[str, float]:
        logged = refitted_run_metrics(client, v, build, test, metrics)
        if logged is not None:
            return logged
        # The gate reads the metrics on all rows: no per-segment figures (about half the evaluation time).
        model = load_registered(MODEL_NAME, version=v).pyfunc
        result = evaluate(model.predict_features(test, k=max(_ks_for(metrics)), vocab=build.vocab), test,
                          catalogue_size=len(build.catalogue), ks=_ks_for(metrics), n_boot=n_boot,
                          name=f"v{v}", segments=False)  # fmt: skip
        return {m: float(result.metrics.get(m, float("nan"))) for m in metrics}

    cand = metrics_of(version)
    champ = metrics_of(current) if current else None
    baselines: dict[str, dict[str, float]] = {}
    source = ""
    if gate_config.compare_baselines:
        run_id = registered_version(MODEL_NAME, version=version).run_id
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
