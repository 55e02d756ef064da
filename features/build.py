"""The feature job: validated events -> per-customer snapshots at cutoff dates, split by time.

For each customer at each cutoff: the last `max_len` events before the cutoff, encoded by
`features.encoder.encode_prepared` (the one encoder), aggregates, and hindsight labels. Memory stays flat
as data grows because customers are streamed in buckets: a first pass hashes each event's customer to a
bucket and spills it there, and each bucket is then processed whole, by the same `process_bucket`
function in both engines (pandas in this process, or Spark's `groupBy(bucket).applyInPandas`).

Output layout (`out/`):
    rows/part-*.parquet   one row per (customer, cutoff) with a `split` column (train / valid / test) and a
                          `segment` (new / active / lapsed; who has a row: `BuildConfig`)
    vocab.json            vocabularies fitted on the training window only
    manifest.json         row counts (per split and segment), vocabulary sizes, date ranges, the input's
                          digest, the config
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from features.encoder import (
    AGGREGATE_NAMES,
    TOKEN_FIELDS,
    token_sizes,
)
from features.labels import DECISION_COLUMNS
from features.progress import progress_bar
from features.schema import REQUIRED_COLUMNS, EventSchemaError
from features.snapshots import (
    DICTIONARY_COLUMNS,
    EVENT_READ_COLUMNS,
    SEGMENTS,
    SPLITS,
    BucketContext,
    BuildConfig,
    SplitPlan,
    plan_splits,
    process_bucket,
)
from features.vocab import FITTED_FIELDS, Vocabulary

log = logging.getLogger(__name__)

Engine = Literal["pandas", "spark"]


@dataclass
class Manifest:
    """What a build made, written as `manifest.json` beside the rows."""

    data: dict[str, Any]

    def save(self, out: Path) -> None:
        (out / "manifest.json").write_text(json.dumps(self.data, indent=2, default=str))

    @classmethod
    def load(cls, out: Path) -> Manifest:
        return cls(json.loads((out / "manifest.json").read_text()))


def input_files(path: Path) -> list[Path]:
    """The Parquet files of an events (or decisions) input: one file or a folder of them."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise FileNotFoundError(f"{path}: no .parquet files in this folder")
        return files
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return [path]


