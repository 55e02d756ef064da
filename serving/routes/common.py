"""What several routers share: the documented error answers, and the checks of a client's clock.

A client's times are input, not truth: `context.now` must lie near the server's clock and no event may be
stamped beyond it (plus `max_clock_skew_s`), or the rules (consent, caps, cooldowns) would be misled.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from serving.errors import InvalidInput
from serving.schemas import ErrorResponse
from serving.settings import ServeSettings


def documented(**described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for error codes, e.g. `documented(**{"404": "Unknown customer."})`."""
    return {int(code): {"model": ErrorResponse, "description": text} for code, text in described.items()}


KEYED_ERRORS = documented(
    **{
        "400": "The body is not valid JSON.",
        "401": "No X-API-Key header.",
        "403": "The X-API-Key is not one of the configured keys.",
        "413": "Body, events or batch above the configured limit.",
        "422": "A field breaks the contract; `detail` names it.",
    }
)


def _time_error(loc: list[Any], msg: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": "outside_clock_tolerance"}


def check_now(now: datetime, loc: list[Any], clock: datetime, settings: ServeSettings) -> None:
    """A client's `now` only near the server's clock (backtests use the library, not the API).

    Raises:
        InvalidInput: naming the allowed range.
    """
    skew = timedelta(seconds=settings.max_clock_skew_s)
    lo, hi = clock - skew, clock + skew
    if not lo <= now <= hi:
        raise InvalidInput(
            [
                _time_error(
                    loc,
                    f"context.now must be within {settings.max_clock_skew_s:g} s of the server's clock: "
                    f"between {lo.isoformat()} and {hi.isoformat()} (leave it out for the server's clock)",
                )
            ]
        )


def check_not_ahead(
    times: Sequence[datetime | None], locs: Sequence[list[Any]], clock: datetime, settings: ServeSettings
) -> None:
    """No time beyond the clock's tolerance; all or nothing, each late one named by its `loc`.

    Raises:
        InvalidInput: one item per late time.
    """
    hi = clock + timedelta(seconds=settings.max_clock_skew_s)
    late = [loc for ts, loc in zip(times, locs, strict=True) if ts is not None and ts > hi]
    if late:
        raise InvalidInput(
            [
                _time_error(
                    loc,
                    f"ts must not be later than the server's clock plus {settings.max_clock_skew_s:g} s "
                    f"({hi.isoformat()})",
                )
                for loc in late
            ]
        )
