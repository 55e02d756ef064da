"""Where one request's CPU goes: `Service.score` (the route's work in process, one customer per call)
under cProfile, its own time grouped by area.

An area is a family of modules, recognised by the path of each profiled function's file (`serving/store`,
`pandas/`, `torch/`, ...), never by a function's name: the service's internals are rewritten often, and a
renamed function still lands in its module's area. C functions without a file (`~` in the profile) go by
their qualified name where it names a library (`torch.addmm`, `sqlite3.Connection.execute`); the rest
(`isinstance`, `len`, ...) are charged to the areas of the functions that called them.

The service may hand work to threads of its own (the micro-batcher scores the model's forward in one), so
every thread started while the profile is installed gets a profiler of its own, enabled when the measured
window opens, and their statistics are added up. cProfile measures wall time: a thread blocked on a lock
or asleep is waiting for another thread's work (or for nothing), not computing, so those functions form
an area of their own ("waiting"), left out of the shares.
"""

from __future__ import annotations

import cProfile
import pstats
import re
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from benchmarks._harness import REPO
from benchmarks.load_inprocess import InProcess, close_service

OTHER = "Python (standard library, builtins)"
WAITING = "waiting (locks, sleep: another thread's work, or idle)"

# (area, module path prefixes), first match wins: the narrow families before the packages holding them.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "request validation (pydantic, schemas, event validator)",
        (
            "pydantic/",
            "pydantic_core/",
            "annotated_types/",
            "serving/schemas",
            "features/validate",
            "features/parsing",
            "features/rejects",
        ),
    ),
    ("JSON", ("json/", "orjson/", "ujson")),
    ("the store (serving.store, sqlite3, redis)", ("serving/store", "sqlite3/", "redis/")),
    ("encoder (features.encoder, vocabulary)", ("features/encoder", "features/vocab")),
    ("model forward (predictor, torch)", ("predictor/", "torch/", "training/")),
    ("pandas and pyarrow", ("pandas/", "pyarrow/")),
    ("numpy", ("numpy/",)),
    ("decisions and rules (serving, features.policy)", ("serving/", "features/policy")),
    ("features (schema, columns, other)", ("features/",)),
    ("the benchmark's own code", ("benchmarks/",)),
    ("MLflow", ("mlflow/",)),
)

# C functions (file `~`): words of their qualified name that name a library, and its area.
_C_HINTS: tuple[tuple[str, str], ...] = (
    ("of '_thread.", WAITING),  # lock.acquire, RLock.acquire: blocked
    ("time.sleep", WAITING),
    ("of 'select.", WAITING),
    ("select.select", WAITING),
    ("pydantic_core", AREAS[0][0]),
    ("_json", "JSON"),
    ("json.", "JSON"),
    ("sqlite3", AREAS[2][0]),
    ("torch", AREAS[4][0]),
    ("pandas", AREAS[5][0]),
    ("pyarrow", AREAS[5][0]),
    ("numpy", AREAS[6][0]),
)

_PROJECT = ("serving", "features", "predictor", "training", "journey", "benchmarks")
_STDLIB = re.compile(r"/python3\.\d+/(?:lib-dynload/)?")


def module_path(filename: str, root: Path = REPO) -> str:
    """A profiled function's file as a module path: relative to site-packages, to the repository or to
    the standard library's folder (`pandas/core/frame.py`, `serving/service.py`, `json/decoder.py`);
    `~` (C functions) and `<frozen ...>` as they are."""
    if filename == "~" or filename.startswith("<"):
        return filename
    if "site-packages/" in filename:
        return filename.rsplit("site-packages/", 1)[1]
    prefix = f"{Path(root).as_posix().rstrip('/')}/"
    if filename.startswith(prefix):
        return filename[len(prefix) :]
    match = _STDLIB.search(filename)
    return filename[match.end() :] if match else filename


def area_of(path: str, func: str) -> str | None:
    """The area of a function from its module path (`module_path`) and name; None for a C function that
    names no library (its time belongs to its callers' areas)."""
    if path == "~":
        for word, area in _C_HINTS:
            if word in func:
                return area
        return None
    if path.startswith("/"):
        # Outside the repository, site-packages and the standard library: a copy of the project's code
        # (MLflow's code_paths), read from the project's package onwards.
        for package in _PROJECT:
            at = path.rfind(f"/{package}/")
            if at >= 0:
                path = path[at + 1 :]
                break
    for area, prefixes in AREAS:
        if path.startswith(prefixes):
            return area
    return OTHER


