"""Adapters: each source's columns onto the contract, exact line numbers, and the real samples' counts."""

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.rejects import Reason
from features.sources import (
    ColumnMapping,
    MappingError,
    SourceFormatError,
    read_csv_rows,
    read_generic,
    read_online_retail,
    read_rees46,
    read_retailrocket,
    validate_raw,
)
from features.validate import ValidationResult

FIXTURES = Path(__file__).parent / "fixtures"
NOW = pd.Timestamp("2024-06-01", tz="UTC")
UTC = "UTC"


def _require(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


# --- small hand-made files ---------------------------------------------------------------------------


def test_retailrocket_small() -> None:
    result = validate_raw(read_retailrocket(FIXTURES / "retailrocket_small.csv"), now=NOW)
    acc = result.accepted
    assert acc["event_type"].tolist() == ["product_view", "add_to_cart", "purchase"]
    assert acc["ts"].iloc[0] == pd.Timestamp("2015-06-02 05:02:12.117", tz=UTC)  # epoch milliseconds
    assert acc["session_id"].tolist() == [None, None, "4000"]  # transactionid 4000.0
    assert acc["customer_id"].tolist() == ["257597", "992329", "992329"]
    rejects = result.rejects.set_index("line")
    assert rejects.loc[5, "reason"] == Reason.DUPLICATE_EVENT_ID  # an exact repeat of line 3
    assert rejects.loc[6, "reason"] == Reason.UNKNOWN_EVENT_TYPE  # "click" is no RetailRocket event


def test_rees46_small() -> None:
    result = validate_raw(read_rees46(FIXTURES / "rees46_small.csv"), now=NOW)
    acc = result.accepted
    assert result.summary.rows_rejected == 0
    assert acc["event_type"].tolist() == ["product_view", "add_to_cart", "remove_from_cart", "purchase"]
    # category_code when present, else category_id.
    assert acc["category"].tolist()[:2] == ["2103807459595387724", "appliances.environment.water_heater"]
    assert acc["value"].tolist() == [35.79, 33.2, 33.2, 33.2]
    assert acc["ts"].iloc[3] == pd.Timestamp("2019-10-01 00:00:03", tz=UTC)
    assert acc["session_id"].iloc[0] == "72d76fde-8bb3-4e00-8c23-a032dfed738c"


def test_online_retail_small() -> None:
    raw = read_online_retail(FIXTURES / "online_retail_small.csv")
    result = validate_raw(raw, now=NOW)
    s = result.summary
    assert s.skipped == {
        "non_product:D": 1,
        "non_product:POST": 1,
        "guest_line": 2,
        "stock_adjustment": 1,
    }
    assert (s.rows_read, s.rows_accepted, s.rows_rejected, s.rows_skipped) == (12, 5, 2, 5)
    acc = result.accepted.set_index("event_id")
    assert acc.index.tolist() == ["536365:1", "536365:2", "C536383:1", "536591:1", "536365:4"]
    assert acc.loc["536365:1", ["customer_id", "event_type", "item_id", "session_id"]].tolist() == [
        "17850",
        "purchase",
        "85123A",
        "536365",
    ]
    assert acc.loc["536365:1", "value"] == pytest.approx(15.3)
    assert acc.loc["536365:1", "ts"] == pd.Timestamp("2010-12-01 08:26", tz=UTC)  # GMT
    refund = acc.loc["C536383:1"]
    assert (refund["event_type"], refund["item_id"]) == ("refund", "35004C")  # upper-cased code
    assert (refund["value"], refund["quantity"]) == (pytest.approx(9.3), 2.0)  # absolute amounts
    assert refund["ts"] == pd.Timestamp("2011-06-01 11:00", tz=UTC)  # BST
    assert acc.loc["536591:1", "ts"] == pd.Timestamp("2011-03-27 00:30", tz=UTC)
    rejects = result.rejects.set_index("line")
    assert rejects.loc[11, ["field", "reason"]].tolist() == ["quantity", Reason.NON_NUMERIC]
    assert rejects.loc[12, ["field", "reason"]].tolist() == ["value", Reason.NEGATIVE_VALUE]
    assert '"Quantity": "x"' in rejects.loc[11, "raw"]  # the source row, in its own column names


def test_gzip_csv_keeps_line_numbers(tmp_path: Path) -> None:
    plain = FIXTURES / "events_contract.csv"
    gz = tmp_path / "events_contract.csv.gz"
    with plain.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    a, b = read_csv_rows(plain), read_csv_rows(gz)
    assert a.lines.tolist() == b.lines.tolist()
    assert a.lines.tolist() == [
        2,
        3,
        4,
        6,
        7,
        8,
        *range(10, 25),
        26,
        27,
    ]  # 4-5 is one row, 9 blank, 25 malformed
    assert a.malformed["line"].tolist() == b.malformed["line"].tolist() == [25]
    assert a.blank_lines == b.blank_lines == 1


def test_malformed_rows_are_found_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text('a,b\nx,y,z\n1,2\nx,y,z\n3,4\np,q,r\np,q,r\n5,"6\n7"\n8,9\n')
    rows = read_csv_rows(path)
    assert rows.lines.tolist() == [3, 5, 8, 10]
    assert rows.malformed["line"].tolist() == [2, 4, 6, 7]
    assert rows.malformed["message"].iloc[0] == "line 2: 3 fields where the header has 2"


def test_a_file_that_is_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("customer_id,ts,event_type\nJosé,2020-01-01,page_view\n".encode("latin-1"))
    with pytest.raises(SourceFormatError, match="UTF8"):
        read_csv_rows(path)


def test_missing_source_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("timestamp,visitorid,event,itemid\n1433221332117,1,view,2\n")
    with pytest.raises(SourceFormatError, match="transactionid"):
        read_retailrocket(path)


# --- generic reader ----------------------------------------------------------------------------------


def _check_generic_clicks(result: ValidationResult) -> None:
    acc = result.accepted
    assert acc["event_type"].tolist() == ["product_view", "purchase", "product_view"]
    assert acc["customer_id"].tolist() == ["u1", "u1", "u2"]
    assert acc["channel"].tolist() == ["app"] * 3
    assert acc["ts"].iloc[0] == pd.Timestamp("2024-03-01 10:00", tz=UTC)
    assert acc["value"].iloc[0] == 10.5
    assert np.isnan(acc["value"].iloc[2])
    assert result.rejects["reason"].tolist() == [Reason.UNKNOWN_EVENT_TYPE]  # "wishlist"


def test_generic_csv_with_yaml_mapping() -> None:
    mapping = ColumnMapping.from_yaml(FIXTURES / "generic_mapping.yaml")
    assert mapping.ts_unit == "ms"
    result = validate_raw(read_generic(FIXTURES / "generic_clicks.csv", mapping), now=NOW)
    _check_generic_clicks(result)
    assert result.rejects["line"].tolist() == [5]


def test_generic_csv_with_flag_pairs() -> None:
    mapping = ColumnMapping.from_pairs(["customer_id=user", "ts=time", "event_type=action", "item_id=sku"])
    result = validate_raw(read_generic(FIXTURES / "generic_clicks.csv", mapping), now=NOW)
    # Without value maps the source's "view" and "buy" are not contract event types.
    assert result.summary.rows_accepted == 0
    assert set(result.rejects["reason"]) == {Reason.UNKNOWN_EVENT_TYPE}


def test_flag_pairs_override_the_yaml_columns() -> None:
    mapping = ColumnMapping.from_yaml(FIXTURES / "generic_mapping.yaml").with_pairs(
        ["value=shop", "channel=shop"]
    )
    assert mapping.columns["value"] == "shop"
    assert "channel" not in mapping.constants  # the flag replaced the constant


def test_generic_parquet_with_flag_pairs(tmp_path: Path) -> None:
    path = tmp_path / "clicks.parquet"
    pd.DataFrame(
        {
            "user": ["u1", "u1", "u2"],
            "time": pd.to_datetime(["2024-03-01 11:00", "2024-03-01 11:01", "bad"], errors="coerce"),
            "action": ["product_view", "purchase", "product_view"],
            "sku": [1, 1, 2],
            "price": [10.5, 10.5, None],
        }
    ).to_parquet(path)
    mapping = ColumnMapping.from_pairs(["customer_id=user", "ts=time", "event_type=action", "item_id=sku"])
    mapping = ColumnMapping.from_dict({**mapping.to_dict(), "tz": "Europe/London"})
    result = validate_raw(read_generic(path, mapping), now=NOW)
    acc = result.accepted
    assert acc["ts"].tolist() == [
        pd.Timestamp("2024-03-01 11:00", tz=UTC),  # GMT in March before the change
        pd.Timestamp("2024-03-01 11:01", tz=UTC),
    ]
    assert acc["item_id"].tolist() == ["1", "1"]
    assert result.rejects[["line", "reason"]].values.tolist() == [[3, Reason.MISSING_FIELD]]  # row 3


def test_generic_without_mapping_reads_contract_columns() -> None:
    result = validate_raw(read_generic(FIXTURES / "events_contract.csv"), now=NOW)
    assert result.summary.rows_accepted == 7


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ColumnMapping.from_pairs(["customer=user", "ts=time", "event_type=a"]), "'customer'"),
        (lambda: ColumnMapping.from_pairs(["customer_id:user"]), "field=column"),
        (lambda: ColumnMapping.from_pairs(["customer_id=user", "ts=time"]), "event_type"),
        (lambda: ColumnMapping.from_dict({"columns": {"ts": "t"}, "colums": {}}), "'colums'"),
        (
            lambda: ColumnMapping.from_dict(
                {"columns": {"customer_id": "u", "ts": "t", "event_type": "e"}, "constants": {"colour": "x"}}
            ),
            "'colour'",
        ),
        (
            lambda: ColumnMapping.from_dict(
                {"columns": {"customer_id": "u", "ts": "t", "event_type": "e"}, "ts_unit": "days"}
            ),
            "ts_unit",
        ),
    ],
)
def test_bad_mappings_are_clear_errors(make: Callable[[], ColumnMapping], match: str) -> None:
    with pytest.raises(MappingError, match=match):
        make()


