"""The CLI's one error handler: a user's mistake is one line on stderr and exit status 1, a bug keeps its
traceback.

The library says "this is the user's to fix" with typed errors: a missing file (`FileNotFoundError`), a bad
value or setting (`ValueError`, pydantic's `ValidationError`, a YAML syntax error), an unknown time zone, an
unknown registered model or alias, a model the service refuses, an input with too many rejected rows. The
root command group (`CommandGroup`) turns those into `error: <one line>`; anything else propagates with
its traceback, and `journey -v ...` shows the traceback of a handled error too.
"""

from __future__ import annotations

import sys
from typing import Any
from zoneinfo import ZoneInfoNotFoundError

import typer
import yaml
from typer.core import TyperGroup

# Plain I/O mistakes: a path that is not there, or not what it should be, or not ours to read or write; a
# server (Redis) that does not answer.
_OS_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ConnectionError,
)
# The library's own user errors, by module and class: looked up only where their module is loaded, so
# the CLI imports none of these modules before a command needs them.
_LIBRARY_ERRORS = (
    ("features.validate", "RejectRatioExceeded"),
    ("serving.model", "ModelRefused"),
    ("predictor.registry", "NotAJourneyModel"),
)
_TIME_ZONE_ERRORS = (("pytz.exceptions", "UnknownTimeZoneError"),)
# MLflow's code for "no such registered model or version"; a missing alias comes as an invalid parameter
# whose message says "not found" (the same code also flags bad logging calls: bugs, so only that message).
_MISSING_IN_MLFLOW = "RESOURCE_DOES_NOT_EXIST"
_BAD_PARAMETER_IN_MLFLOW = "INVALID_PARAMETER_VALUE"


def _loaded(module: str, name: str) -> type | None:
    found = getattr(sys.modules.get(module), name, None)
    return found if isinstance(found, type) else None


def _is_any(err: BaseException, names: tuple[tuple[str, str], ...]) -> bool:
    return any((kind := _loaded(m, n)) is not None and isinstance(err, kind) for m, n in names)


def one_line(text: str) -> str:
    """The text with its line breaks and runs of spaces folded (YAML's and MLflow's errors span lines)."""
    return " ".join(text.split())


def describe_validation(err: Any) -> str:
    """A pydantic `ValidationError` in one line: each field (dotted) and what is wrong with it."""
    problems = []
    for e in err.errors():
        where = ".".join(map(str, e["loc"]))
        message = "unknown setting" if e["type"] == "extra_forbidden" else e["msg"]
        message = message.removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return f"invalid {err.title}: " + "; ".join(problems)


def user_error(err: BaseException) -> str | None:
    """The one line to show for an error that is the user's to fix; None for anything else (a bug)."""
    validation = _loaded("pydantic_core", "ValidationError")
    if validation is not None and isinstance(err, validation):
        return one_line(describe_validation(err))
    if isinstance(err, ZoneInfoNotFoundError) or _is_any(err, _TIME_ZONE_ERRORS):
        text = str(err.args[0]) if err.args else ""
        return text if "time zone" in text else f"unknown time zone {text!r}"  # zoneinfo's says so
    if isinstance(err, (*_OS_ERRORS, ValueError, yaml.YAMLError)) or _is_any(err, _LIBRARY_ERRORS):
        return one_line(str(err)) or type(err).__name__
    mlflow_error = _loaded("mlflow.exceptions", "MlflowException")
    if mlflow_error is not None and isinstance(err, mlflow_error):
        code, message = getattr(err, "error_code", None), one_line(str(getattr(err, "message", err)))
        if code == _MISSING_IN_MLFLOW or (code == _BAD_PARAMETER_IN_MLFLOW and "not found" in message):
            return message
    return None


class CommandGroup(TyperGroup):
    """The root command group: every command runs inside its error handler."""

    def invoke(self, ctx: Any) -> Any:  # ctx: the click Context that typer vendors (typer._click)
        try:
            return super().invoke(ctx)
        except Exception as err:
            message = user_error(err)
            if message is None or ctx.params.get("verbose"):
                raise
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