def group_by_area(stats: Mapping[tuple[str, int, str], Any], root: Path = REPO) -> dict[str, float]:
    """Own seconds per area of a cProfile run (`pstats.Stats.stats`: (file, line, name) -> (calls,
    primitive calls, own s, cumulative s, callers)); the areas sum to the profile's total own time."""
    areas: dict[str, float] = {}

    def add(area: str, seconds: float) -> None:
        areas[area] = areas.get(area, 0.0) + seconds

    for (filename, _, func), (_, _, own, _, callers) in stats.items():
        area = area_of(module_path(filename, root), func)
        if area is not None:
            add(area, own)
            continue
        # Charged to the callers, each with the time of its own calls (cProfile's per-caller figures).
        shares = {k: v[2] for k, v in (callers or {}).items() if isinstance(v, tuple) and len(v) >= 3}
        if not shares or sum(shares.values()) <= 0:
            add(OTHER, own)
            continue
        total = sum(shares.values())
        for (c_file, _, c_func), seconds in shares.items():
            add(area_of(module_path(c_file, root), c_func) or OTHER, own * seconds / total)
    return areas


def profile_summary(
    stats: Mapping[tuple[str, int, str], Any], calls: int, wall_s: float, top: int, root: Path = REPO
) -> dict[str, Any]:
    """Of a profile of `calls` calls that took `wall_s` seconds under the profiler: own milliseconds per
    call and share of each area (largest first; waiting apart, outside the shares), and the top
    functions by own time (waiting ones left out)."""
    areas = group_by_area(stats, root)
    waiting = areas.pop(WAITING, 0.0)
    total = sum(areas.values()) or 1.0
    entries = []
    for (filename, line, func), (_, _, own, cum, _) in stats.items():
        path = module_path(filename, root)
        if area_of(path, func) != WAITING:
            entries.append((own, cum, f"{path}:{line}({func})" if line else func))
    entries.sort(reverse=True)
    return {
        "calls": calls,
        "ms_per_call": round(wall_s / calls * 1000, 3),
        "busy_ms_per_call": round(sum(areas.values()) / calls * 1000, 3),
        "waiting_ms_per_call": round(waiting / calls * 1000, 3),
        "areas": {
            name: {"ms_per_call": round(seconds / calls * 1000, 4), "share": round(seconds / total, 4)}
            for name, seconds in sorted(areas.items(), key=lambda kv: -kv[1])
        },
        "top": [
            {"function": name, "own_ms": round(own / calls * 1000, 4), "cum_ms": round(cum / calls * 1000, 4)}
            for own, cum, name in entries[:top]
        ],
    }


class AllThreads:
    """cProfile in this thread and in every thread started while `installed`, each thread's profiler
    enabled at its first event after `open` (a profiler only profiles the thread that enabled it)."""

    def __init__(self) -> None:
        self._main = cProfile.Profile()
        self._others: list[cProfile.Profile] = []
        self._lock = threading.Lock()
        self._open = False

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if not self._open:
            return
        sys.setprofile(None)
        profile = cProfile.Profile()
        with self._lock:
            self._others.append(profile)
        profile.enable()

    def install(self) -> None:
        threading.setprofile(self._hook)

    def uninstall(self) -> None:
        threading.setprofile(None)

    def open(self) -> None:
        self._open = True
        self._main.enable()

    def close(self) -> None:
        self._main.disable()
        self._open = False

    @property
    def threads(self) -> int:
        return 1 + len(self._others)

    def stats(self) -> dict[tuple[str, int, str], Any]:
        """Every thread's statistics added up (`pstats.Stats.stats`)."""
        merged = pstats.Stats(self._main)
        with self._lock:
            others = list(self._others)
        for profile in others:
            merged.add(profile)
        out: dict[tuple[str, int, str], Any] = merged.stats  # type: ignore[attr-defined]
        return out


def profile_service(
    inproc: InProcess, stored_bodies: list[str], inline_bodies: list[str], calls: int, top: int = 12
) -> dict[str, Any]:
    """cProfile of the route's work in process (`InProcess.answer`: parse, `Service.score`, answer), one
    customer per call, for the stored and the inline path, each on a new `Service` whose threads are
    profiled too."""
    out: dict[str, Any] = {}
    for name, bodies in (("stored", stored_bodies), ("inline", inline_bodies)):
        profiler = AllThreads()
        profiler.install()
        try:
            service = inproc.new_service()
            try:
                inproc.answer(bodies[-1], service)
                started = time.perf_counter()
                profiler.open()
                try:
                    for i in range(calls):
                        inproc.answer(bodies[(i + 101) % len(bodies)], service)
                finally:
                    profiler.close()
                wall = time.perf_counter() - started
                out[name] = profile_summary(profiler.stats(), calls, wall, top)
                out[name]["threads"] = profiler.threads
            finally:
                close_service(service)
        finally:
            profiler.uninstall()
    return out
