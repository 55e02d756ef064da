"""The fixed figures of the load benchmark (`benchmarks.serving_load`): its targets, the shape of every
request, and the names of its sweeps; plus the parsing of its list options. No side effects, no imports
beyond the standard library, so every other `load_*` module and the tests can import it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

START = "<!-- serving_load:start -->"
END = "<!-- serving_load:end -->"
HOST = "127.0.0.1"
API_KEY = "bench-key"

# The targets of DESIGN.md ("Figures to reach") and of issue 11.
P99_TARGET_MS = 10.0
TARGET_RATE = 200.0
BATCH_TARGET = 5_000.0  # customers/s, for `/v1/score/batch` and for `journey score-audience`
MLFLOW_FACTOR = 5.0  # journey serve must hold at least this many times the rate mlflow models serve holds

HISTORY_LEN = 200  # ServeSettings.history_len's default: the store keeps what the server would keep
INLINE_EVENTS = 20
N_ITEMS_ANSWERED = 10
PREP_VERSION = 2  # bump when the prepared artefacts change meaning (2: the model registered as a predictor)

JOURNEY = "journey serve"
MLFLOW = "mlflow models serve"

T = TypeVar("T")


def parse_list(values: Iterable[str], kind: Callable[[str], T], name: str) -> list[T]:
    """The values of a list option, given as `1,2`, `1 2` or both, in order, without repeats.

    Raises:
        ValueError: an empty list, or a value `kind` does not accept (named with the option).
    """
    out: list[T] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                parsed = kind(part)
            except ValueError as err:
                raise ValueError(f"{name}: {part!r} is not a valid value ({err})") from err
            if parsed not in out:
                out.append(parsed)
    if not out:
        raise ValueError(f"{name}: no values given")
    return out


def positive_int(text: str) -> int:
    """An integer of at least 1 (a worker or thread count).

    Raises:
        ValueError: not an integer, or below 1.
    """
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A number above 0 (a request rate).

    Raises:
        ValueError: not a number, or not above 0.
    """
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be above 0, got {value:g}")
    return value


def threads_for(workers: int, cores: int, setting: str = "auto") -> int:
    """Torch intra-op threads per worker: `setting` when it is a number, else what `journey serve
    --workers N` uses by default (`serving.settings.default_torch_threads`).

    Raises:
        ValueError: a setting that is neither `auto` nor a positive integer.
    """
    if setting == "auto":
        from serving.settings import default_torch_threads

        return default_torch_threads(cores, workers)
    return positive_int(setting)


def sweep_name(server: str, path: str, workers: int | None = None) -> str:
    """The name of a sweep in the results and the tables, e.g. `journey serve, stored, 2 workers`."""
    if workers is None:
        return f"{server}, {path}"
    return f"{server}, {path}, {workers} worker{'s' if workers != 1 else ''}"


def sweep_info(name: str, recorded: dict[str, dict[str, object]] | None = None) -> dict[str, object]:
    """Server, path and workers of a sweep: as recorded in the results, else read from its name (the
    results of runs before `--workers` named their sweeps `journey serve, stored`, one worker)."""
    if recorded and name in recorded:
        return recorded[name]
    parts = [p.strip() for p in name.split(",")]
    workers = 1
    if len(parts) > 2 and parts[2].split(" ")[0].isdigit():
        workers = int(parts[2].split(" ")[0])
    return {"server": parts[0], "path": parts[1] if len(parts) > 1 else "", "workers": workers}