def digest(files: list[Path]) -> str:
    """sha256 over the files' bytes, in name order: the input's identity in the manifest."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def _dataset(files: list[Path], what: str) -> ds.Dataset:
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    missing = [c for c in REQUIRED_COLUMNS if c not in dataset.schema.names]
    if what == "decisions":
        missing = [c for c in DECISION_COLUMNS if c not in dataset.schema.names]
    if missing:
        raise EventSchemaError(f"{what} {files[0].parent}: missing column(s) {', '.join(missing)}")
    return dataset


def build_features(
    events: Path,
    out: Path,
    config: BuildConfig | None = None,
    *,
    decisions: Path | None = None,
    engine: Engine = "pandas",
    spark_master: str = "local[2]",
    progress: bool = True,
) -> Manifest:
    """Runs the feature job and writes rows, vocabulary and manifest to `out`.

    Args:
        events: validated events: a Parquet file or a folder of them (from `journey ingest` or
            `journey simulate`).
        out: output folder (replaced if it holds an earlier build).
        config: build settings.
        decisions: optional decision log (Parquet) whose sends become the logged-action labels.
        engine: "pandas" (one machine) or "spark".
        spark_master: Spark master URL for the Spark engine.
        progress: show progress bars.
    """
    config = config or BuildConfig()
    started = time.perf_counter()
    event_files = input_files(events)
    decision_files = input_files(decisions) if decisions else []
    ev = _dataset(event_files, "events")
    n_events = ev.count_rows()
    if n_events == 0:
        raise ValueError(f"{events}: no events")
    first_ts, last_ts = _time_range(ev)
    if decision_files and not config.first_cutoff:
        config = replace(config, first_cutoff=decision_aligned_start(decision_files, first_ts, config))
    plan = plan_splits(first_ts, last_ts, config)
    workers = config.workers or os.cpu_count() or 1
    n_buckets = config.n_buckets or max(workers, math.ceil(n_events / config.bucket_events))
    log.info("%d events from %s to %s, %d buckets", n_events, first_ts, last_ts, n_buckets)

    if out.exists():
        shutil.rmtree(out / "rows", ignore_errors=True)
    (out / "rows").mkdir(parents=True, exist_ok=True)
    if engine == "pandas":
        vocab, rows = _run_pandas(ev, decision_files, out, plan, config, n_buckets, progress)
    elif engine == "spark":
        from features.spark_engine import run_spark

        vocab, rows = run_spark(event_files, decision_files, out, plan, config, n_buckets, spark_master)
    else:
        raise ValueError(f"engine must be pandas or spark, not {engine!r}")
    vocab.save(out / "vocab.json")
    seconds = time.perf_counter() - started
    manifest = Manifest(
        {
            "created_at": pd.Timestamp.now(tz="UTC").isoformat(),
            "engine": engine,
            "input": {
                "events": str(events),
                "files": [str(f) for f in event_files],
                "digest": digest(event_files),
                "n_events": n_events,
                "first_ts": first_ts.isoformat(),
                "last_ts": last_ts.isoformat(),
                "decisions": str(decisions) if decisions else None,
                "decisions_digest": digest(decision_files) if decision_files else None,
            },
            "cutoffs": plan.to_json(),
            "vocab_window_end": _iso(plan.vocab_end(config.vocab_until)),
            "rows": rows,
            "segments": segment_counts(out),
            "vocab_sizes": vocab.sizes(),
            "token_sizes": token_sizes(vocab),
            "token_fields": list(TOKEN_FIELDS),
            "aggregates": list(AGGREGATE_NAMES),
            "n_buckets": n_buckets,
            "seconds": round(seconds, 3),
            "events_per_second": round(n_events / seconds, 1),
            "config": config.to_dict(),
        }
    )
    manifest.save(out)
    return manifest


def segment_counts(out: Path) -> dict[str, dict[str, int]]:
    """Rows per split and segment of the rows written to `out` (either engine): the population's make-up."""
    table = ds.dataset(str(out / "rows"), format="parquet").to_table(columns=["split", "segment"])
    frame = table.to_pandas().astype(str).value_counts()
    return {s: {g: int(frame.get((s, g), 0)) for g in SEGMENTS} for s in SPLITS}


def decision_aligned_start(files: list[Path], first_ts: pd.Timestamp, config: BuildConfig) -> str:
    """First cutoff on the decision log's main weekday, at or after its first decision and the warm-up."""
    ts = pd.to_datetime(
        _dataset(files, "decisions").to_table(columns=["ts"]).column("ts").to_pandas(), utc=True
    )
    if ts.empty:
        raise ValueError(f"decisions {files[0]}: the decision log is empty")
    weekday = int(ts.dt.weekday.mode().iloc[0])
    start = max((first_ts + pd.Timedelta(days=config.warmup_days)).ceil("D"), ts.min().floor("D"))
    start += pd.Timedelta(days=(weekday - start.weekday()) % 7)
    return start.date().isoformat()


