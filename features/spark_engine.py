"""The Spark engine of the feature job: the same per-bucket function, run by `applyInPandas`.

A shop that outgrows one machine points `--spark-master` at its cluster; the code does not change.
Here it runs `local[2]`. Needs `PYSPARK_PYTHON` (the venv's python) and, on a laptop,
`SPARK_LOCAL_IP=127.0.0.1`; the Makefile sets both.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from features.labels import DECISION_COLUMNS
from features.snapshots import EVENT_READ_COLUMNS, BucketContext, BuildConfig, SplitPlan, process_bucket
from features.vocab import FITTED_FIELDS, Vocabulary


def spark_session(master: str) -> Any:
    """A Spark session in UTC whose Python workers are this interpreter."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(master)
        .appName("journey-features")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "8")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.driver.memory", "4g")
        .getOrCreate()
    )


def _output_schema(plan: SplitPlan, config: BuildConfig, vocab: Vocabulary) -> Any:
    """The Spark schema of `process_bucket`'s output, taken from a run on an empty bucket."""
    from pyspark.sql.pandas.types import from_arrow_schema

    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in EVENT_READ_COLUMNS})
    empty["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    empty["value"] = pd.Series(dtype="float64")
    ctx = BucketContext(vocab.to_json(), plan.to_json(), config.to_dict())
    table = process_bucket(empty, _empty_decisions(), ctx)
    # Spark has no 8/16-bit dictionary types: plain types only.
    return from_arrow_schema(table.schema)


def _empty_decisions() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in DECISION_COLUMNS})
    frame["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    frame["propensity"] = pd.Series(dtype="float64")
    # A non-empty frame forces the labels of logged decisions to exist in the schema.
    return frame


def run_spark(
    event_files: list[Path],
    decision_files: list[Path],
    out: Path,
    plan: SplitPlan,
    config: BuildConfig,
    n_buckets: int,
    master: str,
) -> tuple[Vocabulary, dict[str, int]]:
    """Fits the vocabulary and writes the rows with Spark; returns the vocabulary and rows per split."""
    from pyspark.sql import functions as F

    spark = spark_session(master)
    try:
        events = spark.read.parquet(*[str(f) for f in event_files])
        events = events.select(*[c for c in EVENT_READ_COLUMNS if c in events.columns])
        vocab_end = plan.vocab_end(config.vocab_until)
        before = events
        if vocab_end is not None:
            before = events.filter(F.col("ts") < F.lit(vocab_end.to_pydatetime()))
        counts = {}
        for name in FITTED_FIELDS:
            if name in events.columns:
                pdf = before.where(F.col(name).isNotNull()).groupBy(name).count().toPandas()
                counts[name] = pd.Series(pdf["count"].to_numpy(), index=pdf[name].astype(str))
        vocab = Vocabulary.fit(
            counts, min_count=config.item_min_count, max_size={"item_id": config.max_items}
        )
        ctx = BucketContext(vocab.to_json(), plan.to_json(), config.to_dict(), n_buckets)
        schema = _output_schema(plan, config, vocab)
        bucket = F.pmod(F.xxhash64("customer_id"), F.lit(n_buckets))
        events = events.withColumn("bucket", bucket)

        if decision_files:
            decisions = spark.read.parquet(*[str(f) for f in decision_files]).select(*DECISION_COLUMNS)
            decisions = decisions.withColumn("bucket", bucket)

            def cogrouped(ev: pd.DataFrame, dec: pd.DataFrame) -> pd.DataFrame:
                return _to_pandas(process_bucket(ev.drop(columns="bucket"), dec.drop(columns="bucket"), ctx))

            result = (
                events.groupBy("bucket").cogroup(decisions.groupBy("bucket")).applyInPandas(cogrouped, schema)
            )
        else:

            def grouped(ev: pd.DataFrame) -> pd.DataFrame:
                return _to_pandas(process_bucket(ev.drop(columns="bucket"), None, ctx))

            result = events.groupBy("bucket").applyInPandas(grouped, schema)
        result.write.mode("overwrite").parquet(str(out / "rows"))
        written = spark.read.parquet(str(out / "rows")).groupBy("split").count().toPandas()
        rows = {split: 0 for split in ("train", "valid", "test")}
        rows.update({str(s): int(n) for s, n in zip(written["split"], written["count"], strict=True)})
        return vocab, rows
    finally:
        spark.stop()


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas()
