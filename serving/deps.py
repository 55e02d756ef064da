"""What the routes depend on, as `Annotated` aliases over `app.state` (FastAPI's template, `api/deps.py`).

`create_app` keeps the settings, the model manager, the metrics and, once the store is open, the service
on `app.state`; a route names what it needs (`svc: ServiceDep`) and never reaches for globals. Tests swap
any of them with `app.dependency_overrides[get_service] = ...`.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

import anyio.from_thread
from fastapi import Depends, Header, HTTPException, Request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from serving.errors import NotReady
from serving.model import ModelManager
from serving.service import Service
from serving.settings import ServeSettings

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class Metrics:
    """The app's Prometheus collectors, in a registry of its own (two apps in one process, as in the
    tests, never share counts). With several workers each has its own; a scraper sees one per request."""

    registry: CollectorRegistry
    latency: Histogram
    decisions: Counter
    model_version: Gauge
    reload_failures: Counter

    @classmethod
    def create(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(
            registry=registry,
            latency=Histogram(
                "journey_request_seconds",
                "Request latency by route",
                ["route", "method", "status"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            decisions=Counter("journey_decisions", "Decisions by action", ["action"], registry=registry),
            model_version=Gauge(
                "journey_model_version",
                "Served model version (value 1)",
                ["name", "version"],
                registry=registry,
            ),
            reload_failures=Counter(
                "journey_model_reload_failures", "Refused model loads", registry=registry
            ),
        )


def get_settings(request: Request) -> ServeSettings:
    settings: ServeSettings = request.app.state.settings
    return settings


def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


def get_service(request: Request) -> Service:
    """The service, once the lifespan has opened the store (503 before: the app is still starting)."""
    service: Service | None = getattr(request.app.state, "service", None)
    if service is None:
        raise NotReady("the service is starting (the online store is not open yet)")
    return service


def client_gone(request: Request) -> Callable[[], bool]:
    """A question for the worker thread that runs a sync route: has the client hung up?

    The scoring library asks it once the answers are computed and, on yes, records nothing: a decision
    nobody received must not count against the customer's caps. The thread hops to the event loop for
    the answer (`Request.is_disconnected` reads the connection without waiting).
    """

    def gone() -> bool:
        return bool(anyio.from_thread.run(request.is_disconnected))

    return gone


SettingsDep = Annotated[ServeSettings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ServiceDep = Annotated[Service, Depends(get_service)]
ClientGone = Annotated[Callable[[], bool], Depends(client_gone)]


def require_api_key(
    settings: SettingsDep, x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None
) -> None:
    """401 without the header, 403 for a key that is not configured (compared in constant time)."""
    if not settings.api_keys:
        return
    if x_api_key is None:
        raise HTTPException(401, "missing X-API-Key header")
    if not any(hmac.compare_digest(x_api_key.encode(), k.encode()) for k in settings.api_keys):
        raise HTTPException(403, "X-API-Key not accepted")
