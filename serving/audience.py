"""Audience export (`journey score-audience`): every customer of an events dataset (or a segment of them)
scored and decided in one pass, to a file an e-mail platform imports before a campaign.

It is the service's own scoring, in process: `Service.score` over chunks of customers, so an exported
audience gets the same stage, rules, exploration, control group and recorded decisions (with ids, for the
outcomes that come back through `POST /v1/feedback`) as a customer scored through the API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.schema import EVENT_COLUMNS, STAGES, conform_table
from serving.service import CustomerRequest, Service

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AudienceSummary:
    customers: int
    seconds: float
    path: Path
    actions: dict[str, int]

    @property
    def customers_per_second(self) -> float:
        return self.customers / self.seconds if self.seconds > 0 else float("inf")


def read_segment(path: Path) -> list[str]:
    """Customer ids from a CSV (a `customer_id` column, or a single column) or Parquet file.

    Raises:
        ValueError: no customer_id column and more than one column.
    """
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    if "customer_id" not in frame.columns:
        if len(frame.columns) != 1:
            raise ValueError(
                f"{path}: needs a customer_id column (found {', '.join(map(str, frame.columns))})"
            )
        frame = frame.rename(columns={frame.columns[0]: "customer_id"})
    return sorted(set(frame["customer_id"].astype(str)))


def customer_chunks(
    events_path: Path, chunk: int, segment: list[str] | None = None
) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """(customer ids, their events) for consecutive chunks of customers, events sorted by (customer, ts).

    The customer ids are read first (one column); each chunk's events are then read with a filter, so
    memory holds one chunk of events at a time.
    """
    dataset = ds.dataset(events_path, format="parquet")
    ids = pc_unique(dataset)
    if segment is not None:
        ids = sorted(set(ids) & set(segment)) + sorted(set(segment) - set(ids))  # unknown ids: cold start
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        table = dataset.to_table(filter=ds.field("customer_id").isin(part))
        frame = conform_table(table, source=str(events_path)).to_pandas()
        for column in EVENT_COLUMNS:
            if column not in frame:
                frame[column] = None
        frame = frame[list(EVENT_COLUMNS)]
        for column in frame.columns:
            if isinstance(frame[column].dtype, pd.CategoricalDtype):
                frame[column] = frame[column].astype(object)
        frame = frame.sort_values(["customer_id", "ts"], kind="stable").reset_index(drop=True)
        yield part, frame


def pc_unique(dataset: ds.Dataset) -> list[str]:
    column = dataset.to_table(columns=["customer_id"]).column("customer_id")
    return sorted(str(c) for c in pc.unique(column.cast(pa.string())).to_pylist())


def score_audience(
    service: Service,
    events_path: Path,
    out: Path,
    *,
    now: datetime,
    segment: list[str] | None = None,
    chunk: int = 5_000,
    n_items: int = 5,
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> AudienceSummary:
    """Scores every customer of `events_path` (or of `segment`) at `now` and writes one row each.

    Args:
        service: the service (model, store, settings) that decides; its store records the decisions.
        events_path: a Parquet events dataset (the event contract), e.g. a shop's `events/`.
        out: `.parquet` or `.csv` file to write.
        now: scoring time (events at or after it are not seen).
        segment: only these customer ids (None: everyone in the events).
        chunk: customers per vectorised pass.
        n_items: recommended items per customer.
        record: record each decision in the store (its id goes in the file); False for a preview.
        progress: called with (customers done, total) after each chunk.

    Raises:
        ValueError: an output suffix other than .parquet or .csv.
    """
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{out}: write .parquet or .csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    total = len(segment) if segment is not None else len(pc_unique(ds.dataset(events_path, format="parquet")))
    started = time.perf_counter()
    frames, done = [], 0
    actions: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    for ids, events in customer_chunks(events_path, chunk, segment):
        requests = [CustomerRequest(c, events.iloc[:0], now, None, n_items) for c in ids]
        frame = service.score_table(requests, extra_events=events, n_items=n_items, record=record)
        for action, count in frame["action"].value_counts().items():
            actions[str(action)] = actions.get(str(action), 0) + int(count)
        if out.suffix == ".parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
        else:
            frames.append(frame)
        done += len(ids)
        if progress is not None:
            progress(done, total)
    if writer is not None:
        writer.close()
    elif out.suffix == ".csv":
        (pd.concat(frames, ignore_index=True) if frames else audience_frame([])).to_csv(out, index=False)
    else:
        audience_frame([]).to_parquet(out, index=False)
    seconds = time.perf_counter() - started
    return AudienceSummary(done, seconds, out, actions)


def audience_frame(answers: list[dict]) -> pd.DataFrame:
    """One row per answer: what a platform imports (ids, stage, action, items, propensities)."""
    rows = []
    for a in answers:
        nba = a["next_best_action"]
        row = {
            "customer_id": a["customer_id"],
            "scored_at": pd.Timestamp(a["scored_at"]),
            "model_version": a["model"]["version"],
            "stage": a["stage"]["label"],
            **{f"p_stage_{s}": a["stage"]["probabilities"][s] for s in STAGES},
            "action": nba["action"],
            "channel": nba["channel"],
            "expected_uplift": nba["expected_uplift"],
            "propensity": nba["propensity"],
            "decision_id": nba["decision_id"] or None,
            "control_group": nba["control_group"],
            "top_items": " ".join(r["item_id"] for r in a["recommendations"]),
            **{f"p_{name}": p for name, p in a["propensities"].items()},
        }
        rows.append(row)
    if not rows:
        columns = ["customer_id", "scored_at", "model_version", "stage", *(f"p_stage_{s}" for s in STAGES),
                   "action", "channel", "expected_uplift", "propensity", "decision_id", "control_group",
                   "top_items"]  # fmt: skip
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    frame = pd.DataFrame(rows)
    frame["control_group"] = frame["control_group"].astype(bool)
    return frame
