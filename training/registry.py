"""MLflow: registering the predictor as `journey-scorer`, and the promotion gate.

The logged model carries everything it needs to score raw events: the weights, the vocabularies (and so
the catalogue), the label maps, the configs, and the code of `features` and `predictor` (code_paths), so
that the service and `mlflow models serve` load it without the training code.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

import features
import predictor
from features.schema import ACTIONS, EVENT_COLUMNS, STAGES
from features.vocab import Vocabulary
from predictor.composite import Composite
from predictor.pyfunc import ARTIFACT, JourneyPyfunc, inference_requirements
from predictor.registry import (
    CHALLENGER,
    CHAMPION,
    MODEL_NAME,
    registered_version,
)
from training.sequence import SequenceScorer

log = logging.getLogger(__name__)

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


def log_scorer(
    scorer: SequenceScorer,
    vocab: Vocabulary,
    example_events: pd.DataFrame,
    composite: Composite | None = None,
) -> Any:
    """Logs the fitted model's predictor (with the composite's baseline heads, where the run made one) as
    a pyfunc in the active run and registers it; returns the version (aliased as the challenger)."""
    work = Path(tempfile.mkdtemp(prefix="journey-model-"))
    try:
        folder = work / ARTIFACT
        unit = scorer.to_predictor(vocab)
        unit.composite = composite
        unit.save(folder)
        needs_lightgbm = composite is not None and composite.needs_lightgbm
        labels = {
            "stages": list(STAGES),
            "actions": list(ACTIONS),
            "propensities": list(scorer.model_config.propensity_heads),
        }
        (folder / "labels.json").write_text(json.dumps(labels))
        # How it was fitted, for the record (the predictor does not read it).
        fitted = {"fit_config": asdict(scorer.fit_config), "history": scorer.history_}
        (folder / "training.json").write_text(json.dumps(fitted, indent=2))
        model = JourneyPyfunc()
        model.load_from(folder)
        example = example_events[list(EVENT_COLUMNS)].copy()
        example["ts"] = example["ts"].astype(str)
        params = {"now": "", "k": 10}
        output = model.predict(None, example, params={"k": 10})
        signature = infer_signature(example, output, params=params)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            artifacts={ARTIFACT: str(folder)},
            code_paths=[str(Path(features.__file__).parent), str(Path(predictor.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=inference_requirements(lightgbm=needs_lightgbm),
            registered_model_name=MODEL_NAME,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    version = info.registered_model_version
    MlflowClient().set_registered_model_alias(MODEL_NAME, CHALLENGER, str(version))
    return version


# --------------------------------------------------------------------------------------------------------
# The promotion gate

MAJORITY = "majority"
# Floors per gate metric: a full metric name ("churn_30d/roc_auc") or its last part ("roc_auc"), which
# then holds for every head of that kind. A number, or "majority" for a stage metric: above what always
# predicting the most frequent stage of the same test rows scores.
DEFAULT_FLOORS: dict[str, float | str] = {"roc_auc": 0.55, "macro_f1": MAJORITY, "ndcg_at_10": 0.01}
GATE_SETTINGS = frozenset(
    {"floors", "baseline_tolerance", "champion_tolerance", "compare_baselines", "metrics"}
)


@dataclass(frozen=True)
class GateConfig:
    """What a candidate must reach to be registered (`journey train`) or promoted (`journey promote`).

    All gate metrics are higher-is-better. A candidate is refused when, on any gate metric:

    * it has no value (NaN or absent: the head had no labelled rows in the test window, so nothing says
      it works);
    * it is below its floor (`floors`; "majority": not above always predicting the majority stage);
    * it is below the best baseline of the same run, on the same test rows, by more than
      `baseline_tolerance` (absolute; `compare_baselines: false` skips this check);
    * it is below the current champion, on the same test rows, by more than `champion_tolerance`
      (promotion only).

    Attributes:
        floors: metric name or last part -> floor (a number, or "majority" for stage metrics).
        baseline_tolerance: how far below the best baseline a gate metric may be.
        champion_tolerance: how far below the champion a gate metric may be.
        compare_baselines: compare with the baselines of the run at all.
        metrics: the gate metrics; empty: `gate_metrics_for` the build's targets.
    """

    floors: Mapping[str, float | str] = field(default_factory=lambda: dict(DEFAULT_FLOORS))
    baseline_tolerance: float = 0.01
    champion_tolerance: float = 0.0
    compare_baselines: bool = True
    metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for key, value in self.floors.items():
            if isinstance(value, str):
                if value != MAJORITY or not key.endswith(("macro_f1", "accuracy")):
                    raise ValueError(
                        f"gate floor {key}={value!r}: a number, or {MAJORITY!r} for a stage metric"
                    )
            elif not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"gate floor {key}={value!r} is not a finite number")
        for name in ("baseline_tolerance", "champion_tolerance"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not np.isfinite(value) or value < 0:
                raise ValueError(f"gate {name} must be a number >= 0, not {value!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GateConfig:
        """From the `gate:` section of a train config; `floors` given there replace the defaults per key
        (so `floors: {roc_auc: 0.6}` keeps the other defaults).

        Raises:
            ValueError: an unknown setting or a bad value.
        """
        data = dict(data or {})
        unknown = sorted(set(data) - GATE_SETTINGS)
        if unknown:
            raise ValueError(
                f"unknown gate setting(s): {', '.join(unknown)}; known: {', '.join(sorted(GATE_SETTINGS))}"
            )
        if "floors" in data:
            floors = data["floors"] or {}
            if not isinstance(floors, Mapping):
                raise ValueError(f"gate floors must be a mapping of metric -> floor, not {floors!r}")
            data["floors"] = {**DEFAULT_FLOORS, **{str(k): _floor_value(v) for k, v in floors.items()}}
        if "metrics" in data:
            metrics = data["metrics"] or ()
            data["metrics"] = (metrics,) if isinstance(metrics, str) else tuple(str(m) for m in metrics)
        return cls(**data)

    def with_overrides(
        self,
        *,
        floors: Mapping[str, float | str] | None = None,
        baseline_tolerance: float | None = None,
        champion_tolerance: float | None = None,
    ) -> GateConfig:
        """This config with some settings replaced (command-line options over the YAML)."""
        changes: dict[str, Any] = {}
        if floors:
            changes["floors"] = {**self.floors, **{k: _floor_value(v) for k, v in floors.items()}}
        if baseline_tolerance is not None:
            changes["baseline_tolerance"] = baseline_tolerance
        if champion_tolerance is not None:
            changes["champion_tolerance"] = champion_tolerance
        return replace(self, **changes)

    def floor_of(self, metric: str) -> float | str | None:
        """The floor of a metric: by its full name, else by its last part, else none."""
        if metric in self.floors:
            return self.floors[metric]
        return self.floors.get(metric.rsplit("/", 1)[-1])

    def floor_value(self, metric: str, test_stage: np.ndarray | None) -> float | None:
        """The floor as a number: "majority" is what always predicting the majority stage of the test rows
        scores on this metric (NaN without the rows); None when the metric has no floor."""
        floor = self.floor_of(metric)
        if not isinstance(floor, str):
            return None if floor is None else float(floor)
        if test_stage is None:
            return float("nan")
        trivial = majority_stage_accuracy if metric.endswith("accuracy") else majority_stage_macro_f1
        return trivial(test_stage)

    def to_params(self) -> dict[str, str]:
        """Flat strings for MLflow params."""
        params = {f"gate.floor.{k}": str(v) for k, v in self.floors.items()}
        params.update(
            {
                "gate.baseline_tolerance": str(self.baseline_tolerance),
                "gate.champion_tolerance": str(self.champion_tolerance),
                "gate.compare_baselines": str(self.compare_baselines),
            }
        )
        return params


def _floor_value(value: Any) -> float | str:
    if isinstance(value, str):
        text = value.strip()
        if text == MAJORITY:
            return MAJORITY
        try:
            return float(text)
        except ValueError as err:
            raise ValueError(f"gate floor {value!r}: a number or {MAJORITY!r}") from err
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"gate floor {value!r}: a number or {MAJORITY!r}")
    return float(value)


def parse_floors(pairs: list[str] | None) -> dict[str, float | str]:
    """`metric=value` pairs (command-line `--floor`) as a floors mapping.

    Raises:
        ValueError: a pair without `=` or a bad value.
    """
    floors: dict[str, float | str] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--floor expects metric=value, got {pair!r}")
        key, value = pair.split("=", 1)
        floors[key.strip()] = _floor_value(value)
    return floors


def majority_stage_macro_f1(stage: np.ndarray) -> float:
    """Macro-F1 of always predicting the most frequent stage of these rows (the trivial stage model)."""
    from training.metrics import macro_f1

    y = np.asarray(stage, dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    majority = int(np.bincount(y, minlength=len(STAGES)).argmax())
    return macro_f1(y, np.full(len(y), majority), n_classes=len(STAGES))


def majority_stage_accuracy(stage: np.ndarray) -> float:
    y = np.asarray(stage, dtype=np.int64)
    return float(np.bincount(y).max() / len(y)) if len(y) else float("nan")


def _finite(value: float | None) -> bool:
    return value is not None and bool(np.isfinite(value))


def check_gate(
    candidate: Mapping[str, float],
    metrics: tuple[str, ...],
    config: GateConfig,
    *,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    champion: Mapping[str, float] | None = None,
    test_stage: np.ndarray | None = None,
) -> list[str]:
    """Every reason to refuse the candidate, one line each, naming the metric (head) and why; [] passes.

    Args:
        candidate: the candidate's test metrics (at least the gate metrics; a missing one counts as NaN).
        metrics: the gate metrics (higher is better).
        config: floors and tolerances.
        baselines: baseline name -> its metrics on the same test rows (the baselines of the same run).
        champion: the current champion's metrics on the same test rows, if there is one.
        test_stage: the test rows' stage labels, for the "majority" floors.
    """
    failures: list[str] = []
    for m in metrics:
        value = candidate.get(m)
        if not _finite(value):
            failures.append(
                f"{m}: no value (NaN): the head had no labelled rows in the test window, so nothing shows "
                "that it works"
            )
            continue
        assert value is not None
        floor = config.floor_of(m)
        if isinstance(floor, str):  # "majority": above the trivial stage model on the same rows
            reference = config.floor_value(m, test_stage)
            assert reference is not None
            if _finite(reference) and value <= reference:
                failures.append(
                    f"{m}: {value:.4f} is not above always predicting the majority stage ({reference:.4f})"
                )
        elif floor is not None and value < floor:
            failures.append(f"{m}: {value:.4f} is below the floor {floor:.4f}")
        if config.compare_baselines and baselines:
            scored = {b: v[m] for b, v in baselines.items() if _finite(v.get(m))}
            if scored:
                best = max(scored, key=lambda b: scored[b])
                if value < scored[best] - config.baseline_tolerance:
                    failures.append(
                        f"{m}: {value:.4f} is below the best baseline {best} ({scored[best]:.4f}) by "
                        f"{scored[best] - value:.4f}, more than the tolerance {config.baseline_tolerance:g}"
                    )
        if champion is not None and _finite(champion.get(m)):
            champ = float(champion[m])
            if value < champ - config.champion_tolerance:
                failures.append(
                    f"{m}: {value:.4f} is below the champion's {champ:.4f} by {champ - value:.4f}, more "
                    f"than the tolerance {config.champion_tolerance:g}"
                )
    return failures


def best_baselines(
    baselines: Mapping[str, Mapping[str, float]], metrics: tuple[str, ...]
) -> dict[str, tuple[str, float]]:
    """Gate metric -> (the best baseline, its value), where any baseline has a finite value."""
    out: dict[str, tuple[str, float]] = {}
    for m in metrics:
        scored = {b: float(v[m]) for b, v in baselines.items() if _finite(v.get(m))}
        if scored:
            best = max(scored, key=lambda b: scored[b])
            out[m] = (best, scored[best])
    return out


@dataclass
class GateDecision:
    """The outcome of `training.train.promote`.

    Attributes:
        failures: the reasons for refusing, one line each (naming the metric); [] when the gate passed.
        baselines: baseline -> its gate metrics on the same test rows.
        baseline_source: where those came from (the candidate's training run, or fitted on the build).
        already_champion: the candidate is the champion already; nothing was evaluated or changed.
    """

    candidate: str
    champion: str | None
    promoted: bool
    forced: bool
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float]
    failures: list[str]
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline_source: str = ""
    floors: dict[str, float] = field(default_factory=dict)
    already_champion: bool = False

    def summary(self) -> str:
        if self.already_champion:
            return (
                f"version {self.candidate} is already the champion: nothing to promote, "
                f"alias {CHAMPION} unchanged"
            )
        lines = [f"candidate version {self.candidate} vs champion {self.champion or '(none)'}"]
        best = best_baselines(self.baselines, tuple(self.candidate_metrics))
        for m, value in self.candidate_metrics.items():
            parts = [f"  {m}: {value:.4f}"]
            if m in self.floors:
                parts.append(f"floor {self.floors[m]:.4f}")
            if m in best:
                parts.append(f"best baseline {best[m][0]} {best[m][1]:.4f}")
            champ = self.champion_metrics.get(m)
            if champ is not None:
                parts.append(f"champion {champ:.4f}")
            lines.append(parts[0] + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else ""))
        if self.baseline_source:
            lines.append(f"  baselines: {self.baseline_source}")
        if self.forced and self.failures:
            lines.append(f"FORCED: promoted although the gate failed ({len(self.failures)} check(s)):")
            lines.extend(f"  - {f}" for f in self.failures)
            lines.append(f"promoted (forced): alias {CHAMPION} -> version {self.candidate}")
        elif self.promoted:
            lines.append(f"promoted: alias {CHAMPION} -> version {self.candidate}")
        else:
            lines.append(
                f"refused: alias {CHAMPION} stays on {self.champion or '(none)'}; "
                f"the gate failed {len(self.failures)} check(s):"
            )
            lines.extend(f"  - {f}" for f in self.failures)
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
    return str(registered_version(MODEL_NAME, alias=candidate).version)


def champion_version() -> str | None:
    try:
        return str(registered_version(MODEL_NAME, alias=CHAMPION).version)
    except MlflowException:
        return None
