"""The reports of a training run, logged to its MLflow run: the evaluation plots and the journey map of the
model just fitted. `training.train.train(config, reporters=RUN_REPORTERS)` calls them inside the run, so
that training itself never imports the reports (imports point one way: reports read what training made).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import mlflow

from reports.journey_map import build_journey_map, log_journey_map
from reports.plots import evaluation_figures
from training.train import FittedRun, Reporter


def log_evaluation_plots(run: FittedRun) -> None:
    """Every scorer's evaluation plots (calibration, metric curves), under `plots/`."""
    for filename, figure in evaluation_figures(run.results).items():
        mlflow.log_figure(figure, f"plots/{filename}")


def log_run_journey_map(run: FittedRun) -> None:
    """Logs the journey map of the model just fitted, on its own build, to the active run (when the run's
    `journey_map.enabled`).

    A reviewer then sees beside the metrics where the new model puts customers and where they stall
    (artifact `journey_map/journey_map.html`, tag `journey_map`). The cost is scoring every cutoff of the
    mapped customers once, so a large build is mapped on a seeded sample of them (the page says so).
    """
    settings = run.config.journey_map
    if not settings.enabled:
        return
    active = mlflow.active_run()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="journey-map-") as tmp:
        model = f"sequence model of run {active.info.run_id}" if active else "sequence model"
        _, paths = build_journey_map(
            run.build.path, run.predictor(), Path(tmp), model=model, **settings.options()
        )
        log_journey_map(paths)
    mlflow.log_metric("journey_map/seconds", time.perf_counter() - started)


RUN_REPORTERS: tuple[Reporter, ...] = (log_evaluation_plots, log_run_journey_map)
