"""The DuckDB query of the feature-job benchmark is a real reference: it writes the pandas build's rows.

Each test builds the same small shop with both engines and compares every row of every column
(`compare_outputs`); one test checks that the comparison does catch a difference.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from features.build import build_features
from features.encoder import EncoderConfig
from features.snapshots import SPLITS, BuildConfig
from tests.factories import random_events, write_events

pytest.importorskip("duckdb")

from benchmarks.feature_job_compare import compare_outputs
from benchmarks.feature_job_reference import build_reference
from benchmarks.feature_job_report import MARKER_END, MARKER_START, update_markdown


def _both(
    events: Path, tmp_path: Path, config: BuildConfig, decisions: Path | None = None
) -> tuple[Path, Path, dict]:
    pandas_out, duckdb_out = tmp_path / "pandas", tmp_path / "duckdb"
    manifest = build_features(events, pandas_out, config, decisions=decisions, progress=False)
    info = build_reference(events, duckdb_out, config, decisions=decisions)
    assert info["rows"] == manifest.data["rows"]
    assert info["cutoffs"] == manifest.data["cutoffs"]
    return pandas_out, duckdb_out, manifest.data


def test_reference_agrees_on_a_simulated_shop_with_decisions(tmp_path: Path) -> None:
    from features.sim import SimConfig, simulate

    shop = tmp_path / "shop"
    simulate(SimConfig(n_customers=300, seed=7), shop, progress=False)
    pandas_out, duckdb_out, manifest = _both(
        shop / "events", tmp_path, BuildConfig(workers=1), decisions=shop / "decisions.parquet"
    )

    report = compare_outputs(pandas_out, duckdb_out)

    assert report["differs"] == []
    assert report["agrees"] is True
    assert report["rows_compared"] == sum(manifest["rows"].values()) > 1000
    for split in SPLITS:
        assert report["rows"][split][0] == report["rows"][split][1]
    # The shop exercises the logged-decision columns, not only their nulls.
    logged = pq.read_table(duckdb_out / "rows", columns=["decision_id"]).column("decision_id")
    assert logged.null_count < len(logged)


def test_reference_agrees_with_truncation_rare_items_and_refunds(tmp_path: Path) -> None:
    events = write_events(random_events(80, 6_000, seed=3), tmp_path / "events.parquet")
    # Short sequences (truncation), items seen once map to out-of-vocabulary.
    config = BuildConfig(encoder=EncoderConfig(max_len=8), item_min_count=2, workers=1)
    pandas_out, duckdb_out, _ = _both(events, tmp_path, config)

    report = compare_outputs(pandas_out, duckdb_out)

    assert report["differs"] == []
    rows = pq.read_table(duckdb_out / "rows", columns=["seq_len", "tok_item_id", "n_refunds"])
    assert pc.max(rows.column("seq_len")).as_py() == 8
    assert 1 in rows.column("tok_item_id").combine_chunks().flatten().to_pylist()  # OOV
    assert pc.max(rows.column("n_refunds")).as_py() > 0


def test_comparison_names_what_differs(tmp_path: Path) -> None:
    events = write_events(random_events(30, 2_000, seed=5), tmp_path / "events.parquet")
    pandas_out, duckdb_out, _ = _both(events, tmp_path, BuildConfig(workers=1))
    part = duckdb_out / "rows" / "part-00000.parquet"
    table = pq.read_table(part)
    stage = table.column("stage").to_pylist()
    stage[0] = "loyal" if stage[0] != "loyal" else "awareness"
    pq.write_table(table.set_column(table.column_names.index("stage"), "stage", pa.array(stage)), part)

    report = compare_outputs(pandas_out, duckdb_out)

    assert report["agrees"] is False
    assert report["columns"]["stage"]["differing_rows"] == 1
    assert any(line.startswith("stage: 1 of") for line in report["differs"])


def test_markdown_section_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\n## Scoring\n\nkept\n")

    update_markdown(path, f"{MARKER_START}\nfirst\n{MARKER_END}")
    update_markdown(path, f"{MARKER_START}\nsecond\n{MARKER_END}")

    text = path.read_text()
    assert "## Scoring\n\nkept" in text
    assert "second" in text
    assert "first" not in text
    assert text.count(MARKER_START) == 1
