"""The FastAPI app: DESIGN.md's v1 API over `serving.service.Service`, laid out as FastAPI's template keeps
a service (`serving/routes/` per resource, `serving/deps.py` for what they depend on).

This module holds what is app-wide: the lifespan (store, model, periodic reload), the two ASGI middlewares
(body limit, latency), the one mapping of the library's errors to status codes, and the factory that
uvicorn's worker processes call (`app_from_environment`). Every client mistake is a documented 4xx with a
message naming the field; /healthz, /readyz and /metrics need no key, every other route needs `X-API-Key`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.deps import Metrics
from serving.errors import Abandoned, InvalidInput, NotFound, NotReady, ServiceError, TooLarge
from serving.model import LoadedModel, ModelManager, PeriodicReload
from serving.routes import customers, events, health, model, scoring
from serving.service import Service
from serving.settings import ServeSettings
from serving.store import Store, open_store

log = logging.getLogger(__name__)

# How `journey serve` hands its settings to uvicorn's worker processes (see `app_from_environment`).
CONFIG_ENV = "JOURNEY_CONFIG"
OVERRIDES_ENV = "JOURNEY_OVERRIDES"

STATUS_OF: dict[type[ServiceError], int] = {
    InvalidInput: 422,
    TooLarge: 413,
    NotFound: 404,
    NotReady: 503,
    Abandoned: 499,  # nginx's "client closed request": logged and counted, never read by the client
}


def require_keys(settings: ServeSettings) -> None:
    """Refuses to serve without API keys unless `allow_no_auth` says so.

    Raises:
        ValueError: no keys configured.
    """
    if not settings.api_keys and not settings.allow_no_auth:
        raise ValueError("no API keys configured: set JOURNEY_API_KEYS (comma-separated) or allow_no_auth")


def create_app(
    settings: ServeSettings,
    store: Store | None = None,
    manager: ModelManager | None = None,
) -> FastAPI:
    """The app for these settings. `store` and `manager` may be given (tests); else they are opened from
    the settings at start-up, in the process that serves (each worker its own store connection).

    Raises:
        ValueError: no API keys and not `allow_no_auth`.
    """
    require_keys(settings)
    metrics = Metrics.create()
    manager = manager or ModelManager(settings.model_name, settings.model_alias)

    def on_change(loaded: LoadedModel) -> None:
        metrics.model_version.clear()
        metrics.model_version.labels(name=loaded.name, version=loaded.version).set(1)

    manager.on_change = on_change

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.threads_per_worker())
        _configure_tracking(settings)
        if store is None:
            opened = open_store(settings.store_url, max_events=settings.history_len)
            app.state.service = Service(settings, opened, manager, decisions_counter=metrics.decisions)
        _first_load(manager, settings, metrics)
        checker = PeriodicReload(manager, settings.reload_interval_s)
        checker.start()
        try:
            yield
        finally:
            checker.stop()
            if store is None:  # opened here, closed here; a given store (and its service) stays usable
                service, app.state.service = app.state.service, None
                service.close()  # the micro-batcher's worker first: it may still be scoring
                service.store.close()

    app = FastAPI(
        title="Journey engine scoring API",
        version="1",
        description="Journey stage, next best action and recommendations for e-mail platforms.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.manager = manager
    app.state.metrics = metrics
    # Ready before start-up when the store is given: in-process callers (tests, fuzzers) may skip the
    # lifespan.
    app.state.service = (
        Service(settings, store, manager, decisions_counter=metrics.decisions) if store is not None else None
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Latency, metrics=metrics)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for module in (scoring, events, customers, model, health):
        app.include_router(module.router)
    return app


def app_from_environment() -> FastAPI:
    """The app of `journey serve`, built in each worker process (uvicorn `factory=True`).

    A worker is a fresh interpreter: it reads the settings file named by `JOURNEY_CONFIG`, the dotted
    overrides in `JOURNEY_OVERRIDES` (a JSON object, `--set` and the command's options) and then the
    `JOURNEY_*` variables, the same layers, in the same order, as the command checked before starting it.
    """
    path = os.environ.get(CONFIG_ENV)
    overrides = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    return create_app(ServeSettings.load(Path(path) if path else None, overrides))


def _configure_tracking(settings: ServeSettings) -> None:
    if settings.tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(settings.tracking_uri)
    else:
        from predictor.registry import configure

        configure()


def _first_load(manager: ModelManager, settings: ServeSettings, metrics: Metrics) -> None:
    """Loads the alias's version unless a model is there; a failure leaves /readyz false, not a crash."""
    if manager.current is not None:
        if manager.on_change:
            manager.on_change(manager.current)
        return
    result = manager.reload()
    if not result["error"]:
        return
    metrics.reload_failures.inc()
    if settings.reload_interval_s > 0:
        retry = f"retried every {settings.reload_interval_s:g} s"
    else:
        retry = "periodic reloads are off (reload_interval_s 0): POST /v1/admin/reload loads it"
    log.error("no model at start-up (readyz stays false; %s): %s", retry, result["error"])


async def _service_error(_: Request, err: Exception) -> JSONResponse:
    """The one place where the library's errors become status codes."""
    assert isinstance(err, ServiceError)
    detail = f"no model loaded: {err}" if isinstance(err, NotReady) else err.detail
    if isinstance(err, Abandoned):
        log.info("request abandoned by the client: nothing recorded")
    return JSONResponse({"detail": detail}, status_code=STATUS_OF.get(type(err), 400))


async def _invalid_request(_: Request, err: Exception) -> JSONResponse:
    """422 naming the fields; a body that is not JSON at all is the documented 400."""
    assert isinstance(err, RequestValidationError)
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"detail": "the body is not valid JSON"}, status_code=400)
    # Pydantic echoes the input back; a lone surrogate in it would break the JSON answer itself.
    cleaned = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in errors]
    return JSONResponse({"detail": jsonable_encoder(cleaned)}, status_code=422)


