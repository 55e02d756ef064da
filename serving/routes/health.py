"""Liveness, readiness and metrics: no API key (probes and scrapers hold none), and `async`, so they
answer from the event loop even while every worker thread is busy scoring."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving import schemas
from serving.deps import ManagerDep, MetricsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health)
async def healthz(manager: ManagerDep) -> dict[str, Any]:
    """The process answers (whether or not a model is loaded)."""
    return {"status": "ok", "model_version": manager.current.version if manager.current else None}


@router.get(
    "/readyz",
    response_model=schemas.Health,
    responses={503: {"model": schemas.Health, "description": "No model loaded yet."}},
)
async def readyz(request: Request, manager: ManagerDep) -> Any:
    """Ready to score: a model loaded and the online store open."""
    if manager.current is None or getattr(request.app.state, "service", None) is None:
        return JSONResponse({"status": "not ready", "detail": manager.status.error}, status_code=503)
    return {"status": "ok", "model_version": manager.current.version}


@router.get("/metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    """Prometheus text: request latency per route, decisions per action, the served version."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