def test_unknown_field_in_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mapping.yaml"
    path.write_text("columns:\n  customer_id: user\n  ts: time\n  event_type: action\n  sku: sku\n")
    with pytest.raises(MappingError, match="'sku'"):
        ColumnMapping.from_yaml(path)


def test_mapped_column_not_in_file_is_named() -> None:
    mapping = ColumnMapping.from_pairs(["customer_id=user", "ts=when", "event_type=action"])
    with pytest.raises(SourceFormatError, match=r"when \(for ts\)"):
        read_generic(FIXTURES / "generic_clicks.csv", mapping)


# --- the real samples in ../shared/data -----------------------------------------------------------------


@pytest.mark.data
def test_retailrocket_sample(shared_data: Path) -> None:
    path = _require(shared_data / "retailrocket_sample" / "events.csv")
    raw = read_retailrocket(path)
    assert len(raw.frame) == 2771
    assert raw.frame["event_type"].value_counts().to_dict() == {
        "product_view": 2695,
        "add_to_cart": 62,
        "purchase": 14,
    }
    result = validate_raw(raw)
    s = result.summary
    # One add-to-cart row is an exact repeat of the line before it (same visitor, item and millisecond).
    assert (s.rows_read, s.rows_accepted, s.rows_rejected, s.rows_skipped) == (2771, 2770, 1, 0)
    assert result.rejects[["line", "reason"]].values.tolist() == [[1218, Reason.DUPLICATE_EVENT_ID]]
    assert result.accepted["event_type"].value_counts()["add_to_cart"] == 61
    assert s.customers == 1500
    independent = pd.read_csv(path, dtype=str)
    assert independent.duplicated().sum() == 1
    assert independent["visitorid"].nunique() == 1500