def _time_range(ev: ds.Dataset) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First and last event time, streamed (naive timestamps are taken as UTC)."""
    lows, highs = [], []
    for batch in ev.to_batches(columns=["ts"], batch_size=4_000_000):
        mm = pc.min_max(batch.column(0))
        if mm["min"].is_valid:
            lows.append(pd.Timestamp(mm["min"].as_py()))
            highs.append(pd.Timestamp(mm["max"].as_py()))
    if not lows:
        raise ValueError("events: every ts is empty")
    return _utc(min(lows)), _utc(max(highs))


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def bucket_of(customer_ids: pa.Array, n_buckets: int) -> np.ndarray:
    """Stable bucket of each customer id (hashing each distinct id once)."""
    arr = customer_ids if pa.types.is_dictionary(customer_ids.type) else pc.dictionary_encode(customer_ids)
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    dictionary = arr.dictionary.to_numpy(zero_copy_only=False).astype(object)
    hashed = pd.util.hash_array(dictionary) % np.uint64(n_buckets)
    return hashed.astype(np.int32)[arr.indices.to_numpy(zero_copy_only=False)]


def _run_pandas(
    ev: ds.Dataset,
    decision_files: list[Path],
    out: Path,
    plan: SplitPlan,
    config: BuildConfig,
    n_buckets: int,
    progress: bool,
) -> tuple[Vocabulary, dict[str, int]]:
    spill = Path(tempfile.mkdtemp(prefix="journey-buckets-", dir=out))
    try:
        vocab_end = plan.vocab_end(config.vocab_until)
        counts = _spill(ev, spill, "events", n_buckets, config.batch_rows, vocab_end, progress)
        if decision_files:
            _spill(_dataset(decision_files, "decisions"), spill, "decisions", n_buckets, config.batch_rows)
        vocab = Vocabulary.fit(
            counts, min_count=config.item_min_count, max_size={"item_id": config.max_items}
        )
        ctx = BucketContext(vocab.to_json(), plan.to_json(), config.to_dict(), n_buckets)
        rows = dict.fromkeys(SPLITS, 0)
        workers = min(config.workers or os.cpu_count() or 1, n_buckets)
        jobs = [(spill, b, out / "rows" / f"part-{b:05d}.parquet", ctx) for b in range(n_buckets)]
        with progress_bar(progress, "encoding buckets", total=n_buckets) as advance:
            results: Iterator[dict[str, int]]
            if workers > 1:
                pool = ProcessPoolExecutor(max_workers=workers)
                results = pool.map(_bucket_job, *zip(*jobs, strict=True))
            else:
                pool = None
                results = (_bucket_job(*job) for job in jobs)
            for counted in results:
                for split, n in counted.items():
                    rows[split] += n
                advance(1)
            if pool:
                pool.shutdown()
        return vocab, rows
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _spill(
    dataset: ds.Dataset,
    spill: Path,
    kind: str,
    n_buckets: int,
    batch_rows: int,
    vocab_end: pd.Timestamp | None = None,
    progress: bool = False,
) -> dict[str, pd.Series]:
    """Streams the input once, writing each row to its bucket's file; counts vocabulary tokens."""
    writers: dict[int, pa.ipc.RecordBatchStreamWriter] = {}
    counts: dict[str, pd.Series] = {}
    names = [
        c for c in (EVENT_READ_COLUMNS if kind == "events" else DECISION_COLUMNS) if c in dataset.schema.names
    ]
    total = dataset.count_rows()
    schema: pa.Schema | None = None
    with progress_bar(progress, "bucketing events", total=total) as advance:
        for batch in dataset.to_batches(columns=names, batch_size=batch_rows):
            table = _normalise(pa.Table.from_batches([batch]), kind)
            if schema is None:
                schema = table.schema
            table = table.cast(schema)
            bucket = bucket_of(table.column("customer_id").combine_chunks(), n_buckets)
            order = np.argsort(bucket, kind="stable")
            sorted_table = table.take(pa.array(order))
            bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
            for b in range(n_buckets):
                lo, hi = bounds[b], bounds[b + 1]
                if hi > lo:
                    if b not in writers:
                        writers[b] = pa.ipc.new_stream(str(spill / f"{kind}-{b:05d}.arrow"), schema)
                    writers[b].write_table(sorted_table.slice(lo, hi - lo))
            if vocab_end is not None:
                before = pc.less(
                    table.column("ts"), pa.scalar(vocab_end.to_pydatetime(), table.column("ts").type)
                )
                window = table.filter(before)
                for name in FITTED_FIELDS:
                    if name in window.column_names:
                        vc = pc.value_counts(window.column(name).combine_chunks().cast(pa.string()))
                        s = pd.Series(vc.field("counts").to_numpy(), index=vc.field("values").to_pandas())
                        s = s[s.index.notna()]
                        counts[name] = s if name not in counts else counts[name].add(s, fill_value=0)
            advance(len(batch))
    for w in writers.values():
        w.close()
    return counts


