"""`journey train` and `journey evaluate` as library functions.

One training run: load a features build, fit the sequence model and every baseline on the training window
(early stopping on validation), evaluate all of them with the same code on the test window, log the whole
config, the dataset and its digest, per-epoch losses, every scorer's test metrics under parallel names
(`sequence/...`, `popularity/...`), the reports the caller passes (plots, journey map), and the
self-contained model, registered as `journey-scorer` with the alias `challenger`. Under `torchrun` only
rank 0 logs and registers. The run ends FINISHED, or FAILED (an error) or KILLED (an interrupt): never left
RUNNING.

The settings are `training.config.TrainConfig`, checked whole before any of this starts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from features.build import input_files
from features.vocab import FIRST
from predictor.composite import Composite
from predictor.model import ModelConfig
from predictor.predictor import Predictor
from predictor.registry import MODEL_NAME, configure, load_registered
from training.budget import threads, use_threads
from training.composite import SERVED, CompositeScorer, choose_heads, log_composite
from training.config import BaselineSettings, TrainConfig
from training.data import FeatureBuild, FeatureData
from training.evaluate import evaluate
from training.heads import untrained_heads
from training.interface import Predictions, Scorer
from training.refit import refit_for_registration
from training.registry import GateConfig, check_gate, gate_metrics_for, log_scorer
from training.results import EvaluationResult, markdown_table, results_table
from training.sequence import SequenceScorer, model_config_for
from training.sim_truth import load_sim_truth

log = logging.getLogger(__name__)


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
        seconds_per_epoch: the sequence model's median seconds per whole epoch (training and validation).
        stopped: why the sequence model's fit stopped: max_epochs, patience or budget (`fit.time_budget_s`).
        untrained: heads without a labelled training row (`training.heads`), one line each (also in
            `gate_failures`): the model is not registered then, not even forced.
        composite_sources: which scorer serves each head of the composite (`training.composite`), empty
            when the run made none.
    """

    run_id: str | None
    version: str | None
    results: list[EvaluationResult]
    seconds: dict[str, float]
    gate_failures: list[str] = field(default_factory=list)
    forced: bool = False
    seconds_per_epoch: float | None = None
    stopped: str | None = None
    untrained: list[str] = field(default_factory=list)
    composite_sources: dict[str, str] = field(default_factory=dict)

    @property
    def refused(self) -> bool:
        """The model failed the gate and was therefore not registered."""
        return bool(self.gate_failures) and self.version is None


def fit_baselines(
    config: TrainConfig,
    train_data: FeatureData,
    valid: FeatureData,
    seconds: dict[str, float],
    n_threads: int | None = None,
) -> dict[str, Scorer]:
    """Every baseline fitted on the same training window, timed; LightGBM on `n_threads` threads (the
    run's) unless `baselines.num_threads` is set."""
    fitted: dict[str, Scorer] = {}
    if not config.baselines.enabled:
        return fitted
    from training.baselines import all_baselines

    baseline_config = config.baseline_config()
    if n_threads and "num_threads" not in config.baselines.given():
        baseline_config = replace(baseline_config, num_threads=n_threads)
    # A build in session mode gets the session baselines by default (`all_baselines`).
    build = FeatureBuild.open(Path(config.features)).manifest.get("config", {})
    for baseline in all_baselines(baseline_config, build=build):
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


@contextmanager
def tracked_run(active: bool = True) -> Iterator[str | None]:
    """An MLflow run around a block (its id; None when not `active`: a rank other than 0).

    The run ends FINISHED, or FAILED when the block raises, or KILLED on an interrupt (Ctrl-C): a run that
    stopped is never left RUNNING for the UI to show as still training.
    """
    if not active:
        yield None
        return
    run = mlflow.start_run()
    try:
        yield run.info.run_id
    except KeyboardInterrupt:
        mlflow.end_run(status="KILLED")
        raise
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


@dataclass
class FittedRun:
    """What a training run has made by the time its reports are logged (inside the run, before the gate)."""

    config: TrainConfig
    build: FeatureBuild
    results: list[EvaluationResult]
    sequence: SequenceScorer
    composite: Composite | None = None

    def predictor(self) -> Predictor:
        """The fitted model as the inference unit that would be registered (the composite's heads in
        place where there is one)."""
        unit = self.sequence.to_predictor(self.build.vocab)
        unit.composite = self.composite
        return unit


