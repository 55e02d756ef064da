"""The decision audit's steps: a trained shop, and one store's run (history, audience, real-time day, bursts).

`benchmarks.decision_audit` is the command; this module does the work on the servers of
`benchmarks.audit_servers`, and `benchmarks.audit_checks` judges it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from benchmarks.audit_servers import call, journey_command, redis_server, serving

# Any eligible message beats sending nothing, and one call in five explores: only the rules hold sends back.
EAGER = {"min_uplift": -1.0, "epsilon": 0.2, "reload_interval_s": 0, "history_len": 200}

Log = Callable[[str], None]


@dataclass(frozen=True)
class Backend:
    name: str  # "sqlite" or "redis"
    replicas: int


def prepare(work: Path, customers: int, seed: int, train_rows: int, epochs: int, log: Log) -> dict[str, Any]:
    """Simulates, builds, trains and registers a champion in a scratch MLflow store (cached under `work`)."""
    uri = f"sqlite:///{(work / 'mlruns' / 'mlflow.db').resolve()}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    key = {"customers": customers, "seed": seed, "train_rows": train_rows, "epochs": epochs, "v": 1}
    marker = work / "prepared.json"
    if marker.exists():
        prepared: dict[str, Any] = json.loads(marker.read_text())
        if prepared.get("key") == key:
            log(f"reusing the prepared shop and model in {work}")
            return prepared
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from features.build import build_features
    from features.sim import SimConfig, simulate
    from features.snapshots import BuildConfig
    from training.config import TrainConfig
    from training.promote import promote
    from training.train import train

    shop, features = work / "shop", work / "features"
    log(f"simulating {customers:,} customers -> {shop}")
    simulate(SimConfig(n_customers=customers, seed=seed, control_share=0.05), shop, progress=False)
    log(f"building features -> {features}")
    build_features(shop / "events", features, BuildConfig(), decisions=shop / "decisions.parquet")
    log("training (the audit judges the rules, so a small budget is enough)")
    config = TrainConfig(
        features=str(features),
        shop=str(shop),
        fit={"max_train_rows": train_rows, "max_epochs": epochs},
        n_boot=0,
        journey_map={"enabled": False},
        baselines={"enabled": False},  # the audit serves this model whatever it scores: no comparison
    )
    # The audit checks the rules, which must hold whatever the model says: its model is served even when
    # the gate would refuse it (registered and promoted by force, which the registry records), and the
    # section says so.
    result = train(config, progress=False, force_register=True)
    version = result.version
    if version is None:
        raise SystemExit("training registered no model")
    decision = promote(features, str(version), force=True)
    failures = list(result.gate_failures) or list(decision.failures)
    note = (
        "passed the gate"
        if not failures
        else "served by force: the gate refused it (" + "; ".join(failures) + ")"
    )
    prepared = {
        "key": key,
        "customers": customers,
        "shop": str(shop),
        "features": str(features),
        "tracking_uri": uri,
        "version": str(version),
        "model_note": note,
    }
    marker.write_text(json.dumps(prepared, indent=2))
    return prepared


def _rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Events as JSON request rows (missing values left out)."""
    out = []
    for record in frame.assign(ts=frame["ts"].map(lambda t: t.isoformat())).to_dict(orient="records"):
        out.append(
            {
                str(k): v
                for k, v in record.items()
                if v is not None and not (isinstance(v, float) and np.isnan(v))
            }
        )
    return out


def shop_events(shop: Path) -> pd.DataFrame:
    frame = pq.read_table(shop / "events").to_pandas()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return frame


