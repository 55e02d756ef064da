"""Settings of the scoring service: one dataclass, from a YAML file, dotted overrides and `JOURNEY_*`
environment variables (the environment wins, so a deployment changes a replica without a new file).

Every limit has a default that a 2-core replica holds; `configs/serve.yaml` lists them all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from features.build import from_settings, load_settings
from features.policy import RuleConfig
from serving.store import send_log_problems

# Environment variables read on top of the file: name -> (setting, type).
_ENV: dict[str, tuple[str, type]] = {
    "JOURNEY_API_KEYS": ("api_keys", tuple),
    "JOURNEY_STORE_URL": ("store_url", str),
    "JOURNEY_MODEL_NAME": ("model_name", str),
    "JOURNEY_MODEL_ALIAS": ("model_alias", str),
    "JOURNEY_RELOAD_INTERVAL_S": ("reload_interval_s", float),
    "JOURNEY_CONTROL_SHARE": ("control_share", float),
    "JOURNEY_TORCH_THREADS": ("torch_threads", int),
    "JOURNEY_MAX_CLOCK_SKEW_S": ("max_clock_skew_s", float),
}


@dataclass(frozen=True)
class ServeSettings:
    """What a replica needs to answer.

    Attributes:
        tracking_uri: MLflow store holding the registry; None: `MLFLOW_TRACKING_URI` or the project's
            SQLite store (`training.registry.tracking_uri`).
        model_name, model_alias: the registered model to serve (`journey-scorer@champion`).
        reload_interval_s: how often a replica checks whether the alias moved (0: only on
            `POST /v1/admin/reload`).
        store_url: the online store, `sqlite:///path.db` (embedded default) or `redis://host:port/db`
            (shared by replicas).
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
        torch_threads: intra-op threads per replica (workers x threads <= cores).
        seed: seed of the exploration draws (None: fresh entropy; set in tests for repeatable answers).
    """

    tracking_uri: str | None = None
    model_name: str = "journey-scorer"
    model_alias: str = "champion"
    reload_interval_s: float = 60.0
    store_url: str = "sqlite:///online/journey.db"
    history_len: int = 200
    api_keys: tuple[str, ...] = ()
    allow_no_auth: bool = False
    max_body_bytes: int = 2_000_000
    max_events_per_request: int = 1_000
    max_batch: int = 1_000
    default_items: int = 10
    max_items: int = 100
    exploration: Literal["epsilon", "softmax"] = "epsilon"
    epsilon: float = 0.05
    temperature: float = 0.01
    control_share: float = 0.05
    control_salt: str = "journey-control-v1"
    min_uplift: float = 0.0
    rules: RuleConfig = field(default_factory=RuleConfig)
    max_clock_skew_s: float = 300.0
    torch_threads: int = 1
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.control_share < 1.0:
            problems.append(f"control_share must be in [0, 1), got {self.control_share}")
        if not 0.0 <= self.epsilon <= 1.0:
            problems.append(f"epsilon must be in [0, 1], got {self.epsilon}")
        if self.temperature <= 0:
            problems.append(f"temperature must be positive, got {self.temperature}")
        if self.exploration not in ("epsilon", "softmax"):
            problems.append(f"exploration must be 'epsilon' or 'softmax', got {self.exploration!r}")
        for name in ("max_body_bytes", "max_events_per_request", "max_batch", "max_items", "history_len"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 1 <= self.default_items <= self.max_items:
            problems.append(f"default_items must be in [1, max_items={self.max_items}]")
        if not self.max_clock_skew_s >= 0:
            problems.append(f"max_clock_skew_s must be >= 0 seconds, got {self.max_clock_skew_s}")
        problems.extend(send_log_problems(self.rules))
        if problems:
            raise ValueError("invalid serve settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ServeSettings:
        """Settings from plain values (YAML); unknown keys are named in the error."""
        data = dict(data)
        rules = RuleConfig.from_dict(data.pop("rules", None))
        keys = data.get("api_keys")
        if isinstance(keys, str):
            data["api_keys"] = _split_keys(keys)
        elif keys is not None:
            data["api_keys"] = tuple(str(k) for k in keys)
        data["rules"] = rules
        settings: ServeSettings = from_settings(cls, data, "serve")
        return settings

    @classmethod
    def load(
        cls,
        path: Path | None = None,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> ServeSettings:
        """The file, then the dotted overrides, then the `JOURNEY_*` environment variables."""
        data = load_settings(path, dict(overrides or {}))
        env = os.environ if environ is None else environ
        for var, (name, kind) in _ENV.items():
            if var in env:
                raw = env[var]
                try:
                    data[name] = _split_keys(raw) if kind is tuple else kind(raw)
                except ValueError as err:
                    raise ValueError(f"{var}={raw!r}: {err}") from err
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        """Plain values, API keys masked (for logs and `GET /v1/model`)."""
        out = asdict(self)
        out["api_keys"] = [f"{k[:2]}…" for k in self.api_keys]
        out["rules"] = self.rules.to_dict()
        return out


def _split_keys(raw: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in raw.split(",") if k.strip())
