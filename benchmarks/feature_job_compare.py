"""Agreement of the feature-job benchmark's two engines: does the DuckDB reference
(`benchmarks.feature_job_reference`) write the rows `build_features` writes?"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.build import load_rows
from features.encoder import AGGREGATE_NAMES, TOKEN_FIELDS
from features.snapshots import SPLITS

# Columns compared exactly, and those compared within a float tolerance.
EXACT_COLUMNS: tuple[str, ...] = (
    "split",
    "segment",
    "seq_len",
    *(f"tok_{name}" for name in TOKEN_FIELDS),
    "purchase_7d",
    "purchase_30d",
    "churn_30d",
    "stage",
    "next_items",
    "decision_id",
    "logged_action",
    "outcome_purchase",
    "outcome_unsubscribe",
)
FLOAT_COLUMNS: tuple[str, ...] = (*AGGREGATE_NAMES, "logged_propensity", "outcome_revenue")
RTOL = 1e-9
# Column-name prefixes of what only the pandas build writes: the item profile's list columns and the
# cart-abandonment label (checked against hand-worked events in tests/test_cart_abandonment.py instead).
NOT_IN_REFERENCE: tuple[str, ...] = ("hist_", "cart_abandon_")
ATOL = 1e-9


def _list_equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    """Row-wise equality of two list columns (same rows, same order)."""
    la, lb = a.combine_chunks(), b.combine_chunks()
    offsets_a = la.offsets.to_numpy() - la.offsets[0].as_py()
    offsets_b = lb.offsets.to_numpy() - lb.offsets[0].as_py()
    len_a, len_b = np.diff(offsets_a), np.diff(offsets_b)
    same = len_a == len_b
    flat_a = la.flatten().to_numpy(zero_copy_only=False)
    flat_b = lb.flatten().to_numpy(zero_copy_only=False)
    # Compare element by element only where the lengths agree; a row differs if any element does.
    row_a = np.repeat(np.arange(len(len_a)), len_a)
    keep_a = same[row_a]
    keep_b = same[np.repeat(np.arange(len(len_b)), len_b)]
    differs = flat_a[keep_a] != flat_b[keep_b]
    bad = np.zeros(len(len_a), dtype=bool)
    bad[row_a[keep_a][differs]] = True
    return same & ~bad


def _column_equal(name: str, a: pa.ChunkedArray, b: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_list(a.type) or pa.types.is_list(b.type):
        return _list_equal(a, b)
    if name in FLOAT_COLUMNS:
        x = a.to_numpy(zero_copy_only=False).astype(np.float64)
        y = b.to_numpy(zero_copy_only=False).astype(np.float64)
        return np.isclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True)
    x, y = a.to_pandas(), b.to_pandas()
    return ((x == y) | (x.isna() & y.isna())).to_numpy(dtype=bool)


def compare_outputs(pandas_out: Path, reference_out: Path, examples: int = 3) -> dict[str, Any]:
    """Checks that the DuckDB reference wrote the rows the pandas build wrote.

    Compares the number of rows per split, the (customer, cutoff) keys, and every row of every column:
    exactly for tokens, sequence lengths, labels and decisions; within `RTOL`/`ATOL` for aggregates and
    other floats.

    Returns:
        `agrees` (bool), rows per split of each engine, and per column the number of differing rows with
        a few examples; `differs` lists what differs, in words.
    """
    left = load_rows(pandas_out)
    right = load_rows(reference_out)
    report: dict[str, Any] = {
        "rows": {
            s: [int(pc.sum(pc.equal(t.column("split"), s)).as_py() or 0) for t in (left, right)]
            for s in SPLITS
        },
        "rows_compared": 0,
        "columns": {},
        "differs": [],
    }
    # The DuckDB query does not compute the whole-history item profile (`features.history`) nor the
    # cart-abandonment label: those columns are the pandas build's alone, and not compared.
    missing = sorted(
        c for c in set(left.column_names) ^ set(right.column_names) if not c.startswith(NOT_IN_REFERENCE)
    )
    if missing:
        report["differs"].append(f"columns in one output only: {', '.join(missing)}")
    for name in left.column_names:
        if name in right.column_names and left.schema.field(name).type != right.schema.field(name).type:
            report["differs"].append(
                f"type of {name}: {left.schema.field(name).type} (pandas) vs "
                f"{right.schema.field(name).type} (duckdb)"
            )
    for split, (n_left, n_right) in report["rows"].items():
        if n_left != n_right:
            report["differs"].append(f"{split}: {n_left} rows (pandas) vs {n_right} (duckdb)")

    keys = ["customer_id", "cutoff"]
    lk = left.select(keys).to_pandas().assign(_l=np.arange(left.num_rows))
    rk = right.select(keys).to_pandas().assign(_r=np.arange(right.num_rows))
    both = lk.merge(rk, on=keys, how="outer", indicator=True)
    only = both["_merge"].value_counts()
    if only.get("left_only", 0) or only.get("right_only", 0):
        report["differs"].append(
            f"keys: {only.get('left_only', 0)} (customer, cutoff) rows only in pandas, "
            f"{only.get('right_only', 0)} only in duckdb"
        )
    matched = both[both["_merge"] == "both"]
    left_m = left.take(pa.array(matched["_l"].to_numpy(dtype=np.int64)))
    right_m = right.take(pa.array(matched["_r"].to_numpy(dtype=np.int64)))
    report["rows_compared"] = len(matched)
    for name in (*EXACT_COLUMNS, *FLOAT_COLUMNS):
        if name not in left_m.column_names or name not in right_m.column_names:
            continue
        equal = _column_equal(name, left_m.column(name), right_m.column(name))
        n_bad = int((~equal).sum())
        entry: dict[str, Any] = {"differing_rows": n_bad}
        if n_bad:
            bad = np.flatnonzero(~equal)[:examples]
            entry["examples"] = [
                {
                    "customer_id": left_m.column("customer_id")[int(i)].as_py(),
                    "cutoff": str(left_m.column("cutoff")[int(i)].as_py()),
                    "pandas": left_m.column(name)[int(i)].as_py(),
                    "duckdb": right_m.column(name)[int(i)].as_py(),
                }
                for i in bad
            ]
            report["differs"].append(f"{name}: {n_bad} of {len(equal)} rows differ")
        report["columns"][name] = entry
    report["agrees"] = not report["differs"]
    return report