async def _http_error(request: Request, err: Exception) -> Any:
    """FastAPI's answer, except that a 405 lists the methods of every route on the path (Starlette
    names only those of the first route that matched it: GET and DELETE of a customer are two routes)."""
    assert isinstance(err, StarletteHTTPException)
    if err.status_code == 405:
        allowed = sorted(_methods_on_path(request))
        if allowed:
            err = StarletteHTTPException(405, err.detail, headers={"Allow": ", ".join(allowed)})
    return await http_exception_handler(request, err)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _methods_on_path(request: Request) -> set[str]:
    """The methods some route fully matches on this path, asked of each route as the router asks it
    (`matches`), on a bare copy of the scope (nothing left of the route that answered 405)."""
    bare = {k: v for k, v in request.scope.items() if k in ("type", "path", "root_path", "headers", "app")}
    methods = set()
    for method in _METHODS:
        scope = {**bare, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            methods.add(method)
    return methods


class BodyLimit:
    """Answers 413 to a body above `limit` bytes, whether it announces its length or streams it (chunked).

    The body is read here, before the app, up to the limit: FastAPI turns any error raised while it
    reads a body into a 400, so a limit enforced inside its reading would answer the wrong code. The app
    then gets the body in one message, and the connection's later messages (a disconnect) as they come.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._too_large(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # the client left while sending: the app sees the disconnect
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._too_large(scope, send)
                return
            if not message.get("more_body", False):
                first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return first

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, send: Send) -> None:
        detail = f"request body above the limit of {self.limit:,} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class Latency:
    """Request latency per route template, method and status (a plain ASGI middleware: no task per
    request, as `BaseHTTPMiddleware` would add, and the client's disconnect still reaches the route)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.latency.labels(path, scope["method"], str(status)).observe(elapsed)
