"""The training run's settings (`journey train --config configs/train.yaml --set key=value`), typed.

One pydantic model per section of the file, every one with `extra="forbid"`, so that a typo anywhere
(`fit.epoch`, `model.d_modle`, `baselines.lightgbm.leaves`) or a value of the wrong type is one line naming
the key when the config is loaded: before a features build is opened, an MLflow run started or a model
fitted. The fitting code keeps its own dataclasses (`FitConfig`, `ModelConfig`, `BaselineConfig`,
`GateConfig`); each section's defaults are read from them, so there is one default per knob.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from features.config import load_settings
from features.policy import RuleConfig, load_rules
from predictor.model import ModelConfig
from training.baselines import BaselineConfig
from training.baselines.calibration import Calibration
from training.registry import DEFAULT_FLOORS, GateConfig
from training.sequence import FitConfig

# The service's settings: the offline evaluation applies its rules (`TrainConfig.rules`).
SERVE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "serve.yaml"

_MODEL, _FIT, _BASELINES, _GATE = ModelConfig(), FitConfig(), BaselineConfig(), GateConfig()


def _path_text(value: Any) -> Any:
    return str(value) if isinstance(value, PathLike) else value


def _as_tuple(value: Any) -> Any:
    return (value,) if isinstance(value, str) else value


# A path given as a Path or a string, kept as a string (it is logged as one).
PathText = Annotated[str, BeforeValidator(_path_text)]


class Section(BaseModel):
    """A section of the file: unknown keys refused, values checked, frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def given(self) -> dict[str, Any]:
        """The settings the file or the overrides set (what the run logs as parameters)."""
        return self.model_dump(exclude_unset=True)


class ModelSettings(Section):
    """`predictor.model.ModelConfig` fields; the sizes of the input (tokens, items, aggregates, max_len,
    targets) come from the features build."""

    encoder: Literal["transformer", "gru"] = _MODEL.encoder
    d_model: int = _MODEL.d_model
    n_layers: int = _MODEL.n_layers
    n_heads: int = _MODEL.n_heads
    dropout: float = _MODEL.dropout
    repeat: bool = _MODEL.repeat
    repeat_prior: bool = _MODEL.repeat_prior
    repeat_scale: float = _MODEL.repeat_scale
    profile_input: bool = _MODEL.profile_input
    profile_repeat: bool = _MODEL.profile_repeat
    profile_scale: float = _MODEL.profile_scale


class FitSettings(Section):
    """`training.sequence.FitConfig` fields; `threads` 0 is automatic (`training.budget.threads`), and a
    `resume_from` that does not exist is refused when the config is loaded."""

    max_epochs: int = _FIT.max_epochs
    patience: int = _FIT.patience
    batch_size: int = _FIT.batch_size
    lr: float = _FIT.lr
    weight_decay: float = _FIT.weight_decay
    max_train_rows: int = _FIT.max_train_rows
    max_next_items: int = _FIT.max_next_items
    ipw_clip: float = _FIT.ipw_clip
    loss_weights: tuple[float, float, float, float] = _FIT.loss_weights
    stage_class_power: float = _FIT.stage_class_power
    seed: int = _FIT.seed
    device: str = _FIT.device
    threads: int = Field(default=_FIT.threads, ge=0)
    time_budget_s: float | None = Field(default=_FIT.time_budget_s, ge=0)
    checkpoint_dir: PathText | None = _FIT.checkpoint_dir
    resume_from: PathText | None = _FIT.resume_from
    lr_warmup_epochs: float = Field(default=_FIT.lr_warmup_epochs, ge=0)
    lr_decay_epochs: float = Field(default=_FIT.lr_decay_epochs, gt=0)
    lr_min_ratio: float = Field(default=_FIT.lr_min_ratio, ge=0, le=1)

    @field_validator("resume_from")
    @classmethod
    def _checkpoint_exists(cls, value: str | None) -> str | None:
        # Checked here, not after the features build is opened and the run started.
        if value is not None and not Path(value).exists():
            raise ValueError(f"no checkpoint at {value}")
        return value


class RefitSettings(Section):
    """The refit before registration (`training.refit`): the vocabulary up to the last labelled cutoff and
    the selected model fine-tuned on every labelled row, so that items seen before that cutoff can be
    recommended. A refitted model has seen its build's test rows and speaks a wider vocabulary: `journey
    promote` then takes its run's figures from before the refit on that build
    (`training.promote.refitted_run_metrics`), and scoring a build's rows translates the build's tokens
    (`JourneyPyfunc.predict_features(vocab=...)`). Off by default until its gain on a later window is
    measured: it costs a second feature build and `epochs` more epochs on every labelled row."""

    enabled: bool = False
    epochs: int = Field(default=1, ge=1)
    lr_scale: float = Field(default=0.3, gt=0)


