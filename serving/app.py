"""The FastAPI app: routes of DESIGN.md's v1 API over `serving.service.Service`.

Model calls run in `def` endpoints (FastAPI's thread pool), never on the event loop, so a scoring call
does not stall health checks (fastapi#2148). Every client mistake is a documented 4xx with a message
naming the field; /healthz, /readyz and /metrics need no key, every other route needs `X-API-Key`.

No `from __future__ import annotations` here: FastAPI reads the routes' annotations at run time, and
the dependency aliases they use are local to `create_app`.
"""

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any

import torch
from fastapi import Depends, FastAPI, Header, HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import schemas
from serving.errors import Abandoned, InvalidInput, NotFound, NotReady, ServiceError, TooLarge
from serving.model import LoadedModel, ModelManager, PeriodicReload
from serving.scoring import utcnow
from serving.service import CustomerRequest, Service, events_frame
from serving.settings import ServeSettings
from serving.store import Store, open_store

log = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": schemas.ErrorResponse, "description": "The body is not valid JSON."},
    401: {"model": schemas.ErrorResponse, "description": "No X-API-Key header."},
    403: {"model": schemas.ErrorResponse, "description": "The X-API-Key is not one of the configured keys."},
    413: {"model": schemas.ErrorResponse, "description": "Body, events or batch above the configured limit."},
    422: {"model": schemas.ErrorResponse, "description": "A field breaks the contract; `detail` names it."},
}
_SCORING_ERRORS = {**_ERRORS, 503: {"model": schemas.ErrorResponse, "description": "No model loaded yet."}}