def run_backend(backend: Backend, prepared: dict[str, Any], args: Any, log: Log) -> dict[str, Any]:
    """One store's audit run; returns its counts (see `benchmarks.decision_audit`)."""
    from benchmarks.audit_checks import audit
    from serving.settings import ServeSettings
    from serving.store import open_store

    work = Path(args.work) / f"run-{backend.name}-{uuid.uuid4().hex[:6]}"
    work.mkdir(parents=True)
    with _store_url(backend, work) as url:
        events = shop_events(Path(prepared["shop"]))
        real_now = pd.Timestamp.now(tz="UTC").floor("s") - pd.Timedelta(minutes=2)
        events["ts"] = events["ts"] + (real_now - events["ts"].max())
        day_start = real_now - pd.Timedelta(days=1)
        history, day = events[events["ts"] < day_start], events[events["ts"] >= day_start]
        (work / "history").mkdir()
        pq.write_table(
            pa.Table.from_pandas(history, preserve_index=False), work / "history" / "part-0.parquet"
        )
        log(f"[{backend.name}] loading {len(history):,} events of history into {url.split('?')[0]}")
        with open_store(url, max_events=int(EAGER["history_len"])) as store:
            ids = history["customer_id"].unique()
            for lo in range(0, len(ids), 2_000):
                store.append_events(history[history["customer_id"].isin(ids[lo : lo + 2_000])])
        config = work / "serve.yaml"
        config.write_text(yaml.safe_dump({**EAGER, "store_url": url}))
        settings = ServeSettings.load(config)
        counts: dict[str, Any] = {}
        with serving(config, backend.replicas, work) as ports:
            # Bursts first, on customers nothing was sent to yet: the eager policy sends each one message
            # if any is eligible, and the other 49 concurrent calls must find it already sent.
            log(f"[{backend.name}] bursts of {args.burst_size} concurrent calls")
            counts.update(_bursts(ports, sorted(history["customer_id"].unique()), args))
            log(f"[{backend.name}] audience export of every customer at the server's clock")
            subprocess.run(
                [journey_command(), "score-audience", "--events", str(work / "history"), "--out",
                 str(work / "audience.parquet"), "--config", str(config), "--no-progress"],
                check=True,
            )  # fmt: skip
            audience = pd.read_parquet(work / "audience.parquet")
            counts["audience_customers"] = len(audience)
            posted, replay = _replay_day(ports, day, args, log, backend.name)
            counts.update(replay)
        clock_end = pd.Timestamp.now(tz="UTC")
        with open_store(url) as store:
            decisions = store.export_decisions()
        counts["stored_decisions"] = len(decisions)
        counts["recorded_answers"] = (
            int(audience["decision_id"].notna().sum())
            + counts.pop("recorded_calls")
            + counts.pop("burst_recorded")
        )
        # The day's events reached the service when they were posted, after the audience export: each
        # decision is judged on what had arrived when it was made.
        late = day[day["customer_id"].isin(list(posted))].copy()
        late["known_at"] = late["customer_id"].map(posted).astype("datetime64[us, UTC]")
        known = history.copy()
        known["known_at"] = pd.NaT  # the history was in the store before any decision
        truth = pd.concat([known, late], ignore_index=True)
        truth["known_at"] = truth["known_at"].astype("datetime64[us, UTC]")
        sends = decisions[decisions["action"] != "no_send"]
        tolerance = float(getattr(settings, "max_clock_skew_s", 0.0))
        found = audit(truth, sends, settings.rules, clock_end=clock_end, tolerance_s=tolerance)
        counts.update(
            sends=found.sends,
            opted_out=found.opted_out + counts["inline_unsubscribe_sends"],
            ineligible=dict(found.ineligible),
            ineligible_total=sum(found.ineligible.values()),
            gap=found.gap,
            cooldown=found.cooldown,
            cap_7d=found.cap_7d,
            cap_28d=found.cap_28d,
            future=found.future + counts["future_now_sends"],
        )
        counts["unsafe"] = found.unsafe + counts["inline_unsubscribe_sends"] + counts["future_now_sends"]
        counts["unsafe"] += counts["preview_recorded"]
    return counts


@contextmanager
def _store_url(backend: Backend, work: Path) -> Iterator[str]:
    if backend.name == "sqlite":
        yield f"sqlite:///{(work / 'online.db').resolve()}"
        return
    with redis_server(work / "redis") as url:
        yield f"{url}?namespace=audit-{uuid.uuid4().hex[:6]}:"