class BaselineSettings(Section):
    """`training.baselines.BaselineConfig` fields, and `enabled` (false: no baselines are fitted)."""

    enabled: bool = True
    baselines: tuple[str, ...] = _BASELINES.baselines
    tune_k: int = _BASELINES.tune_k
    popularity_weeks_grid: tuple[int | None, ...] = _BASELINES.popularity_weeks_grid
    popularity_interaction_weight: float = _BASELINES.popularity_interaction_weight
    own_cart_weight_grid: tuple[float, ...] = _BASELINES.own_cart_weight_grid
    own_view_weight_grid: tuple[float, ...] = _BASELINES.own_view_weight_grid
    own_decay_grid: tuple[float, ...] = _BASELINES.own_decay_grid
    knn_neighbours: int = _BASELINES.knn_neighbours
    knn_decay: float = _BASELINES.knn_decay
    knn_own_weight_grid: tuple[float, ...] = _BASELINES.knn_own_weight_grid
    knn_popularity_weight_grid: tuple[float, ...] = _BASELINES.knn_popularity_weight_grid
    tifu_neighbours_grid: tuple[int, ...] = _BASELINES.tifu_neighbours_grid
    tifu_alpha_grid: tuple[float, ...] = _BASELINES.tifu_alpha_grid
    tifu_within_decay_grid: tuple[float, ...] = _BASELINES.tifu_within_decay_grid
    tifu_group_decay_grid: tuple[float, ...] = _BASELINES.tifu_group_decay_grid
    tifu_group_size_grid: tuple[int, ...] = _BASELINES.tifu_group_size_grid
    tifu_browse_weight_grid: tuple[float, ...] = _BASELINES.tifu_browse_weight_grid
    tifu_max_tune_rows: int = _BASELINES.tifu_max_tune_rows
    session_knn_neighbours: int = _BASELINES.session_knn_neighbours
    session_knn_decay_grid: tuple[float, ...] = _BASELINES.session_knn_decay_grid
    logistic_features: tuple[str, ...] = _BASELINES.logistic_features
    logistic_c_grid: tuple[float, ...] = _BASELINES.logistic_c_grid
    lgbm_learning_rate: float = _BASELINES.lgbm_learning_rate
    lgbm_num_leaves: int = _BASELINES.lgbm_num_leaves
    lgbm_min_child_samples: int = _BASELINES.lgbm_min_child_samples
    lgbm_max_rounds: int = _BASELINES.lgbm_max_rounds
    lgbm_early_stopping_rounds: int = _BASELINES.lgbm_early_stopping_rounds
    ipw_clip: float = _BASELINES.ipw_clip
    min_action_rows: int = _BASELINES.min_action_rows
    calibration: Calibration = _BASELINES.calibration
    seed: int = _BASELINES.seed
    num_threads: int = _BASELINES.num_threads


class GateSettings(Section):
    """`training.registry.GateConfig` fields; `floors` given here replace the defaults per key (see
    `GateConfig.from_dict`)."""

    floors: dict[str, float | str] = Field(default_factory=lambda: dict(DEFAULT_FLOORS))
    baseline_tolerance: float = _GATE.baseline_tolerance
    champion_tolerance: float = _GATE.champion_tolerance
    compare_baselines: bool = _GATE.compare_baselines
    metrics: Annotated[tuple[str, ...], BeforeValidator(_as_tuple)] = _GATE.metrics


class JourneyMapSettings(Section):
    """The journey map logged with the run (`build_journey_map` options, its defaults but two): larger
    builds are mapped on a seeded sample of `max_customers` (5,000), as scoring every cutoff of 20,000
    customers takes minutes on two cores; `segments` is acquisition_channel."""

    enabled: bool = True
    max_customers: int | None = 5_000
    segments: str | None = "acquisition_channel"
    k: int = 4
    window_days: float | None = None
    max_segments: int = 8
    seed: int = 0

    def options(self) -> dict[str, Any]:
        """The keyword arguments of `build_journey_map`."""
        return self.model_dump(exclude={"enabled"})


