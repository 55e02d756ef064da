"""A customer's recent events, last decisions and stage; and erasure (the right to be forgotten).

The id is a `path` parameter: ids are the shop's own and may hold a `/` (stored through `/v1/events` like
any other), and every stored customer must be readable and erasable. A client may send the slash as is
or percent-encoded (`%2F`); the server decodes both to the same id.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path

from serving import schemas
from serving.deps import ServiceDep, require_api_key
from serving.routes.common import KEYED_ERRORS, documented

router = APIRouter(
    prefix="/v1/customers",
    tags=["customers"],
    dependencies=[Depends(require_api_key)],
    # 404 on either method: an unknown customer, or a path that holds no id (a newline, which no id has).
    responses={**KEYED_ERRORS, **documented(**{"404": "Unknown customer."})},
)

CustomerId = Annotated[schemas.Id, Path(description="The shop's customer id; may contain `/`.")]


@router.get("/{customer_id:path}", response_model=schemas.CustomerResponse)
def get_customer(customer_id: CustomerId, svc: ServiceDep) -> dict[str, Any]:
    """Recent events, last decisions and the current stage."""
    return svc.customer(customer_id)


@router.delete("/{customer_id:path}", response_model=schemas.EraseResponse)
def erase_customer(customer_id: CustomerId, svc: ServiceDep) -> dict[str, Any]:
    """Erases the customer's events and decisions (right to erasure)."""
    return {"customer_id": customer_id, "erased": svc.erase(customer_id)}
