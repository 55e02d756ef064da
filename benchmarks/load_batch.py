"""Throughput of many customers at once, in customers/s: `POST /v1/score/batch` (one request after another,
as a batch client sends them) and `journey score-audience` (the CLI in its own process, over a segment of
the prepared shop, median over repeats, each into a fresh store).
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

from benchmarks._harness import prioritised
from benchmarks.load_inprocess import rate_of
from benchmarks.load_protocol import N_ITEMS_ANSWERED
from benchmarks.load_servers import failure_line, post_json

_SCORED = re.compile(r"([\d,]+) customers scored in ([\d.]+) s")


def measure_batch_http(base: str, stored: list[str], now: str, size: int, calls: int) -> dict[str, Any]:
    """customers/s through `POST /v1/score/batch` (decisions recorded), after one warm-up request."""
    context = {"now": now, "channels": ["email"], "n_items": N_ITEMS_ANSWERED}
    bodies = []
    for i in range(calls + 1):
        group = stored[(i * size) % len(stored) :][:size]
        bodies.append(
            json.dumps({"customers": [{"customer_id": c, "context": context} for c in group]}).encode()
        )
    status, _ = post_json(f"{base}/v1/score/batch", bodies[0])
    times, errors = [], int(status != 200)
    for body in bodies[1:]:
        started = time.perf_counter()
        status, _ = post_json(f"{base}/v1/score/batch", body)
        times.append(time.perf_counter() - started)
        errors += int(status != 200)
    size_done = len(json.loads(bodies[1])["customers"])
    return {**rate_of(times, size_done), "errors": errors}


def parse_audience_output(text: str) -> tuple[int, float]:
    """(customers, seconds) from `journey score-audience`'s summary line, e.g. `20,000 customers scored in
    9.8 s (2,030/s) by ...`: the CLI's own clock, from reading the events to the file written.

    Raises:
        ValueError: no summary line in `text`.
    """
    match = _SCORED.search(text)
    if match is None:
        raise ValueError(f"no 'N customers scored in S s' line in the output: {text[-500:]!r}")
    return int(match.group(1).replace(",", "")), float(match.group(2))


def audience_command(
    bin_dir: Path, events: Path, out: Path, segment: Path, now: str, store_url: str, chunk: int
) -> list[str]:
    """`journey score-audience` over a segment of the shop, decisions recorded in `store_url`."""
    return [
        str(bin_dir / "journey"),
        "score-audience",
        "--events",
        str(events),
        "--out",
        str(out),
        "--now",
        now,
        "--segment",
        str(segment),
        "--items",
        str(N_ITEMS_ANSWERED),
        "--chunk",
        str(chunk),
        "--no-progress",
        "--set",
        f"store_url={store_url}",
    ]


def measure_audience(
    bin_dir: Path,
    env: dict[str, str],
    work: Path,
    segment: Path,
    now: str,
    repeats: int,
    chunk: int,
    nice: int = 0,
) -> dict[str, Any]:
    """`journey score-audience` `repeats` times, each into a fresh, empty store; customers/s by the CLI's
    own clock (median over the repeats) and the whole process's wall time (start-up and model load too)."""
    folder = work / "audience"
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(repeats):
        db, out = folder / f"store-{i}.db", folder / f"audience-{i}.parquet"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        command = audience_command(
            bin_dir, work / "shop" / "events", out, segment, now, f"sqlite:///{db}", chunk
        )
        started = time.perf_counter()
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            check=False,
            start_new_session=True,
            preexec_fn=prioritised(nice),
        )
        wall = time.perf_counter() - started
        if done.returncode != 0:
            reason = failure_line(done.stderr or done.stdout)
            raise RuntimeError(f"journey score-audience exited ({done.returncode}): {reason}")
        customers, seconds = parse_audience_output(done.stdout)
        runs.append(
            {
                "customers": customers,
                "seconds": seconds,
                "process_s": round(wall, 2),
                "customers_per_s": round(customers / seconds, 1) if seconds > 0 else None,
            }
        )
    rates = [r["customers_per_s"] for r in runs if r["customers_per_s"] is not None]
    return {
        "runs": runs,
        "customers": runs[0]["customers"] if runs else 0,
        "customers_per_s": round(statistics.median(rates), 1) if rates else None,
        "chunk": chunk,
        "command": audience_command(
            bin_dir,
            Path("SHOP/events"),
            Path("OUT.parquet"),
            Path("SEGMENT.csv"),
            now,
            "sqlite:///STORE.db",
            chunk,
        )[1:],
    }
