"""Scoring: stage, propensities, the next best action (recorded as a decision) and recommendations, for
one customer or a batch.

The routes are `def`, so FastAPI runs them in its thread pool and a model call never stalls the event
loop (health checks keep answering; fastapi#2148). A client that hangs up before the decision is recorded
gets nothing recorded (`ClientGone`): a message nobody was told to send must not count against the
customer's caps.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from serving import schemas
from serving.decisions import utcnow
from serving.deps import ClientGone, ServiceDep, SettingsDep, require_api_key
from serving.errors import InvalidInput, TooLarge
from serving.routes.common import KEYED_ERRORS, check_not_ahead, check_now, documented
from serving.service import CustomerRequest, request_events
from serving.settings import ServeSettings

router = APIRouter(
    prefix="/v1",
    tags=["scoring"],
    dependencies=[Depends(require_api_key)],
    responses={**KEYED_ERRORS, **documented(**{"503": "No model loaded yet."})},
)


@router.post("/score", response_model=schemas.ScoreResponse)
def score(
    body: schemas.ScoreRequest, svc: ServiceDep, settings: SettingsDep, gone: ClientGone
) -> dict[str, Any]:
    """Stage, propensities, the next best action (recorded as a decision, unless `record` is false)
    and recommendations."""
    answer: dict[str, Any] = svc.score(customer_requests([body], settings), cancelled=gone)[0]
    return answer


@router.post("/score/batch", response_model=schemas.BatchScoreResponse)
def score_batch(
    body: schemas.BatchScoreRequest, svc: ServiceDep, settings: SettingsDep, gone: ClientGone
) -> dict[str, Any]:
    """Up to `max_batch` customers in one vectorised pass; one decision each."""
    if len(body.customers) > settings.max_batch:
        raise TooLarge(
            f"batch of {len(body.customers):,} customers above the limit of {settings.max_batch:,}"
        )
    requests = customer_requests(body.customers, settings, batch=True, record=body.record)
    return {"results": svc.score(requests, cancelled=gone)}


def customer_requests(
    items: list[schemas.ScoreRequest], settings: ServeSettings, batch: bool = False, record: bool = True
) -> list[CustomerRequest]:
    """The library's requests from the HTTP bodies, after the checks the library leaves to the API: the
    request-wide event limit, `n_items` against `max_items`, and the client's clock.

    Raises:
        TooLarge: more inline events than `max_events_per_request`. InvalidInput: naming the field.
    """
    clock = utcnow()
    total = sum(len(r.events) for r in items)
    if total > settings.max_events_per_request:
        raise TooLarge(
            f"{total:,} inline events above the limit of {settings.max_events_per_request:,} per request"
        )
    out = []
    for n, r in enumerate(items):
        ctx = r.context or schemas.ScoreContext.model_validate({})
        at = ["body", "customers", n] if batch else ["body"]
        if ctx.n_items is not None and ctx.n_items > settings.max_items:
            raise InvalidInput.at(
                [*at, "context", "n_items"], f"at most {settings.max_items} items", "too_many_items"
            )
        if ctx.now is not None:
            check_now(ctx.now, [*at, "context", "now"], clock, settings)
        where = f"customers[{n}].events" if batch else "events"
        locs = [[where, i, "ts"] for i in range(len(r.events))]
        check_not_ahead([e.ts for e in r.events], locs, clock, settings)
        events = request_events([e.model_dump() for e in r.events], r.customer_id, where=where)
        channels = {c.value for c in ctx.channels} if ctx.channels is not None else None
        out.append(
            CustomerRequest(r.customer_id, events, ctx.now, channels, ctx.n_items, record and r.record)
        )
    return out