class TrainConfig(Section):
    """Everything one training run needs; loaded from YAML plus `key=value` overrides, logged whole.

    Attributes:
        features: the features build to train on.
        shop: a simulated shop (for the true stages and policy values), if the data is simulated.
        experiment: MLflow experiment name.
        model: the model's shape (`ModelSettings`; sizes come from the build).
        fit: the optimisation (`FitSettings`).
        baselines: the baselines (`BaselineSettings`); `enabled: false` skips them.
        ks: recommendation cut-offs.
        n_boot: bootstrap resamples for the intervals.
        register_model: the key `register` (a pydantic model has a `register` of its own): log and
            register the model (only if it passes the gate: see `gate`).
        gate: what the model must reach to be registered, and to be promoted later
            (`training.registry.GateConfig` fields: `floors`, `baseline_tolerance`,
            `champion_tolerance`, `compare_baselines`, `metrics`); checked here against the floors and
            the baselines of this run on the same test rows.
        rules: the serve settings file whose `rules:` section the offline policy evaluation applies
            (consent, fatigue, eligibility), so that it judges decisions as the service will; None: the
            project's `configs/serve.yaml`.
        journey_map: the journey map logged with the run (`JourneyMapSettings`).
        composite: register a composite model: per head, the scorer (the network, LightGBM or the
            logistic regression of this run) with the best validation metric (`training.composite`), so
            that no served head is worse on validation than a baseline of its own run; false: the network
            answers every head.
        refit: the refit before registration (`RefitSettings`).
    """

    features: PathText = "demo_output/features"
    shop: PathText | None = None
    experiment: str = "journey"
    model: ModelSettings = ModelSettings()
    fit: FitSettings = FitSettings()
    baselines: BaselineSettings = BaselineSettings()
    ks: tuple[int, ...] = (5, 10, 20, 50)
    n_boot: int = 200
    register_model: bool = Field(default=True, alias="register")
    journey_map: JourneyMapSettings = JourneyMapSettings()
    gate: GateSettings = GateSettings()
    rules: PathText | None = None
    composite: bool = True
    refit: RefitSettings = RefitSettings()

    @model_validator(mode="after")
    def _check_gate_and_rules(self) -> TrainConfig:
        # Checked here, not after an hour of training.
        self.gate_config()
        self.rule_config()
        return self

    @classmethod
    def load(cls, path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The file (optional), then the dotted overrides (`{"fit.max_epochs": 3}`).

        Raises:
            FileNotFoundError: no such file. ValueError: one line naming every unknown key and bad value.
        """
        data = load_settings(path, overrides)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a train config is a mapping of settings, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ValueError(describe(err)) from None

    def logged(self) -> dict[str, Any]:
        """The config as the run logs it: every top-level setting, and of each section the keys given."""
        sections = {name: value.given() for name, value in self if isinstance(value, Section)}
        return {**self.model_dump(by_alias=True), **sections}

    def rule_config(self) -> RuleConfig:
        """The business rules of the offline evaluation: the service's own file (see `rules`)."""
        return load_rules(Path(self.rules) if self.rules else SERVE_CONFIG)

    def gate_config(self) -> GateConfig:
        return GateConfig.from_dict(self.gate.given())

    def fit_config(self) -> FitConfig:
        return FitConfig(**self.fit.model_dump())

    def baseline_config(self) -> BaselineConfig:
        return BaselineConfig(**self.baselines.model_dump(exclude={"enabled"}))


def describe(err: ValidationError) -> str:
    """One line for a refused train config: the unknown keys of each section (with its known ones), then
    each bad value with its dotted key."""
    unknown: dict[tuple[str, ...], list[str]] = {}
    problems = []
    for e in err.errors():
        loc = tuple(str(part) for part in e["loc"])
        if e["type"] == "extra_forbidden":
            unknown.setdefault(loc[:-1], []).append(".".join(loc))
            continue
        message = e["msg"].removeprefix("Value error, ")
        given = repr(e["input"])
        given = given if len(given) <= 60 else given[:57] + "..."
        problems.append(f"{'.'.join(loc)}: {message} (got {given})" if loc else message)
    for section, keys in unknown.items():
        fields = _section_model(section).model_fields
        known = ", ".join(sorted(f.alias or n for n, f in fields.items()))
        name = ".".join(section) or "train"
        problems.insert(0, f"unknown {name} setting(s): {', '.join(keys)}; known: {known}")
    return " ".join("; ".join(problems).split())


def _section_model(loc: tuple[str, ...]) -> type[BaseModel]:
    model: type[BaseModel] = TrainConfig
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model