def _replay_day(
    ports: list[int], day: pd.DataFrame, args: Any, log: Log, name: str
) -> tuple[dict[str, pd.Timestamp], dict[str, Any]]:
    """Posts each chosen customer's events of the day, then scores them 1-4 times, with odd calls mixed in."""
    rng = np.random.default_rng(args.seed)
    customers = day["customer_id"].unique()
    chosen = rng.choice(customers, size=min(args.day_customers, len(customers)), replace=False)
    by_customer = {c: g for c, g in day[day["customer_id"].isin(chosen)].groupby("customer_id")}
    plans = [(str(c), int(rng.integers(1, 5)), rng.random(4)) for c in chosen]
    n_events = sum(len(g) for g in by_customer.values())
    log(f"[{name}] real-time day: {len(plans):,} customers, {n_events:,} events")

    arrived: dict[str, pd.Timestamp] = {}

    def one(i: int) -> dict[str, int]:
        customer, repeats, draws = plans[i]
        port = ports[i % len(ports)]
        out = dict.fromkeys(
            ("ok", "refused", "future_sends", "unsub_sends", "preview_recorded", "recorded"), 0
        )
        status, body = call(port, "POST", "/v1/events", {"events": _rows(by_customer[customer])})
        if status != 200:
            raise RuntimeError(f"POST /v1/events for {customer}: {status} {body}")
        arrived[customer] = pd.Timestamp.now(tz="UTC")  # stored by now: later decisions may see them
        calls: list[tuple[dict[str, Any], str]] = [({"customer_id": customer}, "plain")] * repeats
        now = pd.Timestamp.now(tz="UTC")
        if draws[0] < 0.1:
            calls.append(
                (
                    {"customer_id": customer, "context": {"now": (now + pd.Timedelta(days=1)).isoformat()}},
                    "future",
                )
            )
        if draws[1] < 0.05:
            calls.append(({"customer_id": customer, "context": {"now": "2200-01-01T00:00:00Z"}}, "future"))
        if draws[2] < 0.1:
            unsub = {"ts": (now - pd.Timedelta(seconds=5)).isoformat(), "event_type": "email_unsubscribe"}
            calls.append(({"customer_id": customer, "events": [unsub]}, "unsubscribe"))
        if draws[3] < 0.1:
            calls.append(({"customer_id": customer, "record": False}, "preview"))
        for j, (body_in, kind) in enumerate(calls):
            status, answer = call(ports[(i + j) % len(ports)], "POST", "/v1/score", body_in)
            if status != 200:
                if kind != "future":
                    raise RuntimeError(f"POST /v1/score {body_in}: {status} {answer}")
                out["refused"] += 1
                continue
            out["ok"] += 1
            nba = answer["next_best_action"]
            sent = nba["action"] != "no_send"
            out["future_sends"] += int(kind == "future" and sent)
            out["unsub_sends"] += int(kind == "unsubscribe" and sent)
            out["preview_recorded"] += int(kind == "preview" and bool(nba.get("decision_id")))
            out["recorded"] += int(kind != "preview")
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(len(plans))))
    total = {k: sum(r[k] for r in results) for k in results[0]} if results else {}
    return arrived, {
        "calls_ok": total.get("ok", 0),
        "calls_refused": total.get("refused", 0),
        "future_now_sends": total.get("future_sends", 0),
        "inline_unsubscribe_sends": total.get("unsub_sends", 0),
        "preview_recorded": total.get("preview_recorded", 0),
        "recorded_calls": total.get("recorded", 0),
    }


def _bursts(ports: list[int], customers: list[str], args: Any) -> dict[str, Any]:
    """`burst_size` concurrent score calls for each of `burst_customers` customers, spread over replicas."""
    rng = np.random.default_rng(args.seed + 1)
    chosen = rng.choice(customers, size=min(args.burst_customers, len(customers)), replace=False)
    most = calls = one = 0
    for customer in chosen:
        body = {"customer_id": str(customer)}

        def score(i: int, body: dict[str, str] = body) -> tuple[int, Any]:
            return call(ports[i % len(ports)], "POST", "/v1/score", body)

        with ThreadPoolExecutor(max_workers=args.burst_size) as pool:
            answers = list(pool.map(score, range(args.burst_size)))
        if any(status != 200 for status, _ in answers):
            raise RuntimeError(f"burst for {customer}: {[s for s, _ in answers]}")
        calls += len(answers)
        sent = sum(a["next_best_action"]["action"] != "no_send" for _, a in answers)
        most, one = max(most, sent), one + (sent == 1)
    return {"burst_calls": calls, "burst_max_sends": most, "burst_one_send": one, "burst_recorded": calls}