class BodyLimit:
    """Answers 413 to a body above `limit` bytes, whether it announces its length or streams it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _BodyTooLarge:
            await _too_large(self.limit, send)


class _BodyTooLarge(Exception):
    pass


async def _too_large(limit: int, send: Send) -> None:
    response = JSONResponse({"detail": f"request body above the limit of {limit:,} bytes"}, status_code=413)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def create_app(
    settings: ServeSettings,
    store: Store | None = None,
    manager: ModelManager | None = None,
) -> FastAPI:
    """The app for these settings. `store` and `manager` may be given (tests); else they are opened from
    the settings at start-up."""
    if not settings.api_keys and not settings.allow_no_auth:
        raise ValueError("no API keys configured: set JOURNEY_API_KEYS (comma-separated) or allow_no_auth")
    registry = CollectorRegistry()
    latency = Histogram(
        "journey_request_seconds",
        "Request latency by route",
        ["route", "method", "status"],
        buckets=(0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        registry=registry,
    )
    decisions = Counter("journey_decisions", "Decisions by action", ["action"], registry=registry)
    model_info = Gauge(
        "journey_model_version", "Served model version (value 1)", ["name", "version"], registry=registry
    )
    reload_failures = Counter("journey_model_reload_failures", "Refused model loads", registry=registry)

    manager = manager or ModelManager(settings.model_name, settings.model_alias)

    def on_change(model: LoadedModel) -> None:
        model_info.clear()
        model_info.labels(name=model.name, version=model.version).set(1)

    manager.on_change = on_change
    state: dict[str, Any] = {}
    if store is not None:  # ready before start-up: in-process callers (tests, fuzzers) may skip the lifespan
        state["service"] = Service(settings, store, manager, decisions_counter=decisions)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        torch.set_num_threads(settings.torch_threads)
        if settings.tracking_uri:
            import mlflow

            mlflow.set_tracking_uri(settings.tracking_uri)
        else:
            from predictor.registry import configure

            configure()
        if "service" not in state:
            opened = open_store(settings.store_url, max_events=settings.history_len)
            state["service"] = Service(settings, opened, manager, decisions_counter=decisions)
        if manager.current is None:
            result = manager.reload()
            if result["error"]:
                reload_failures.inc()
                log.error(
                    "no model at start-up (readyz stays false, retried every %.0f s): %s",
                    settings.reload_interval_s,
                    result["error"],
                )
        elif manager.on_change:
            manager.on_change(manager.current)
        checker = PeriodicReload(manager, settings.reload_interval_s)
        checker.start()
        try:
            yield
        finally:
            checker.stop()
            if store is None:
                state.pop("service").store.close()

    app = FastAPI(
        title="Journey engine scoring API",
        version="1",
        description="Journey stage, next best action and recommendations for e-mail platforms.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)

    @app.middleware("http")
    async def timing(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        latency.labels(path, request.method, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    status_of = {InvalidInput: 422, TooLarge: 413, NotFound: 404, NotReady: 503, Abandoned: 499}

    @app.exception_handler(ServiceError)
    async def service_error(_: Request, err: ServiceError) -> JSONResponse:
        detail = f"no model loaded: {err}" if isinstance(err, NotReady) else err.detail
        return JSONResponse({"detail": detail}, status_code=status_of.get(type(err), 400))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        # Pydantic echoes the input back; a lone surrogate in it would break the JSON answer itself.
        errors = [{k: v for k, v in e.items() if k not in ("input", "ctx", "url")} for e in err.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    def api_key(x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None) -> None:
        if not settings.api_keys:
            return
        if x_api_key is None:
            raise HTTPException(401, "missing X-API-Key header")
        if not any(hmac.compare_digest(x_api_key.encode(), k.encode()) for k in settings.api_keys):
            raise HTTPException(403, "X-API-Key not accepted")

    def service() -> Service:
        svc: Service = state["service"]
        return svc

    Svc = Annotated[Service, Depends(service)]
    keyed = [Depends(api_key)]

    skew = timedelta(seconds=settings.max_clock_skew_s)

    def _time_error(loc: list[Any], msg: str) -> dict[str, Any]:
        return {"loc": loc, "msg": msg, "type": "outside_clock_tolerance"}

    def _check_now(now: datetime, loc: list[Any], clock: datetime) -> None:
        """A client's `now` is input, not truth: only near the server's clock (backtests use the library)."""
        lo, hi = clock - skew, clock + skew
        if not lo <= now <= hi:
            raise InvalidInput(
                [
                    _time_error(
                        loc,
                        f"context.now must be within {settings.max_clock_skew_s:g} s of the server's clock: "
                        f"between {lo.isoformat()} and {hi.isoformat()} (leave it out for the server's "
                        "clock)",
                    )
                ],
            )

    def _check_event_times(times: Sequence[datetime], where: str, clock: datetime) -> None:
        """Events from the future would mislead the rules (consent, sends): none beyond the clock's
        tolerance; all or nothing, each named by its index."""
        hi = clock + skew
        late = [i for i, ts in enumerate(times) if ts > hi]
        if late:
            raise InvalidInput(
                [
                    _time_error(
                        [where, i, "ts"],
                        f"ts must not be later than the server's clock plus "
                        f"{settings.max_clock_skew_s:g} s ({hi.isoformat()})",
                    )
                    for i in late
                ],
            )

    def _requests(
        items: list[schemas.ScoreRequest], where: str, record: bool = True
    ) -> list[CustomerRequest]:
        clock = utcnow()
        total = sum(len(r.events) for r in items)
        if total > settings.max_events_per_request:
            raise TooLarge(
                f"{total:,} inline events above the limit of {settings.max_events_per_request:,} per request",
            )
        out = []
        for n, r in enumerate(items):
            ctx = r.context or schemas.ScoreContext.model_validate({})
            at = ["body", "customers", n] if where == "customers" else ["body"]
            if ctx.n_items is not None and ctx.n_items > settings.max_items:
                raise InvalidInput(
                    [
                        {
                            "loc": [*at, "context", "n_items"],
                            "msg": f"at most {settings.max_items} items",
                            "type": "too_many_items",
                        }
                    ],
                )
            if ctx.now is not None:
                _check_now(ctx.now, [*at, "context", "now"], clock)
            loc = f"{where}[{n}].events" if where == "customers" else "events"
            _check_event_times([e.ts for e in r.events], loc, clock)
            events = events_frame([e.model_dump() for e in r.events], r.customer_id, where=loc)
            channels = {c.value for c in ctx.channels} if ctx.channels is not None else None
            out.append(
                CustomerRequest(r.customer_id, events, ctx.now, channels, ctx.n_items, record and r.record)
            )
        return out

    @app.post(
        "/v1/score",
        response_model=schemas.ScoreResponse,
        dependencies=keyed,
        responses=_SCORING_ERRORS,
        tags=["scoring"],
    )
    def score(body: schemas.ScoreRequest, svc: Svc) -> dict[str, Any]:
        """Stage, propensities, the next best action (recorded as a decision, unless `record` is false)
        and recommendations."""
        return svc.score(_requests([body], "body"))[0]

    @app.post(
        "/v1/score/batch",
        response_model=schemas.BatchScoreResponse,
        dependencies=keyed,
        responses=_SCORING_ERRORS,
        tags=["scoring"],
    )
    def score_batch(body: schemas.BatchScoreRequest, svc: Svc) -> dict[str, Any]:
        """Up to `max_batch` customers in one vectorised pass; one decision each."""
        if len(body.customers) > settings.max_batch:
            raise TooLarge(
                f"batch of {len(body.customers):,} customers above the limit of {settings.max_batch:,}"
            )
        return {"results": svc.score(_requests(body.customers, "customers", body.record))}

    @app.post(
        "/v1/events",
        response_model=schemas.EventsResponse,
        dependencies=keyed,
        responses=_ERRORS,
        tags=["events"],
    )
    def post_events(body: schemas.EventsRequest, svc: Svc) -> dict[str, Any]:
        """Appends validated events (idempotent by event_id); all or nothing."""
        if len(body.events) > settings.max_events_per_request:
            raise TooLarge(
                f"{len(body.events):,} events above the limit of "
                f"{settings.max_events_per_request:,} per request",
            )
        missing = [i for i, e in enumerate(body.events) if e.customer_id is None]
        if missing:
            raise InvalidInput(
                [
                    {
                        "loc": ["body", "events", i, "customer_id"],
                        "msg": "customer_id is required",
                        "type": "missing",
                    }
                    for i in missing
                ],
            )
        _check_event_times([e.ts for e in body.events], "events", utcnow())
        frame = events_frame([e.model_dump() for e in body.events], where="events")
        result = svc.add_events(frame)
        return {"accepted": result.accepted, "duplicates": result.duplicates}

    @app.post(
        "/v1/feedback",
        response_model=schemas.FeedbackResponse,
        dependencies=keyed,
        responses={**_ERRORS, 404: {"model": schemas.ErrorResponse, "description": "Unknown decision."}},
        tags=["events"],
    )
    def feedback(body: schemas.FeedbackRequest, svc: Svc) -> dict[str, Any]:
        """Records an outcome of a decision (delivered, opened, clicked, purchased, unsubscribed)."""
        if body.ts is not None and body.ts > utcnow() + skew:
            raise InvalidInput(
                [
                    _time_error(
                        ["body", "ts"],
                        f"ts must not be later than the server's clock plus {settings.max_clock_skew_s:g} s",
                    )
                ],
            )
        added = svc.feedback(
            body.decision_id, body.outcome, body.ts, body.revenue, body.item_id, body.quantity
        )
        return {"decision_id": body.decision_id, "outcome": body.outcome, "events_added": added}

    customer_404 = {**_ERRORS, 404: {"model": schemas.ErrorResponse, "description": "Unknown customer."}}

    @app.get(
        "/v1/customers/{customer_id}",
        response_model=schemas.CustomerResponse,
        dependencies=keyed,
        responses=customer_404,
        tags=["customers"],
    )
    def get_customer(customer_id: schemas.Id, svc: Svc) -> dict[str, Any]:
        """Recent events, last decisions and the current stage."""
        return svc.customer(customer_id)

    @app.delete(
        "/v1/customers/{customer_id}",
        response_model=schemas.EraseResponse,
        dependencies=keyed,
        responses=_ERRORS,
        tags=["customers"],
    )
    def erase_customer(customer_id: schemas.Id, svc: Svc) -> dict[str, Any]:
        """Erases the customer's events and decisions (right to erasure)."""
        return {"customer_id": customer_id, "erased": svc.erase(customer_id)}

    def _model_info() -> dict[str, Any]:
        m = manager.current
        return {
            "name": manager.name,
            "alias": manager.alias,
            "version": m.version if m else None,
            "run_id": m.run_id if m else None,
            "loaded_at": m.loaded_at if m else None,
            "last_checked_at": manager.status.checked_at,
            "last_error": manager.status.error,
            "catalogue_size": m.catalogue_size if m else None,
        }

    @app.get(
        "/v1/model", response_model=schemas.ModelInfo, dependencies=keyed, responses=_ERRORS, tags=["model"]
    )
    def get_model() -> dict[str, Any]:
        """The served model and the last check of its alias."""
        return _model_info()

    @app.post(
        "/v1/admin/reload",
        response_model=schemas.ReloadResponse,
        dependencies=keyed,
        responses=_ERRORS,
        tags=["model"],
    )
    def reload() -> dict[str, Any]:
        """Loads the alias's version now if it moved; a broken model is refused and the old one kept."""
        result = manager.reload()
        if result["error"]:
            reload_failures.inc()
        return result

    @app.get("/healthz", response_model=schemas.Health, tags=["health"])
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model_version": manager.current.version if manager.current else None}

    @app.get(
        "/readyz",
        response_model=schemas.Health,
        tags=["health"],
        responses={503: {"model": schemas.Health, "description": "No model loaded yet."}},
    )
    async def readyz() -> Any:
        if manager.current is None or "service" not in state:
            return JSONResponse({"status": "not ready", "detail": manager.status.error}, status_code=503)
        return {"status": "ok", "model_version": manager.current.version}

    @app.get("/metrics", tags=["health"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