@pytest.mark.data
def test_rees46_sample(shared_data: Path) -> None:
    path = _require(shared_data / "rees46_sample" / "2019-Oct-sample.csv")
    raw = read_rees46(path)
    assert raw.frame["event_type"].value_counts().to_dict() == {
        "product_view": 987,
        "purchase": 10,
        "add_to_cart": 3,
    }
    result = validate_raw(raw)
    s = result.summary
    assert (s.rows_read, s.rows_accepted, s.rows_rejected, s.rows_skipped) == (1000, 1000, 0, 0)
    assert s.customers == 330
    assert s.ts_min == "2019-10-01T00:00:00+00:00"
    independent = pd.read_csv(path, dtype=str)
    assert result.accepted["category"].isna().sum() == 0
    assert (result.accepted["category"] == independent["category_id"]).sum() == independent[
        "category_code"
    ].isna().sum()


@pytest.mark.data
@pytest.mark.slow
def test_online_retail_sample(shared_data: Path) -> None:
    path = _require(shared_data / "online_retail" / "online_retail_2010-12_to_2011-09.csv.gz")
    result = validate_raw(read_online_retail(path))
    s = result.summary
    assert s.rows_read == 370_931
    assert s.rows_read == s.rows_accepted + s.rows_rejected + s.rows_skipped
    assert (s.rows_accepted, s.rows_rejected, s.rows_skipped) == (271_533, 0, 99_398)
    assert result.accepted["event_type"].value_counts().to_dict() == {"purchase": 265_447, "refund": 6_086}
    assert s.skipped["guest_line"] == 97_194
    assert s.skipped["stock_adjustment"] == 0
    assert s.skipped["non_product:POST"] == 872
    assert sum(v for k, v in s.skipped.items() if k.startswith("non_product:")) == 2_204
    assert s.customers == 3_648
    assert result.accepted["event_id"].is_unique

    # The same counts by plain pandas, another way of reading the rules.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert len(df) == 370_931
    product = df["StockCode"].str.fullmatch(r"\d{5}[A-Za-z]*") | df["StockCode"].str.startswith("DCGS")
    customer = df["CustomerID"] != ""
    cancel = df["InvoiceNo"].str.startswith("C")
    negative = pd.to_numeric(df["Quantity"]) < 0
    kept = product & customer & ~(negative & ~cancel)
    assert (~product).sum() == 2_204
    assert (product & ~customer).sum() == 97_194
    assert (kept & ~cancel).sum() == 265_447
    assert (kept & cancel).sum() == 6_086
    assert df.loc[kept, "CustomerID"].nunique() == 3_648
    # Times: the first and the last invoice of a customer in the file, GMT and BST.
    first = result.accepted.sort_values("ts").iloc[0]
    assert (first["event_id"], first["ts"]) == ("536365:1", pd.Timestamp("2010-12-01 08:26", tz=UTC))
    last_local = pd.Timestamp(df.loc[kept, "InvoiceDate"].max()).tz_localize("Europe/London")
    assert result.accepted["ts"].max() == last_local.tz_convert(UTC)
