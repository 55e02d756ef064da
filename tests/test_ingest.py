"""The ingest job: what it writes, that it is repeatable, and that the reject ratio can fail it."""

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from features import schema
from features.ingest import (
    EVENTS_FILE,
    REJECTS_FILE,
    SOURCES,
    SUMMARY_FILE,
    format_summary,
    ingest,
)
from features.sources import ColumnMapping, MappingError
from features.validate import RejectRatioExceeded

FIXTURES = Path(__file__).parent / "fixtures"
NOW = pd.Timestamp("2024-06-01", tz="UTC")


def test_sources_are_the_adapters() -> None:
    assert SOURCES == ("retailrocket", "rees46", "online_retail", "generic")


def test_ingest_writes_events_rejects_and_summary(tmp_path: Path) -> None:
    path = FIXTURES / "online_retail_small.csv"
    summary = ingest("online_retail", path, tmp_path, max_reject_ratio=0.5, now=NOW)
    assert (summary.rows_accepted, summary.rows_rejected, summary.rows_skipped) == (5, 2, 5)

    table = pq.read_table(tmp_path / EVENTS_FILE)
    assert table.schema.equals(schema.EVENT_SCHEMA, check_metadata=True)
    events = table.to_pandas()
    assert len(events) == 5
    keys = list(zip(events["customer_id"], events["ts"], strict=True))
    assert keys == sorted(keys)

    rejects = pd.read_csv(tmp_path / REJECTS_FILE)
    assert list(rejects.columns) == ["line", "field", "reason", "message", "raw"]
    assert rejects["line"].tolist() == [11, 12]

    record = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert record["source"] == "online_retail"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["path"] == str(path.resolve())
    assert (record["rows_read"], record["rows_accepted"], record["rows_rejected"]) == (12, 5, 2)
    assert record["rows_skipped"] == 5
    assert record["rejects_by_reason"] == {"non_numeric": 1, "negative_value": 1}
    assert record["skipped"]["guest_line"] == 2
    assert record["customers"] == 2
    assert record["ts_min"] == "2010-12-01T08:26:00+00:00"
    assert record["ts_max"] == "2011-06-01T11:00:00+00:00"


def test_reingesting_gives_identical_files(tmp_path: Path) -> None:
    path = FIXTURES / "events_contract.csv"
    ingest("generic", path, tmp_path / "a", max_reject_ratio=1.0, now=NOW)
    first = {name: (tmp_path / "a" / name).read_bytes() for name in (EVENTS_FILE, REJECTS_FILE, SUMMARY_FILE)}
    ingest("generic", path, tmp_path / "a", max_reject_ratio=1.0, now=NOW)
    ingest("generic", path, tmp_path / "b", max_reject_ratio=1.0, now=NOW)
    for name, content in first.items():
        assert (tmp_path / "a" / name).read_bytes() == content, name
        assert (tmp_path / "b" / name).read_bytes() == content, name


def test_reject_ratio_fails_the_job_after_writing_the_rejects(tmp_path: Path) -> None:
    with pytest.raises(RejectRatioExceeded) as info:
        ingest("generic", FIXTURES / "events_contract.csv", tmp_path, max_reject_ratio=0.05, now=NOW)
    message = str(info.value)
    # 17 of the 24 validated rows (the blank line is skipped, not a candidate).
    for words in ("17 of 24", "70.83%", "5.00%", "missing_field 4", str(tmp_path / REJECTS_FILE)):
        assert words in message
    assert len(pd.read_csv(tmp_path / REJECTS_FILE)) == 17
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["rows_rejected"] == 17
    assert pq.read_table(tmp_path / EVENTS_FILE).num_rows == 7


def test_rejects_file_is_written_when_empty(tmp_path: Path) -> None:
    ingest("rees46", FIXTURES / "rees46_small.csv", tmp_path, now=NOW)
    assert (tmp_path / REJECTS_FILE).read_text().strip() == "line,field,reason,message,raw"


def test_generic_with_mapping_records_it(tmp_path: Path) -> None:
    mapping = ColumnMapping.from_yaml(FIXTURES / "generic_mapping.yaml")
    summary = ingest(
        "generic", FIXTURES / "generic_clicks.csv", tmp_path, mapping=mapping, max_reject_ratio=0.3
    )
    assert summary.rows_accepted == 3
    record = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert record["mapping"]["columns"]["customer_id"] == "user"


def test_tz_argument_overrides_the_source_default(tmp_path: Path) -> None:
    summary = ingest(
        "online_retail", FIXTURES / "online_retail_small.csv", tmp_path, tz="UTC", max_reject_ratio=1
    )
    assert summary.ts_max == "2011-06-01T12:00:00+00:00"


def test_bad_requests_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown source 'shopify'"):
        ingest("shopify", FIXTURES / "rees46_small.csv", tmp_path)
    with pytest.raises(MappingError, match="generic only"):
        ingest(
            "rees46",
            FIXTURES / "rees46_small.csv",
            tmp_path,
            mapping=ColumnMapping.from_pairs(["ts=a", "customer_id=b", "event_type=c"]),
        )
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        ingest("rees46", tmp_path / "nope.csv", tmp_path)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ingest("rees46", FIXTURES / "rees46_small.csv", tmp_path, max_reject_ratio=5)
    assert not (tmp_path / EVENTS_FILE).exists()


def test_format_summary(tmp_path: Path) -> None:
    summary = ingest(
        "online_retail", FIXTURES / "online_retail_small.csv", tmp_path, max_reject_ratio=1, now=NOW
    )
    text = format_summary(summary)
    assert text.splitlines()[0] == "online_retail: 12 rows read: 5 accepted, 2 rejected (28.57%), 5 skipped"
    assert "negative_value 1" in text
    assert "guest_line 2" in text
    assert "non_product 2 (D 1, POST 1)" in text
    assert "2 customers" in text


@pytest.mark.data
def test_ingest_retailrocket_sample(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "retailrocket_sample" / "events.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    copy = tmp_path / "events.csv"  # a copy in tmp, so that the test never writes near the real data
    shutil.copyfile(path, copy)
    summary = ingest("retailrocket", copy, tmp_path / "out")
    assert summary.rows_accepted == 2770
    table = pq.read_table(tmp_path / "out" / EVENTS_FILE)
    assert table.schema.equals(schema.EVENT_SCHEMA)
    assert table.num_rows == 2770
