"""The served model: which version, the last check of its alias, and a reload on demand.

With several workers each holds its own model; `POST /admin/reload` reaches the one worker that takes
the request, the others follow at their next periodic check (`reload_interval_s`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from serving import schemas
from serving.deps import ManagerDep, MetricsDep, require_api_key
from serving.routes.common import KEYED_ERRORS

router = APIRouter(
    prefix="/v1", tags=["model"], dependencies=[Depends(require_api_key)], responses=KEYED_ERRORS
)


@router.get("/model", response_model=schemas.ModelInfo)
def get_model(manager: ManagerDep) -> dict[str, Any]:
    """The served model and the last check of its alias."""
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
        "heads": m.head_sources if m else {},
    }


@router.post("/admin/reload", response_model=schemas.ReloadResponse)
def reload(manager: ManagerDep, metrics: MetricsDep) -> dict[str, Any]:
    """Loads the alias's version now if it moved; a broken model is refused and the old one kept."""
    result = manager.reload()
    if result["error"]:
        metrics.reload_failures.inc()
    return result
