"""Settings of the scoring service: one `pydantic-settings` class over a YAML file, dotted overrides and
`JOURNEY_*` environment variables (the environment wins, so a deployment changes a replica without a new
file).

Three ways in, each with its own layers:

- `ServeSettings.load(path, overrides, environ)`: the file, then the dotted overrides, then the environment
  (`journey serve` and its worker processes).
- `ServeSettings(**values)`: the values, then `JOURNEY_*` variables, then the defaults (pydantic-settings).
- `ServeSettings.from_dict(data)`: the values alone, nothing read from the environment (plain YAML data).

Every field is settable from the environment as `JOURNEY_<FIELD>`: `JOURNEY_API_KEYS` is comma-separated,
`JOURNEY_RULES` is JSON (merged over the file's `rules:`). Every limit has a default that a 2-core replica
holds; `configs/serve.yaml` lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, InstanceOf, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from features.config import load_settings
from features.policy import RuleConfig
from serving.store import send_log_problems

ENV_PREFIX = "JOURNEY_"


class ServeSettings(BaseSettings):
    """What a replica needs to answer.

    Attributes:
        tracking_uri: MLflow store holding the registry; None: `MLFLOW_TRACKING_URI` or the project's
            SQLite store (`training.registry.tracking_uri`).
        model_name, model_alias: the registered model to serve (`journey-scorer@champion`).
        reload_interval_s: how often each worker checks whether the alias moved (0: only on
            `POST /v1/admin/reload`, which reaches one worker: so 0 needs `workers` 1).
        store_url: the online store, `sqlite:///path.db` (embedded default; the workers of one machine
            share the file) or `redis://host:port/db` (shared by replicas on several machines).
        history_len: events kept per customer in the online store. The model reads the last `max_len`
            of them; the aggregates (frequency, monetary value) read them all, so keep it above max_len.
        api_keys: accepted values of the `X-API-Key` header (`JOURNEY_API_KEYS`, comma-separated).
            Empty refuses to start unless `allow_no_auth` (tests and local experiments only).
        max_body_bytes, max_events_per_request, max_batch: request limits, each with its own 413 answer.
        default_items, max_items: recommendations per answer (the request's context may ask for up to
            max_items).
        exploration: "epsilon" (the greedy action, else a uniformly random eligible one with probability
            `epsilon`) or "softmax" (eligible actions drawn with weights exp(uplift / temperature)).
        control_share: share of customers (stable per customer id and `control_salt`) who always get
            no_send: the control group the campaign's lift is measured against.
        min_uplift: an action must gain more than this over no_send to be chosen greedily.
        rules: business rules (`features.policy.RuleConfig`), the same code offline evaluation uses.
            Every window they read must be shorter than the store's send log (`SEND_LOG_DAYS`).
        max_clock_skew_s: how far from the server's clock the API accepts a request's `context.now`
            (either way) and an event's time (ahead of it): a client's time is input, not truth, and a
            time far in the future would mislead the rules. The in-process library (backtests, the
            audience export) is not held to it.
        workers: server processes on this machine (`journey serve --workers N`); each opens its own store
            connection and loads its own copy of the model.
        torch_threads: intra-op threads per worker; None: `default_torch_threads(cores, workers)`, the
            cores divided among the workers less one per worker for its Python threads.
        batch_wait_ms: how long a scoring call waits for others to share one forward pass (micro-batching;
            only while other calls are on their way to theirs: a call alone scores at once in its own
            thread; 0: a call never waits, it only joins calls already queued).
        batch_max_customers: the most customers one shared forward pass takes.
        seed: seed of the exploration draws (None: fresh entropy; set in tests for repeatable answers).
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, validate_default=True
    )

    tracking_uri: str | None = None
    model_name: str = "journey-scorer"
    model_alias: str = "champion"
    reload_interval_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    store_url: str = "sqlite:///online/journey.db"
    history_len: int = Field(default=200, ge=1)
    # NoDecode: the environment gives "key1,key2", not JSON.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    allow_no_auth: bool = False
    max_body_bytes: int = Field(default=2_000_000, ge=1)
    max_events_per_request: int = Field(default=1_000, ge=1)
    max_batch: int = Field(default=1_000, ge=1)
    default_items: int = Field(default=10, ge=1)
    max_items: int = Field(default=100, ge=1)
    exploration: Literal["epsilon", "softmax"] = "epsilon"
    epsilon: float = Field(default=0.05, ge=0, le=1)
    temperature: float = Field(default=0.01, gt=0, allow_inf_nan=False)
    control_share: float = Field(default=0.05, ge=0, lt=1)
    control_salt: str = "journey-control-v1"
    min_uplift: float = Field(default=0.0, allow_inf_nan=False)
    rules: InstanceOf[RuleConfig] = Field(default_factory=RuleConfig)
    max_clock_skew_s: float = Field(default=300.0, ge=0, allow_inf_nan=False)
    workers: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1)
    batch_wait_ms: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    batch_max_customers: int = Field(default=64, ge=1)
    seed: int | None = None

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(k.strip() for k in value.split(",") if k.strip())
        if isinstance(value, list | tuple):
            return tuple(str(k) for k in value)
        return value

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        # A file may set some rules and keep the defaults of the rest: RuleConfig.from_dict merges.
        return RuleConfig.from_dict(value) if value is None or isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        problems = []
        if self.default_items > self.max_items:
            problems.append(f"default_items must be in [1, max_items={self.max_items}]")
        if self.workers > 1 and self.reload_interval_s == 0:
            problems.append(
                f"reload_interval_s 0 (reloads only on POST /v1/admin/reload) needs workers 1: with "
                f"{self.workers} workers the POST reaches one of them; set a reload interval"
            )
        problems.extend(send_log_problems(self.rules))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env file or secrets folder: the file of `load` and the environment are the only sources.
        return init_settings, env_settings

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeSettings:
        """Settings from plain values (YAML) alone; unknown keys and bad values are named in the error.

        Raises:
            ValueError: one line naming every unknown key and bad value.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"serve settings must be a mapping of keys to values, got {type(data).__name__}")
        return cls._build(InitSettingsSource(cls, dict(data)))

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServeSettings:
        """The file, then the dotted overrides (`{"rules.max_emails_7d": 2}`), then the `JOURNEY_*`
        variables of `environ` (default `os.environ`).

        Raises:
            FileNotFoundError: no such file. ValueError: an unknown key or a bad value, named.
        """
        data = load_settings(path, dict(overrides or {}))
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: serve settings must be a mapping of keys to values")
        env = _MappingEnvSource(cls, os.environ if environ is None else environ)
        return cls._build(env, InitSettingsSource(cls, dict(data)))

    @classmethod
    def _build(cls, *sources: PydanticBaseSettingsSource) -> ServeSettings:
        try:
            # pydantic-settings' own keyword: these sources instead of the init values and os.environ.
            return cls(_build_sources=(sources, {}))
        except ValidationError as err:
            raise ValueError(describe(err)) from None

    def replace(self, **changes: Any) -> ServeSettings:
        """A copy with some values changed, validated again (the environment is not read)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self).from_dict({**values, **changes})

    def threads_per_worker(self, cores: int | None = None) -> int:
        """`torch_threads`, else this machine's cores (those this process may run on) per worker."""
        if self.torch_threads is not None:
            return self.torch_threads
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        return default_torch_threads(cores or 1, self.workers)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, API keys masked (for logs and `GET /v1/model`)."""
        out = {name: getattr(self, name) for name in type(self).model_fields}
        out["api_keys"] = [f"{k[:2]}…" for k in self.api_keys]
        out["rules"] = self.rules.to_dict()
        return out


class _MappingEnvSource(EnvSettingsSource):
    """`JOURNEY_*` variables read from a given mapping rather than `os.environ` (`ServeSettings.load`)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names are case-insensitive, as pydantic-settings matches them by default.
        return {k.lower(): v for k, v in self._environ.items()}


def default_torch_threads(cores: int, workers: int) -> int:
    """Intra-op threads per worker: max(1, cores // workers - 1).

    A worker's Python (the request threads, the store, the rules: one core's worth, held by the GIL) runs
    beside its forward; torch threads beyond the remaining cores spin-wait against those Python threads
    (OpenMP): on a 2-core machine one worker with 2 torch threads answered 50 requests/s several times
    slower than with 1 (`benchmarks/serving_load.py --torch-threads 2` against the default).
    """
    return max(1, cores // max(1, workers) - 1)


def describe(err: ValidationError) -> str:
    """One line for a refused set of settings: the unknown keys (with the known ones), then each bad
    value with its field."""
    unknown = sorted(".".join(map(str, e["loc"])) for e in err.errors() if e["type"] == "extra_forbidden")
    problems = []
    if unknown:
        known = ", ".join(sorted(ServeSettings.model_fields))
        problems.append(f"unknown serve setting(s): {', '.join(unknown)}; known: {known}")
    for e in err.errors():
        if e["type"] == "extra_forbidden":
            continue
        where = ".".join(map(str, e["loc"]))
        message = e["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "invalid serve settings: " + "; ".join(problems)
