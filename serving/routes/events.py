"""Events and feedback: what the customer did, and what came of a decision (opened, clicked, bought)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from serving import schemas
from serving.decisions import utcnow
from serving.deps import ServiceDep, SettingsDep, require_api_key
from serving.errors import InvalidInput, TooLarge
from serving.routes.common import KEYED_ERRORS, check_not_ahead, documented
from serving.service import request_events

router = APIRouter(
    prefix="/v1", tags=["events"], dependencies=[Depends(require_api_key)], responses=KEYED_ERRORS
)


@router.post("/events", response_model=schemas.EventsResponse)
def post_events(body: schemas.EventsRequest, svc: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    """Appends validated events (idempotent by event_id); all or nothing."""
    if len(body.events) > settings.max_events_per_request:
        raise TooLarge(
            f"{len(body.events):,} events above the limit of {settings.max_events_per_request:,} per request"
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
            ]
        )
    locs = [["events", i, "ts"] for i in range(len(body.events))]
    check_not_ahead([e.ts for e in body.events], locs, utcnow(), settings)
    frame = request_events([e.model_dump() for e in body.events], where="events")
    result = svc.add_events(frame)
    return {"accepted": result.accepted, "duplicates": result.duplicates}


@router.post(
    "/feedback",
    response_model=schemas.FeedbackResponse,
    responses=documented(**{"404": "Unknown decision."}),
)
def feedback(body: schemas.FeedbackRequest, svc: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    """Records an outcome of a decision (delivered, opened, clicked, purchased, unsubscribed)."""
    check_not_ahead([body.ts], [["body", "ts"]], utcnow(), settings)
    added = svc.feedback(body.decision_id, body.outcome, body.ts, body.revenue, body.item_id, body.quantity)
    return {"decision_id": body.decision_id, "outcome": body.outcome, "events_added": added}
