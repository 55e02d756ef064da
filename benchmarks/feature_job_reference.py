"""The reference of the feature-job benchmark: the feature job as one DuckDB query (`feature_job.sql`).

`build_reference` is the query's Python glue: the split plan (the same `plan_splits` as the pandas job)
and a few constants of the encoder go in as literals. `benchmarks.feature_job` times it beside
`build_features`; `benchmarks.feature_job_compare` checks that both write the same rows.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from features.build import decision_aligned_start, input_files
from features.encoder import DT_EDGES_S, NEVER_DAYS, VALUE_EDGES
from features.schema import ACTIONS, CHANNELS, EVENT_TYPES
from features.snapshots import SPLITS, BuildConfig, SplitPlan, plan_splits
from features.vocab import FIRST

QUERY_FILE = Path(__file__).with_name("feature_job.sql")
DUCKDB_THREADS = 2


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_files(files: Sequence[Path]) -> str:
    return "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"


def _bucket_expr(column: str, edges: Sequence[float], op: str) -> str:
    """`FIRST + 1 + (number of edges e with column <op> e)`: the encoder's searchsorted as SQL."""
    terms = " + ".join(f"({column} {op} {e!r})::INTEGER" for e in edges)
    return f"{FIRST + 1} + {terms}"


def check_reference_config(config: BuildConfig) -> None:
    """Raises `NotImplementedError` for settings the query does not follow (it names columns by them).

    The query hard-codes the encoder's aggregate windows (7, 28 and 90 days) and the label column names
    `purchase_7d`, `purchase_30d` and `churn_30d`, as the default configuration has them.
    """
    labels = config.labels
    if tuple(labels.purchase_horizons) != (7, 30) or labels.churn_days != 30:
        raise NotImplementedError(
            "the DuckDB reference writes purchase_7d, purchase_30d and churn_30d only: "
            f"got purchase_horizons={labels.purchase_horizons}, churn_days={labels.churn_days}"
        )


