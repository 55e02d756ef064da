"""What the service's library raises when a request cannot be answered. The HTTP layer maps each kind to
one status code in one place (`serving.app`); the library knows nothing of HTTP.

`InvalidInput` carries FastAPI-style error items ({"loc", "msg", "type"}) so that every 422 of the API,
the request model's and the library's, reads alike.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """A request the service does not answer; `detail` is what the client is told."""

    def __init__(self, detail: Any) -> None:
        super().__init__(str(detail))
        self.detail = detail


class InvalidInput(ServiceError):
    """A field breaks the contract (422); `detail` is a list of {"loc", "msg", "type"} items."""

    @classmethod
    def at(cls, loc: list[Any], msg: str, kind: str) -> InvalidInput:
        return cls([{"loc": loc, "msg": msg, "type": kind}])


class TooLarge(ServiceError):
    """The request is above a configured limit (413)."""


class NotFound(ServiceError):
    """The decision or customer is unknown (404)."""


class NotReady(ServiceError):
    """No model is loaded yet (503)."""


class Abandoned(ServiceError):
    """The client went away before the decision was recorded: nothing was stored (499)."""
