"""Audience export (`journey score-audience`): every customer of an events dataset (or a segment of them)
scored and decided in one pass, to a file an e-mail platform imports before a campaign.

It is the service's own scoring, in process: `Service.score_table` over chunks of customers, so an
exported audience gets the same stage, rules, exploration, control group and recorded decisions (with ids,
for the outcomes that come back through `POST /v1/feedback`) as a customer scored through the API: each
decision is committed with the same rules (consent, caps, gap, cooldowns, quiet hours), atomically, so an
export and the API (or two exports) never send one customer more than they allow. `now` is free here
(backtests), unlike the API's `context.now`.

Columns (`serving.decided.table`): the stage and its probabilities, the decision, the top items, and a
`p_<head>` per propensity head; `p_cart_abandon_<h>h` (the probability that an open cart is not bought
within h hours) is empty for a customer without an open cart, as the API's `cart_abandonment` is null.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.columns import EventColumns
from features.schema import EVENT_COLUMNS, STAGES, conform_table
from predictor.registry import configure
from serving.model import ModelManager, ModelRefused
from serving.service import CustomerRequest, Service
from serving.settings import ServeSettings
from serving.store import open_store

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


def audience_ids(dataset: ds.Dataset, segment: list[str] | None) -> list[str]:
    """Every customer of the events (one column read), or the segment: its known customers first, then
    those without events (scored as new customers)."""
    ids = pc_unique(dataset)
    if segment is None:
        return ids
    return sorted(set(ids) & set(segment)) + sorted(set(segment) - set(ids))


def customer_chunks(
    dataset: ds.Dataset, ids: list[str], chunk: int, source: str
) -> Iterator[tuple[list[str], pd.DataFrame]]:
    """(customer ids, their events) for consecutive chunks of `ids`, events sorted by (customer, ts).

    Each chunk's events are read with a filter, so memory holds one chunk of events at a time.
    """
    for lo in range(0, len(ids), chunk):
        part = ids[lo : lo + chunk]
        table = dataset.to_table(filter=ds.field("customer_id").isin(part))
        frame = conform_table(table, source=source).to_pandas()
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
    started = time.perf_counter()
    dataset = ds.dataset(events_path, format="parquet")
    ids = audience_ids(dataset, segment)
    frames, done = [], 0
    actions: dict[str, int] = {}
    writer: pq.ParquetWriter | None = None
    for part, events in customer_chunks(dataset, ids, chunk, str(events_path)):
        requests = [CustomerRequest(c, now=now, n_items=n_items) for c in part]
        columns = EventColumns.from_frame(events)
        frame = service.score_table(requests, extra_events=columns, n_items=n_items, record=record)
        for action, count in frame["action"].value_counts().items():
            actions[str(action)] = actions.get(str(action), 0) + int(count)
        if out.suffix == ".parquet":
            table = _text_columns(pa.Table.from_pandas(frame, preserve_index=False))
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
        else:
            frames.append(frame)
        done += len(part)
        if progress is not None:
            progress(done, len(ids))
    if writer is not None:
        writer.close()
    elif out.suffix == ".csv":
        (pd.concat(frames, ignore_index=True) if frames else _no_customers()).to_csv(out, index=False)
    else:
        _no_customers().to_parquet(out, index=False)
    seconds = time.perf_counter() - started
    return AudienceSummary(done, seconds, out, actions)


def scoring_time(now: str | datetime | None) -> datetime:
    """An ISO time (naive: UTC), or now.

    Raises:
        ValueError: not a time.
    """
    if now is None:
        return datetime.now(UTC)
    try:
        when = pd.Timestamp(now).to_pydatetime()
    except ValueError as err:
        raise ValueError(f"scoring time {now!r} is not an ISO date or time") from err
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def export_audience(
    settings: ServeSettings,
    events_path: Path,
    out: Path,
    *,
    now: str | datetime | None = None,
    segment: Path | None = None,
    chunk: int = 5_000,
    n_items: int = 5,
    record: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[AudienceSummary, str]:
    """`journey score-audience`: the service as a replica builds it (the registered model under the
    settings' alias, the online store, the rules) scores an events dataset to a file (`score_audience`).

    The inputs are checked before the model is loaded, so a wrong path or time fails at once.

    Args:
        now: scoring time (ISO; naive is UTC); None: now.
        segment: a CSV or Parquet file of the customer ids to score (`read_segment`); None: everyone.

    Returns:
        The summary, and the registered version that scored.

    Raises:
        FileNotFoundError: no events or segment file. ValueError: a bad time, segment or output suffix.
        ModelRefused: no model under the alias, or it failed its smoke test.
    """
    if out.suffix not in (".parquet", ".csv"):
        raise ValueError(f"{out}: write .parquet or .csv")
    if not events_path.exists():
        raise FileNotFoundError(f"no events at {events_path}")
    when = scoring_time(now)
    ids = read_segment(segment) if segment else None
    configure()
    manager = ModelManager(settings.model_name, settings.model_alias)
    manager.alias_version()  # no model under the alias: refused here, before anything is loaded
    loaded = manager.reload()
    if loaded["error"]:
        raise ModelRefused(loaded["error"])
    store = open_store(settings.store_url, max_events=settings.history_len)
    try:
        service = Service(settings, store, manager)
        summary = score_audience(service, events_path, out, now=when, segment=ids, chunk=chunk,
                                 n_items=n_items, record=record, progress=progress)  # fmt: skip
    finally:
        store.close()
    return summary, str(loaded["version"])


def _text_columns(table: pa.Table) -> pa.Table:
    """The table with its text columns typed as text even when a chunk holds none (a chunk where nobody
    gets an e-mail has no channel): every chunk then has the schema the file was opened with."""
    for name in ("channel", "decision_id"):
        i = table.schema.get_field_index(name)
        if i >= 0 and pa.types.is_null(table.schema.field(i).type):
            table = table.set_column(i, pa.field(name, pa.string()), table.column(i).cast(pa.string()))
    return table


def _no_customers() -> pd.DataFrame:
    """The file's columns without rows (an events dataset or segment with nobody in it)."""
    columns = [
        "customer_id",
        "scored_at",
        "model_version",
        "stage",
        *(f"p_stage_{s}" for s in STAGES),
        "action",
        "channel",
        "expected_uplift",
        "propensity",
        "decision_id",
        "control_group",
        "top_items",
    ]
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
