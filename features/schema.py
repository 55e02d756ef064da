"""The event contract: one row is one thing a customer did or was sent.

Written once here and used by every reader (adapters, the simulator, the feature job and the online store).
See DESIGN.md, "Event". Enums are `StrEnum`s so that their values are the strings stored in files.
"""

from __future__ import annotations

from enum import StrEnum

import pyarrow as pa


class EventType(StrEnum):
    PAGE_VIEW = "page_view"
    PRODUCT_VIEW = "product_view"
    SEARCH = "search"
    ADD_TO_CART = "add_to_cart"
    REMOVE_FROM_CART = "remove_from_cart"
    CHECKOUT_START = "checkout_start"
    PURCHASE = "purchase"
    REFUND = "refund"
    SIGNUP = "signup"
    NEWSLETTER_SIGNUP = "newsletter_signup"
    EMAIL_SENT = "email_sent"
    EMAIL_OPEN = "email_open"
    EMAIL_CLICK = "email_click"
    EMAIL_UNSUBSCRIBE = "email_unsubscribe"
    SMS_SENT = "sms_sent"
    SMS_CLICK = "sms_click"
    PUSH_OPEN = "push_open"
    REVIEW = "review"
    SUPPORT_CONTACT = "support_contact"
    SOCIAL_ENGAGEMENT = "social_engagement"


class Channel(StrEnum):
    WEB = "web"
    APP = "app"
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    SOCIAL = "social"
    STORE = "store"
    PHONE = "phone"
    CHAT = "chat"


class Action(StrEnum):
    """The messages the engine can decide to send; `no_send` is a decision too."""

    WELCOME_SERIES = "welcome_series"
    EDUCATIONAL_CONTENT = "educational_content"
    BROWSE_ABANDONMENT = "browse_abandonment"
    CART_ABANDONMENT = "cart_abandonment"
    POST_PURCHASE_ONBOARDING = "post_purchase_onboarding"
    FEEDBACK_REQUEST = "feedback_request"
    CROSS_SELL = "cross_sell"
    LOYALTY_REWARD = "loyalty_reward"
    WINBACK_OFFER = "winback_offer"
    NO_SEND = "no_send"


class Stage(StrEnum):
    """The journey stages the model infers (DESIGN.md, "Journey stages")."""

    AWARENESS = "awareness"
    CONSIDERATION = "consideration"
    DECISION = "decision"
    POST_PURCHASE = "post_purchase"
    LOYAL = "loyal"
    AT_RISK = "at_risk"


EVENT_TYPES: tuple[str, ...] = tuple(e.value for e in EventType)
CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)
ACTIONS: tuple[str, ...] = tuple(a.value for a in Action)
MESSAGE_ACTIONS: tuple[str, ...] = tuple(a.value for a in Action if a is not Action.NO_SEND)
STAGES: tuple[str, ...] = tuple(s.value for s in Stage)

# Events about one product: they need an item_id.
PRODUCT_EVENTS: frozenset[str] = frozenset(
    {
        EventType.PRODUCT_VIEW,
        EventType.ADD_TO_CART,
        EventType.REMOVE_FROM_CART,
        EventType.PURCHASE,
        EventType.REFUND,
        EventType.REVIEW,
    }
)
# Messages the shop sent: they need the action they carried (message_type).
SENT_MESSAGE_EVENTS: frozenset[str] = frozenset({EventType.EMAIL_SENT, EventType.SMS_SENT})
# Reactions to a message: message_type is optional, and checked against the actions when given.
MESSAGE_EVENTS: frozenset[str] = SENT_MESSAGE_EVENTS | frozenset(
    {EventType.EMAIL_OPEN, EventType.EMAIL_CLICK, EventType.EMAIL_UNSUBSCRIBE, EventType.SMS_CLICK}
)
# Things the customer did (as opposed to things sent to them): activity, for recency and churn.
SHOP_SENT_EVENTS: frozenset[str] = frozenset({EventType.EMAIL_SENT, EventType.SMS_SENT})
# The events that set e-mail consent and the state each sets (1 subscribed, 0 unsubscribed), as the
# encoder's `email_consent`, the online store and the service's rules all read them.
CONSENT_VALUE: dict[str, float] = {
    EventType.NEWSLETTER_SIGNUP.value: 1.0,
    EventType.EMAIL_UNSUBSCRIBE.value: 0.0,
}

DEFAULT_CHANNEL: dict[str, str] = {
    **{e.value: Channel.WEB.value for e in EventType},
    EventType.EMAIL_SENT: Channel.EMAIL,
    EventType.EMAIL_OPEN: Channel.EMAIL,
    EventType.EMAIL_CLICK: Channel.EMAIL,
    EventType.EMAIL_UNSUBSCRIBE: Channel.EMAIL,
    EventType.NEWSLETTER_SIGNUP: Channel.EMAIL,
    EventType.SMS_SENT: Channel.SMS,
    EventType.SMS_CLICK: Channel.SMS,
    EventType.PUSH_OPEN: Channel.PUSH,
    EventType.SOCIAL_ENGAGEMENT: Channel.SOCIAL,
    EventType.SUPPORT_CONTACT: Channel.PHONE,
}

REQUIRED_COLUMNS: tuple[str, ...] = ("customer_id", "ts", "event_type")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "channel",
    "item_id",
    "category",
    "value",
    "quantity",
    "message_type",
    "campaign_id",
    "session_id",
    "event_id",
)
EVENT_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
STRING_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "event_type",
    "channel",
    "item_id",
    "category",
    "message_type",
    "campaign_id",
    "session_id",
    "event_id",
)
NUMBER_COLUMNS: tuple[str, ...] = ("value", "quantity")

TS_TYPE = pa.timestamp("us", tz="UTC")

# The Arrow schema of validated events as written to Parquet. Low-cardinality strings may be stored
# dictionary-encoded; readers cast with `conform_table`.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("channel", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("category", pa.string()),
        pa.field("value", pa.float64()),
        pa.field("quantity", pa.float64()),
        pa.field("message_type", pa.string()),
        pa.field("campaign_id", pa.string()),
        pa.field("session_id", pa.string()),
        pa.field("event_id", pa.string()),
    ]
)


class EventSchemaError(ValueError):
    """A file or frame that claims to hold validated events does not follow the contract."""


def conform_table(table: pa.Table, *, source: str = "events") -> pa.Table:
    """Checks a table of already validated events and casts it to `EVENT_SCHEMA`.

    Missing optional columns are added as nulls; a missing required column or a column of the wrong kind
    raises `EventSchemaError` naming it. Dictionary-encoded strings are accepted and decoded.

    Args:
        table: events, for example read from a Parquet file written by `journey ingest` or `simulate`.
        source: what to call the input in error messages.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise EventSchemaError(f"{source}: missing required column(s) {', '.join(missing)}")
    columns = []
    for field in EVENT_SCHEMA:
        if field.name not in table.column_names:
            if field.name == "channel":
                raise EventSchemaError(f"{source}: missing column channel (validated events always carry it)")
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if pa.types.is_dictionary(col.type):
            col = col.cast(col.type.value_type)
        try:
            col = col.cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise EventSchemaError(
                f"{source}: column {field.name} has type {col.type}, expected {field.type}"
            ) from exc
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=EVENT_SCHEMA)
