"""The open-loop load generator: a separate, light process (standard library and aiohttp only, one asyncio
loop, keep-alive connections) that sends requests on a fixed schedule whatever the answers.

    python -m benchmarks.load_generator SPEC.json OUT.json

SPEC holds the url, the bodies (cycled), the rate, the warm-up and measured seconds, the timeout, the
headers and the method; OUT receives the measured window's (scheduled, started, finished, status) records,
seconds on the loop's monotonic clock, and the generator's own CPU seconds. `benchmarks.load_client`
starts it once per run and summarises the records.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any


def send_times(rate: float, duration_s: float) -> list[float]:
    """Offsets (seconds from the start) of the requests of an open-loop run: evenly spaced at `rate`.

    Raises:
        ValueError: a rate or duration that is not positive.
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be positive, got {rate} and {duration_s}")
    return [i / rate for i in range(round(rate * duration_s))]


async def open_loop(spec: dict[str, Any]) -> dict[str, Any]:
    """Sends the requests of `spec` at their scheduled times; the records of the measured window."""
    import aiohttp

    bodies = [b.encode() for b in spec["bodies"]]
    rate, warmup, duration = float(spec["rate"]), float(spec["warmup_s"]), float(spec["duration_s"])
    headers = {"Content-Type": "application/json", **spec.get("headers", {})}
    method = spec.get("method", "POST")
    loop = asyncio.get_running_loop()
    records: list[tuple[float, float, float, str]] = []
    connector = aiohttp.TCPConnector(limit=int(spec.get("max_connections", 256)), ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=float(spec["timeout_s"]))

    async def one(session: aiohttp.ClientSession, body: bytes, at: float) -> None:
        started = loop.time()
        try:
            async with session.request(method, spec["url"], data=body or None, headers=headers) as resp:
                await resp.read()
                status = str(resp.status)
        except TimeoutError:
            status = "timeout"
        except aiohttp.ClientError as err:
            status = type(err).__name__
        records.append((at, started, loop.time(), status))

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Open a few keep-alive connections before the clock starts.
        await asyncio.gather(*(one(session, bodies[i % len(bodies)], loop.time()) for i in range(4)))
        records.clear()
        offsets = send_times(rate, warmup + duration) if warmup + duration > 0 else []
        t0 = loop.time() + 0.05
        tasks = []
        for i, offset in enumerate(offsets):
            at = t0 + offset
            delay = at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, bodies[i % len(bodies)], at)))
        await asyncio.gather(*tasks)
    measured = [r for r in records if r[0] >= t0 + warmup - 1e-9]
    return {"samples": measured}


def generate(spec_path: Path, out_path: Path) -> None:
    """The generator process: reads its spec, runs the open loop, writes the raw records and its CPU time."""
    spec = json.loads(Path(spec_path).read_text())
    gc.disable()  # no collector pauses inside the measured window (the run is short and allocates little)
    cpu0 = time.process_time()
    result = asyncio.run(open_loop(spec))
    result["generator_cpu_s"] = time.process_time() - cpu0
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m benchmarks.load_generator SPEC.json OUT.json")
    generate(Path(sys.argv[1]), Path(sys.argv[2]))
