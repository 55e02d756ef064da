"""Request and response bodies of the v1 API (DESIGN.md, "Score response" and "HTTP API").

Strings refuse NUL bytes and lone surrogates and numbers refuse NaN and infinity at the door: either
would otherwise pass validation and fail later in the store or in JSON, as a 500. Requests are strict
about types: a number is not read from a string or a boolean, a time not from a number (pydantic's lax
mode would take `"5"` or `true` for 5 and `0` for 1970), so a client's mistake is a 422, not a guess.
Ids are stripped, as the event validator strips the ids it stores, never blank and free of control
characters.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints

from features.schema import Action, Channel, EventType
from serving.store.records import OutcomeKind


def _clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("must be valid Unicode (no lone surrogates)") from err
    return value


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _clean_id(value: str) -> str:
    """An id is addressable in a URL path: no control character (a newline inside an id could be
    stored, then never read or erased through `/v1/customers/{customer_id}`)."""
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return _clean_text(value)


_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(2200, 1, 1, tzinfo=UTC)


_OUT_OF_RANGE = "must be between 1970-01-01 and 2200-01-01"
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _time_text(value: Any) -> Any:
    """Only ISO 8601 text is a time: pydantic would read a number, or a string of digits, as seconds
    since 1970 (a datetime passes too, for callers in the same process)."""
    if isinstance(value, datetime) or (isinstance(value, str) and not _NUMERIC.fullmatch(value)):
        return value
    raise ValueError("must be an ISO 8601 date and time, e.g. 2026-11-20T18:03:00Z")


def _utc_time(value: datetime) -> datetime:
    """A time read as UTC when it has no offset, between 1970 and 2200 (what the event store holds)."""
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # year 1 or 9999 with an offset: outside what datetime holds once in UTC
        raise ValueError(_OUT_OF_RANGE) from None
    if not _EARLIEST <= value < _LATEST:
        raise ValueError(_OUT_OF_RANGE)
    return value


Time = Annotated[datetime, BeforeValidator(_time_text), AfterValidator(_utc_time)]
Text = Annotated[str, Field(min_length=1, max_length=256), AfterValidator(_clean_text)]
Id = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=128),
    Field(examples=["C0000042"]),
    AfterValidator(_clean_id),
]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Flag = Annotated[bool, Field(strict=True)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EventIn(_Body):
    """One thing the customer did or was sent (the event contract of DESIGN.md)."""

    customer_id: Id | None = Field(None, description="Defaults to the customer of the score request.")
    ts: Time = Field(description="When it happened; without an offset it is read as UTC.")
    event_type: EventType
    channel: Channel | None = None
    item_id: Text | None = None
    category: Text | None = None
    value: Number | None = Field(None, ge=0)
    quantity: Number | None = Field(None, ge=0)
    message_type: Action | None = None
    campaign_id: Text | None = None
    session_id: Text | None = None
    event_id: Text | None = Field(None, description="Makes re-posting idempotent.")

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C0000042",
                    "ts": "2026-11-20T18:03:00Z",
                    "event_type": "add_to_cart",
                    "channel": "web",
                    "item_id": "I000123",
                    "event_id": "web-7f3a1",
                }
            ]
        },
    )


class ScoreContext(_Body):
    now: Time | None = Field(
        None,
        description="Scoring time; default the server's clock. Accepted only within `max_clock_skew_s` "
        "of the server's clock (a 422 names the allowed range).",
    )
    channels: list[Channel] | None = Field(None, description="Channels the platform may use now.")
    n_items: int | None = Field(None, strict=True, ge=1, le=1_000, description="Recommendations to return.")


_RECORD = (
    "Record the decision (default). false: a preview that answers the same way but records nothing: no "
    "decision, no send (it counts against no cap, gap or cooldown), and `decision_id` is null."
)


class ScoreRequest(_Body):
    customer_id: Id
    events: list[EventIn] = Field(
        default_factory=list,
        description="Inline events, merged with the stored (not stored themselves); none may be stamped "
        "beyond the server's clock plus `max_clock_skew_s`.",
    )
    context: ScoreContext | None = None
    record: Flag = Field(True, description=_RECORD)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "C0000042",
                    "events": [
                        {"ts": "2026-11-20T18:03:00Z", "event_type": "add_to_cart", "item_id": "I000123"}
                    ],
                    "context": {"channels": ["email"], "n_items": 5},
                }
            ]
        },
    )


class BatchScoreRequest(_Body):
    customers: list[ScoreRequest] = Field(min_length=1)
    record: Flag = Field(True, description=_RECORD + " Applies to every customer of the batch.")


class EventsRequest(_Body):
    events: list[EventIn] = Field(
        min_length=1, description="None may be stamped beyond the server's clock plus `max_clock_skew_s`."
    )


class FeedbackRequest(_Body):
    decision_id: Id
    outcome: OutcomeKind
    ts: Time | None = Field(None, description="When it happened; default now.")
    revenue: Number | None = Field(None, ge=0, description="For purchased.")
    item_id: Text | None = Field(None, description="For purchased: the item bought (becomes an event).")
    quantity: Number | None = Field(None, ge=0)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"decision_id": "5f0c...", "outcome": "purchased", "revenue": 42.5, "item_id": "I000123"}
            ]
        },
    )


class ModelRef(BaseModel):
    name: str
    version: str


class StageOut(BaseModel):
    label: str
    probabilities: dict[str, float]


class RankedAction(BaseModel):
    action: str
    score: float = Field(description="Expected gain in purchase probability over no_send.")
    eligible: bool
    blocked_by: str | None


class NextBestAction(BaseModel):
    action: str
    channel: str | None
    expected_uplift: float
    propensity: float = Field(description="Probability with which the policy chose this action.")
    decision_id: str | None = Field(
        description="Id of the recorded decision (for `POST /v1/feedback`); null for a preview "
        "(`record: false`), which recorded nothing."
    )
    control_group: bool
    explored: bool
    ranked: list[RankedAction]


class Recommendation(BaseModel):
    item_id: str
    score: float
    rank: int


class CartAbandonment(BaseModel):
    probability: float = Field(
        description="Probability that the open cart is not bought within `window_hours` (calibrated)."
    )
    window_hours: int = Field(description="The window the model learned (`labels.cart_abandon_hours`).")


class ScoreResponse(BaseModel):
    customer_id: str
    scored_at: datetime
    model: ModelRef
    stage: StageOut
    propensities: dict[str, float]
    cart_abandonment: CartAbandonment | None = Field(
        description="For a customer with an open cart (something added to the cart since the last "
        "purchase, within the last 7 days): the probability that it is not bought within the window. "
        "null when the customer has no open cart (the head learned from open carts only, so there is "
        "nothing to say), or the model has no cart-abandonment head."
    )
    next_best_action: NextBestAction
    recommendations: list[Recommendation]
    reasons: list[str]


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse]


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int


class FeedbackResponse(BaseModel):
    decision_id: str
    outcome: str
    events_added: int


class CustomerResponse(BaseModel):
    customer_id: str
    events: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    stage: StageOut | None


class EraseResponse(BaseModel):
    customer_id: str
    erased: int


class ModelInfo(BaseModel):
    name: str
    alias: str
    version: str | None
    run_id: str | None
    loaded_at: datetime | None
    last_checked_at: datetime | None
    last_error: str | None
    catalogue_size: int | None
    # Per head, the scorer that answers it ("sequence": the network; a baseline of the training run where
    # it won on the validation window: the registered model is then a composite). Empty: the network only.
    heads: dict[str, str] = {}


class ReloadResponse(BaseModel):
    changed: bool
    version: str | None
    previous: str | None
    error: str | None


class ErrorResponse(BaseModel):
    detail: Any


class Health(BaseModel):
    status: Literal["ok", "not ready"]
    model_version: str | None = None
    detail: str | None = None