# A report of a run, logged to the active MLflow run: the plots and the journey map (`reports.run`).
# Training knows only this signature; the callers (the CLI, the demo, the notebooks) pass the reports.
Reporter = Callable[[FittedRun], None]


def train(
    config: TrainConfig,
    *,
    progress: bool = True,
    force_register: bool = False,
    reporters: Sequence[Reporter] = (),
) -> TrainResult:
    """Fits the model and the baselines, evaluates them on the test window, logs, and registers the model
    if it passes the gate.

    The gate (`config.gate`) refuses a model with a gate metric that is NaN (a head without labelled test
    rows), below its floor, or below the best baseline of this run on the same test rows by more than the
    tolerance. A refused model is not registered (the alias `challenger` does not move): the run keeps
    every metric, the tag `gate` (passed / refused / forced) and the tag `gate_reasons`, one line each.
    A model with a head that had no labelled training row (`training.heads.untrained_heads`) is refused
    even when forced (tag `untrained_heads`).

    Args:
        force_register: register even if the gate fails (tag `gate` = forced, and a warning).
        reporters: reports logged to the run after the evaluation (`reports.run.RUN_REPORTERS`: the
            evaluation plots and the journey map).
    """
    distributed = init_distributed()
    rank = _rank()
    # One count for torch, LightGBM and BLAS: the free cores of this process (fit.threads, JOURNEY_THREADS).
    n_threads = use_threads(threads(config.fit.threads))
    build = FeatureBuild.open(Path(config.features))
    train_data, valid, test = build.split("train"), build.split("valid"), build.split("test")
    model_config: ModelConfig = model_config_for(build, **config.model.model_dump())
    if rank == 0:
        configure(config.experiment)
    with tracked_run(rank == 0) as run_id:
        if rank == 0:
            _log_config(config, build, model_config)
            mlflow.log_param("threads", n_threads)

        def on_epoch(epoch: int, record: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

        seconds: dict[str, float] = {}
        started = time.perf_counter()
        sequence = SequenceScorer(model_config, config.fit_config(), on_epoch=on_epoch if rank == 0 else None,
                                  progress=progress).fit(train_data, valid)  # fmt: skip
        seconds["sequence"] = time.perf_counter() - started
        if distributed:
            # Every rank has the fitted network; rank 0 alone goes on (evaluation, reports, the refit before
            # registration), outside the process group.
            dist.barrier()
            dist.destroy_process_group()
        if rank != 0:
            return TrainResult(None, None, [], seconds)
        mlflow.set_tag("fit_stopped", sequence.stopped_)  # max_epochs, patience or budget
        mlflow.log_metric("sequence/seconds_per_epoch", sequence.seconds_per_epoch_)

        baselines = fit_baselines(config, train_data, valid, seconds, n_threads)
        scorers: dict[str, Any] = {"sequence": sequence}
        composite = None
        if config.composite and baselines:
            composite = choose_heads(sequence.predict(valid, k=0), baselines, valid)
            scorers[SERVED] = CompositeScorer(sequence, composite)
            seconds[SERVED] = seconds["sequence"] + sum(seconds[n] for n in set(composite.sources.values())
                                                        if n in seconds and n != "sequence")  # fmt: skip
            log_composite(composite)
        results = evaluate_scorers({**scorers, **baselines}, build, test, config)
        _log_results(results, seconds, len(test))
        fitted = FittedRun(config, build, results, sequence, composite)
        for report in reporters:
            report(fitted)
        untrained = untrained_heads(train_data, build.targets, build.manifest)  # no force overrides these
        failures = untrained + gate_verdict(results, test, build.targets, config.gate_config())
        forced = bool(failures) and force_register and config.register_model and not untrained
        mlflow.set_tags(
            {
                "gate": "forced" if forced else ("refused" if failures else "passed"),
                "gate_reasons": "\n".join(failures)[:5000],
            }
        )
        if untrained:
            mlflow.set_tag("untrained_heads", "\n".join(untrained)[:5000])
        version = None
        if config.register_model and not untrained and (not failures or force_register):
            if forced:
                log.warning("FORCED registration despite the gate: %s", "; ".join(failures))
            example = _example_events(build)
            served, vocab = sequence, build.vocab
            if config.refit.enabled:
                served, vocab = refit_for_registration(sequence, build, config, progress)
                mlflow.set_tag("refit", f"vocabulary of {vocab.size('item_id') - FIRST:,} items, "
                               f"{config.refit.epochs} epoch(s) on every labelled row")  # fmt: skip
            version = str(log_scorer(served, vocab, example, composite))
            mlflow.set_tag("registered_version", version)
        elif failures:
            log.warning("the model failed the gate and is not registered: %s", "; ".join(failures))
    return TrainResult(run_id, version, results, seconds, failures, forced, sequence.seconds_per_epoch_,
                       sequence.stopped_, untrained, composite.sources if composite else {})  # fmt: skip


def _log_config(config: TrainConfig, build: FeatureBuild, model_config: ModelConfig) -> None:
    """The run's settings (the config as given, the model and fit configs whole), its rules and data."""
    flat: dict[str, Any] = {}
    _flatten("", config.logged(), flat)
    _flatten("model_config", model_config.to_dict(), flat)
    _flatten("fit_config", asdict(config.fit_config()), flat)
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
    mlflow.log_dict(config.logged(), "config.yaml")
    mlflow.log_dict(build.manifest, "features_manifest.json")
    mlflow.log_dict(config.rule_config().to_dict(), "rules.yaml")  # what the policy evaluation applied
    _log_dataset(build)
    mlflow.set_tags(
        {
            "features_digest": build.manifest["input"]["digest"],
            "world_size": os.environ.get("WORLD_SIZE", "1"),
        }
    )


def _log_results(results: list[EvaluationResult], seconds: dict[str, float], test_rows: int) -> None:
    """Every scorer's test metrics and fit time, and the comparison table."""
    for r in results:
        mlflow.log_metrics(r.as_metrics(f"{r.name}/"))
        mlflow.log_metric(f"{r.name}/fit_seconds", seconds[r.name])
    # What `promote` needs to find these baselines again, and to know they were scored on the same rows.
    mlflow.set_tags({"baselines": ",".join(r.name for r in results if r.name not in ("sequence", SERVED)),
                     "test_rows": str(test_rows)})  # fmt: skip
    mlflow.log_text(markdown_table(results_table(results)), "comparison.md")


def gate_verdict(
    results: list[EvaluationResult], test: FeatureData, targets: tuple[str, ...], config: GateConfig
) -> list[str]:
    """The gate on a training run's results: what would be registered (the `composite` result where the
    run made one, else `sequence`) against the floors and against the baselines of the run, on the same
    test rows."""
    metrics = config.metrics or gate_metrics_for(targets)
    names = [r.name for r in results]
    served = SERVED if SERVED in names else "sequence"
    model = next(r for r in results if r.name == served)
    baselines = {r.name: r.metrics for r in results if r.name not in ("sequence", SERVED)}
    return check_gate(model.metrics, metrics, config, baselines=baselines, test_stage=test.stage)


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


@dataclass
class RegisteredScorer:
    """A registered version of journey-scorer as a scorer of the evaluation (predict only)."""

    name: str
    pyfunc: Any
    vocab: Any = None  # the build's vocabulary (`predict_features` translates a refitted model's)

    def predict(self, data: FeatureData, k: int = 50) -> Predictions:
        return self.pyfunc.predict_features(data, k=k, vocab=self.vocab)


def evaluate_registered(
    features: Path,
    model: str = "champion",
    *,
    shop: Path | None = None,
    baselines: bool = True,
    n_boot: int = 200,
) -> list[EvaluationResult]:
    """A registered version (number or alias) evaluated on a build's test window, the baselines fitted on
    its training window beside it (`baselines`), all by the code of a training run.

    Raises:
        FileNotFoundError: no features build at `features`. MlflowException: no such version or alias.
    """
    config = TrainConfig(features=str(features), shop=str(shop) if shop else None, n_boot=n_boot,
                         baselines=BaselineSettings(enabled=baselines))  # fmt: skip
    build = FeatureBuild.open(features)
    configure()
    by = {"version": model} if model.isdigit() else {"alias": model}
    scorer = RegisteredScorer(f"registered_{model}", load_registered(MODEL_NAME, **by).pyfunc, build.vocab)
    scorers: dict[str, Any] = {scorer.name: scorer}
    scorers.update(fit_baselines(config, build.split("train"), build.split("valid"), {}))
    return evaluate_scorers(scorers, build, build.split("test"), config)


def comparison_markdown(results: list[EvaluationResult], metrics: tuple[str, ...] | None = None) -> str:
    """The scorers side by side, one column each, as a Markdown table."""
    return markdown_table(results_table(results, list(metrics) if metrics else None))
