"""In-process measurements of the load benchmark: the served model and a `Service` over a copy of the
store in this process (loaded the way `journey score-audience` loads them), the floor (one customer's
encoder, the bare network forward, the predictor's answer, the route's work), and batch scoring through
`Service.score` and through the predictor alone.

Everything goes through public entry points (the request and answer schemas, `Service.score`, the
`InferenceUnit` protocol, `features.encoder.encode`), so the service's internals may change under it; a
step whose entry point is missing is reported as not measured, with the reason, instead of failing the run.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.load_client import percentile
from benchmarks.load_protocol import API_KEY, HISTORY_LEN, N_ITEMS_ANSWERED
from benchmarks.load_servers import fresh_copy


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    """Median and p99 milliseconds of `runs` calls of `fn`, after one call that warms caches."""
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": round(statistics.median(times), 4),
        "p99_ms": round(percentile(times, 99), 4),
        "runs": runs,
    }


def rate_of(times: Sequence[float], size: int) -> dict[str, Any]:
    """customers/s of calls of `size` customers that took `times` seconds each."""
    return {
        "customers_per_request": size,
        "calls": len(times),
        "customers_per_s": round(size * len(times) / sum(times), 1),
        "median_s": round(statistics.median(times), 4),
    }


class InProcess:
    """The champion and a `Service` over a copy of the prepared store, in this process."""

    def __init__(self, work: Path, torch_threads: int) -> None:
        import torch

        from predictor.registry import CHAMPION, MODEL_NAME
        from serving.model import ModelManager
        from serving.service import Service
        from serving.settings import ServeSettings
        from serving.store import open_store

        torch.set_num_threads(torch_threads)  # as the server's lifespan does
        url = fresh_copy(work / "store-seed.db", work / "inproc.db")
        self.store = open_store(url, max_events=HISTORY_LEN)
        manager = ModelManager(MODEL_NAME, CHAMPION)
        result = manager.reload()
        if result["error"] or manager.current is None:
            raise RuntimeError(f"the champion did not load: {result['error']}")
        self.model = manager.current
        self.manager = manager
        self.settings = ServeSettings.from_dict(
            {"api_keys": [API_KEY], "reload_interval_s": 0, "torch_threads": torch_threads}
        )
        self.service = Service(self.settings, self.store, manager)

    def new_service(self) -> Any:
        """Another `Service` over the same store and model (threads it starts start now: the profile)."""
        from serving.service import Service

        return Service(self.settings, self.store, self.manager)

    def answer(self, body: str, service: Any = None) -> str:
        """What `POST /v1/score` does with a body, without HTTP: parse, inline events, score, answer JSON."""
        from serving import schemas
        from serving.service import CustomerRequest

        req = schemas.ScoreRequest.model_validate_json(body)
        ctx = req.context or schemas.ScoreContext.model_validate({})
        events = inline_events()([e.model_dump() for e in req.events], req.customer_id, where="events")
        channels = {c.value for c in ctx.channels} if ctx.channels is not None else None
        request = CustomerRequest(req.customer_id, events, ctx.now, channels, ctx.n_items)
        out = (service or self.service).score([request])[0]
        return schemas.ScoreResponse.model_validate(out).model_dump_json()

    def requests(self, customers: Sequence[str], now: str) -> list[Any]:
        """Stored-path requests (no inline events) of these customers at `now`, `email` only."""
        import pandas as pd

        from serving.service import CustomerRequest

        when = pd.Timestamp(now).to_pydatetime()
        return [CustomerRequest(c, now=when, channels={"email"}, n_items=N_ITEMS_ANSWERED) for c in customers]

    def encoded(self, customers: Sequence[str], now: str) -> Any:
        """The encoder's batch for these customers' stored events at `now` (the served vocabulary)."""
        import pandas as pd

        from features.encoder import encode

        events = self.store.events(list(customers))
        cutoffs = pd.DataFrame(
            {"customer_id": list(customers), "cutoff": pd.to_datetime([now] * len(customers), utc=True)}
        )
        return encode(events, cutoffs, self.model.vocab, self.model.encoder_config)

    def close(self) -> None:
        close_service(self.service)
        self.store.close()


def inline_events() -> Callable[..., Any]:
    """The service's converter of a request's inline events (rows, customer_id, where=...) into what
    `CustomerRequest` takes."""
    from serving.service import request_events

    return request_events


def close_service(service: Any) -> None:
    """Stops what a `Service` started (its micro-batcher's thread), where it has anything to stop."""
    close = getattr(service, "close", None)
    if callable(close):
        close()


def model_steps(
    inproc: InProcess, customer: str, now: str
) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    """One customer's encoder, bare network forward and predictor answer as timed steps; the steps whose
    entry point is missing, with the reason."""
    import numpy as np
    import pandas as pd
    import torch

    from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS, encode

    steps: dict[str, Callable[[], Any]] = {}
    missing: dict[str, str] = {}
    model = inproc.model
    try:
        events = inproc.store.events([customer])
        cutoffs = pd.DataFrame({"customer_id": [customer], "cutoff": pd.to_datetime([now], utc=True)})
        batch = encode(events, cutoffs, model.vocab, model.encoder_config)
        steps["encode"] = lambda: encode(events, cutoffs, model.vocab, model.encoder_config)
    except (AttributeError, TypeError, KeyError) as err:
        return steps, {"encode": repr(err), "forward": "no encoded input", "predict": "no encoded input"}
    unit = getattr(model, "predictor", None)
    net = getattr(unit, "model", None)
    if isinstance(net, torch.nn.Module):
        tokens = {n: torch.from_numpy(np.asarray(batch.tokens[n], dtype=np.int64)) for n in TOKEN_FIELDS}
        columns = [batch.aggregates[a] for a in AGGREGATE_NAMES]
        aggregates = torch.from_numpy(np.column_stack(columns).astype(np.float32))

        def forward() -> None:
            with torch.inference_mode():
                net(tokens, aggregates)

        steps["forward"] = forward
    else:
        missing["forward"] = "the served model has no `predictor.model` network"
    if unit is not None and callable(getattr(unit, "score", None)):
        steps["predict"] = lambda: unit.score(batch, N_ITEMS_ANSWERED)
    else:
        missing["predict"] = "the served model has no `predictor.score`"
    return steps, missing


def measure_floor(
    inproc: InProcess,
    stored_bodies: list[str],
    inline_bodies: list[str],
    now: str,
    runs: int,
    threads: Sequence[int],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Median times of each step on one customer, at each torch thread count (the network alone at the
    other counts: what more intra-op threads could speed up)."""
    import torch

    customer = json.loads(stored_bodies[0])["customer_id"]
    steps, missing = model_steps(inproc, customer, now)
    stored_cycle = itertools.cycle(stored_bodies[1:] or stored_bodies)
    inline_cycle = itertools.cycle(inline_bodies)
    steps["service_stored"] = lambda: inproc.answer(next(stored_cycle))
    steps["service_inline"] = lambda: inproc.answer(next(inline_cycle))
    out: dict[str, Any] = {name: {} for name in steps}
    previous = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            for name, fn in steps.items():
                if t != threads[0] and name not in ("forward", "predict"):
                    continue
                out[name][str(t)] = timed(fn, runs)
                log(f"  floor {name} (threads {t}): median {out[name][str(t)]['median_ms']:.3f} ms")
    finally:
        torch.set_num_threads(previous)
    out["not_measured"] = missing
    out["history_events"] = len(inproc.store.events([customer]))
    return out


def measure_batch_inprocess(
    inproc: InProcess, stored: list[str], now: str, size: int, calls: int, threads: Sequence[int]
) -> dict[str, Any]:
    """customers/s of `Service.score` (decisions recorded) and of the predictor alone on `size` customers'
    encoded rows, at each torch thread count."""
    import torch

    groups = [stored[(i * size) % len(stored) :][:size] for i in range(calls + 1)]
    batch = inproc.encoded(groups[0], now)
    unit = getattr(inproc.model, "predictor", None)
    out: dict[str, Any] = {"service": {"by_threads": {}}, "predict": {"by_threads": {}}}
    previous = torch.get_num_threads()
    try:
        for t in threads:
            torch.set_num_threads(t)
            if unit is not None:
                unit.score(batch, N_ITEMS_ANSWERED)
                times = []
                for _ in range(calls):
                    started = time.perf_counter()
                    unit.score(batch, N_ITEMS_ANSWERED)
                    times.append(time.perf_counter() - started)
                out["predict"]["by_threads"][str(t)] = rate_of(times, len(groups[0]))
            times = []
            for g in groups[1:]:
                requests = inproc.requests(g, now)
                started = time.perf_counter()
                inproc.service.score(requests)
                times.append(time.perf_counter() - started)
            out["service"]["by_threads"][str(t)] = rate_of(times, len(groups[1]))
    finally:
        torch.set_num_threads(previous)
    return out