def _normalise(table: pa.Table, kind: str) -> pa.Table:
    """Plain strings become dictionaries (cheap to hash and to bucket); timestamps become UTC."""
    cols = []
    for name in table.column_names:
        col = table.column(name)
        if name in DICTIONARY_COLUMNS and not pa.types.is_dictionary(col.type):
            col = pc.dictionary_encode(col.cast(pa.string()))
        if name == "ts" and kind in ("events", "decisions"):
            col = col.cast(pa.timestamp("us", tz="UTC"))
        cols.append(col)
    table = pa.table(cols, names=table.column_names)
    # Dictionaries of different batches differ: unify them so that one stream schema fits all.
    return table.unify_dictionaries() if kind == "events" else table


def _read_spill(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    with pa.ipc.open_stream(str(path)) as reader:
        table = reader.read_all()
    return table.to_pandas()


def _bucket_job(spill: Path, bucket: int, target: Path, ctx: BucketContext) -> dict[str, int]:
    events = _read_spill(spill / f"events-{bucket:05d}.arrow")
    if events is None:
        return {}
    decisions = _read_spill(spill / f"decisions-{bucket:05d}.arrow")
    table = process_bucket(events, decisions, ctx)
    # Dictionary pages only where values repeat; token lists compress well without them (and write faster).
    pq.write_table(
        table, target, use_dictionary=["customer_id", "split", "segment", "stage", "logged_action"]
    )
    splits = table.column("split").to_pandas().value_counts()
    return {str(k): int(v) for k, v in splits.items()}


def load_rows(out: Path, split: str | None = None, columns: list[str] | None = None) -> pa.Table:
    """Reads a build's rows (one split or all), sorted by customer and cutoff."""
    dataset = ds.dataset(str(out / "rows"), format="parquet")
    flt = pc.field("split") == split if split else None
    table = dataset.to_table(columns=columns, filter=flt)
    if "customer_id" in table.column_names and "cutoff" in table.column_names:
        table = table.sort_by([("customer_id", "ascending"), ("cutoff", "ascending")])
    return table


def padded_tokens(table: pa.Table, name: str, max_len: int) -> np.ndarray:
    """The (n_rows, max_len) left-padded int32 array of one token field, as `encode` returns it."""
    column = table.column(f"tok_{name}").combine_chunks()
    lengths = np.diff(column.offsets.to_numpy()).astype(np.int64)
    if lengths.size and lengths.max() > max_len:
        raise ValueError(f"tok_{name}: a sequence of {lengths.max()} events is longer than max_len={max_len}")
    out = np.zeros((len(lengths), max_len), dtype=np.int32)
    real = np.arange(max_len)[None, :] >= (max_len - lengths)[:, None]
    out[real] = column.flatten().to_numpy()
    return out


def format_manifest(manifest: Manifest) -> str:
    """A few lines for the terminal: what the build read and wrote."""
    d = manifest.data
    cut = d["cutoffs"]
    lines = [
        f"read {d['input']['n_events']:,} events "
        f"({d['input']['first_ts'][:10]} .. {d['input']['last_ts'][:10]}), "
        f"digest {d['input']['digest'][:12]}",
        "rows: " + ", ".join(f"{s} {d['rows'].get(s, 0):,}" for s in SPLITS),
        "cutoffs: " + ", ".join(f"{s} {cut[s][0]}..{cut[s][-1]} ({len(cut[s])})" for s in SPLITS if cut[s])
        if d["config"].get("mode") != "sessions"
        else "session windows from: " + ", ".join(f"{s} {cut[s][0]}" for s in SPLITS),
        "vocabulary sizes: " + ", ".join(f"{k} {v:,}" for k, v in d["vocab_sizes"].items()),
        f"engine {d['engine']}, {d['n_buckets']} bucket(s), {d['seconds']:.1f} s, "
        f"{d['events_per_second']:,.0f} events/s",
    ]
    segments = d.get("segments", {})  # none in builds from before segments
    if segments:
        per_split = (
            f"{s} " + ", ".join(f"{g} {n:,}" for g, n in counts.items()) for s, counts in segments.items()
        )
        lines.insert(2, "segments: " + "; ".join(per_split))
    return "\n".join(lines)