def render_query(
    event_files: Sequence[Path],
    decision_files: Sequence[Path],
    plan: SplitPlan,
    config: BuildConfig,
) -> tuple[str, str]:
    """Fills `feature_job.sql` with the inputs, the plan and the settings.

    Returns:
        (setup statements, the query): run the first, then the second inside a COPY.
    """
    check_reference_config(config)
    labels = config.labels
    plan_rows = ", ".join(
        f"({int(c.value // 1_000_000)}::BIGINT, {_sql_str(s)})" for s in SPLITS for c in plan.cutoffs[s]
    )
    enums = ", ".join(
        f"({_sql_str(field)}, {_sql_str(token)}, {i + FIRST})"
        for field, tokens in (("event_type", EVENT_TYPES), ("channel", CHANNELS), ("message_type", ACTIONS))
        for i, token in enumerate(tokens)
    )
    decisions = (
        f"read_parquet({_sql_files(decision_files)})"
        if decision_files
        else "(SELECT NULL::VARCHAR AS customer_id, NULL::TIMESTAMPTZ AS ts, NULL::VARCHAR AS decision_id, "
        "NULL::VARCHAR AS action, NULL::DOUBLE AS propensity WHERE false)"
    )
    # Every row meets its customer's events up to the end of its furthest label window.
    pairs_days = max(labels.horizon_days, labels.decision_window_days + labels.outcome_days)
    values = {
        "events": _sql_files(event_files),
        "event_types": ", ".join(_sql_str(e) for e in EVENT_TYPES),
        "decisions": decisions,
        "plan": plan_rows,
        "enums": enums,
        "dt_bucket": _bucket_expr("r.dt_s", [int(e) for e in DT_EDGES_S], ">="),
        "value_bucket": _bucket_expr("abs(r.value)", [float(e) for e in VALUE_EDGES], ">"),
        "vocab_end_ms": str(int(plan.valid_start.value // 1_000_000)),
        "item_min_count": str(config.item_min_count),
        "max_items": str(config.max_items),
        "never_days": f"{float(NEVER_DAYS)!r}::DOUBLE",
        "max_len": str(config.encoder.max_len),
        "active_within_days": str(config.active_within_days),
        # A split name never is '': the list is never empty.
        "active_only_splits": ", ".join(_sql_str(s) for s in ("", *config.active_only_splits)),
        "new_within_days": str(config.new_within_days),
        "decision_window_days": str(labels.decision_window_days),
        "pairs_days": str(pairs_days),
        "decision_days": str(labels.decision_days),
        "decision_min_cart_events": str(labels.decision_min_cart_events),
        "churn_days": str(labels.churn_days),
        "post_purchase_days": str(labels.post_purchase_days),
        "feedback_days": str(labels.feedback_days),
        "feedback_max_orders": str(labels.feedback_max_orders),
        "awareness_days": str(labels.awareness_days),
        "consideration_days": str(labels.consideration_days),
        "consideration_min_events": str(labels.consideration_min_events),
        "at_risk_days": str(labels.at_risk_days),
        "at_risk_max_active_days": str(labels.at_risk_max_active_days),
        "quiet_days": str(labels.quiet_days),
        "quiet_max_active_days": str(labels.quiet_max_active_days),
        "loyal_min_orders": str(labels.loyal_min_orders),
        "loyal_days": str(labels.loyal_days),
        "loyal_recent_days": str(labels.loyal_recent_days),
        "outcome_days": str(labels.outcome_days),
        "next_items_days": str(labels.next_items_days),
        "max_next_items": str(labels.max_next_items),
    }
    text = QUERY_FILE.read_text()
    for name, value in values.items():
        text = text.replace("{" + name + "}", value)
    left = sorted(set(re.findall(r"\{([a-z_]+)\}", text)))
    if left:
        raise ValueError(f"{QUERY_FILE.name}: no value for {', '.join(left)}")
    setup, query = text.split("\n-- query\n")
    return setup, query


def reference_plan(
    first_ts: pd.Timestamp, last_ts: pd.Timestamp, decision_files: Sequence[Path], config: BuildConfig
) -> SplitPlan:
    """The cutoffs `build_features` uses for these inputs: `plan_splits`, after the same alignment.

    With a decision log and no `first_cutoff`, the pandas job puts the cutoffs on the log's main decision
    weekday (`features.build.decision_aligned_start`); the reference follows it so that both label the
    same cutoffs.
    """
    if decision_files and not config.first_cutoff:
        config = replace(config, first_cutoff=decision_aligned_start(list(decision_files), first_ts, config))
    return plan_splits(first_ts, last_ts, config)


def build_reference(
    events: Path,
    out: Path,
    config: BuildConfig | None = None,
    *,
    decisions: Path | None = None,
    threads: int = DUCKDB_THREADS,
    temp_directory: Path | None = None,
) -> dict[str, Any]:
    """Runs the DuckDB reference of the feature job and writes `out/rows/part-00000.parquet`.

    The rows have the pandas build's columns and types, so `features.build.load_rows(out)` reads both.

    Args:
        events: validated events: a Parquet file or a folder of them.
        out: output folder (its `rows/` is replaced).
        config: build settings (the defaults of `BuildConfig` if None).
        decisions: optional decision log (Parquet).
        threads: DuckDB threads; the memory limit is left at DuckDB's default.
        temp_directory: where DuckDB may spill (default: a folder inside `out`, removed afterwards).

    Returns:
        n_events, rows per split, seconds and the DuckDB settings used.
    """
    import duckdb

    config = config or BuildConfig()
    started = time.perf_counter()
    event_files = input_files(events)
    decision_files = input_files(decisions) if decisions else []
    rows_dir = out / "rows"
    shutil.rmtree(rows_dir, ignore_errors=True)
    rows_dir.mkdir(parents=True, exist_ok=True)
    spill = temp_directory or Path(tempfile.mkdtemp(prefix="duckdb-", dir=out))
    con = duckdb.connect(config={"threads": threads, "temp_directory": str(spill)})
    try:
        con.execute("SET TimeZone = 'UTC'")
        scan = f"read_parquet({_sql_files(event_files)})"
        found = con.execute(f"SELECT count(*), min(epoch_us(ts)), max(epoch_us(ts)) FROM {scan}").fetchone()
        assert found is not None
        n_events, first_us, last_us = found
        if not n_events:
            raise ValueError(f"{events}: no events")
        plan = reference_plan(
            pd.Timestamp(first_us, unit="us", tz="UTC"),
            pd.Timestamp(last_us, unit="us", tz="UTC"),
            decision_files,
            config,
        )
        if any(c != c.floor("D") for cs in plan.cutoffs.values() for c in cs):
            raise ValueError("the reference query needs cutoffs at midnight UTC")
        setup, query = render_query(event_files, decision_files, plan, config)
        con.execute(setup)
        target = rows_dir / "part-00000.parquet"
        con.execute(f"COPY ({query}) TO {_sql_str(str(target))} (FORMAT parquet)")
        counted = con.execute(
            f"SELECT split, count(*) FROM read_parquet({_sql_str(str(target))}) GROUP BY split"
        ).fetchall()
        settings = dict(
            con.execute(
                "SELECT name, value FROM duckdb_settings() WHERE name IN ('threads', 'memory_limit', "
                "'preserve_insertion_order')"
            ).fetchall()
        )
    finally:
        con.close()
        if temp_directory is None:
            shutil.rmtree(spill, ignore_errors=True)
    rows = dict.fromkeys(SPLITS, 0)
    rows.update({str(s): int(n) for s, n in counted})
    return {
        "n_events": int(n_events),
        "rows": rows,
        "seconds": round(time.perf_counter() - started, 3),
        "cutoffs": plan.to_json(),
        "duckdb_version": duckdb.__version__,
        "duckdb_settings": settings,
    }
