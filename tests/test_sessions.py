"""Session mode: a row per session prefix whose target is the next item; the click-only shop; session k-NN.

Every expected value below is worked out by hand from the events written in the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from features.build import build_features, load_rows
from features.encoder import DT_EDGES_S
from features.sessions import SessionConfig, session_windows
from features.snapshots import BuildConfig
from features.vocab import FIRST, Vocabulary
from tests.factories import events, write_events
from tests.test_baselines import feature_data
from training.baselines import SessionKNN, all_baselines, load_baseline
from training.baselines.session_knn import training_sessions

# Customer a: two sessions on 2026-03-02 (the gap 10:10 -> 11:00 is 50 minutes), one on 03-04 (test).
# Customer b: one view alone on 03-02 (a one-view session has no prefix: no row), two views on 03-03.
SHOP = (
    ("a", "2026-03-02 10:00", "product_view", "I1"),
    ("a", "2026-03-02 10:05", "product_view", "I2"),
    ("a", "2026-03-02 10:06", "page_view"),
    ("a", "2026-03-02 10:10", "product_view", "I3"),
    ("a", "2026-03-02 11:00", "product_view", "I4"),
    ("a", "2026-03-02 11:20", "product_view", "I1"),
    ("a", "2026-03-02 11:25", "add_to_cart", "I1"),
    ("b", "2026-03-02 12:00", "product_view", "I2"),
    ("b", "2026-03-03 09:00", "product_view", "I2"),
    ("b", "2026-03-03 09:01", "product_view", "I3"),
    ("a", "2026-03-04 08:00", "product_view", "I3"),
    ("a", "2026-03-04 08:02", "product_view", "I4"),
)


def build(tmp_path: Path, **settings: object) -> tuple[pd.DataFrame, dict]:
    """Builds SHOP in session mode (valid window 03-03, test window 03-04) and returns its rows, with
    each row's next item as an item id, and its manifest."""
    events_path = write_events(events(*SHOP), tmp_path / "events.parquet")
    config = {
        "mode": "sessions",
        "valid_start": "2026-03-03",
        "test_start": "2026-03-04",
        "labels": {"next_item_events": ["product_view"]},
        "n_buckets": 1,
        "workers": 1,
        **settings,
    }
    out = tmp_path / "features"
    build_features(events_path, out, BuildConfig.from_dict(config), progress=False)
    vocab = Vocabulary.load(out / "vocab.json")
    items = vocab.tokens["item_id"]
    rows = load_rows(out).to_pandas()
    rows["next"] = [[items[i - FIRST] if i >= FIRST else "?" for i in x] for x in rows["next_items"]]
    rows["last_item"] = [
        items[x[-1] - FIRST] if len(x) and x[-1] >= FIRST else None for x in rows["tok_item_id"]
    ]
    rows["time"] = rows["cutoff"].dt.strftime("%m-%d %H:%M")
    return rows, json.loads((out / "manifest.json").read_text())


def test_a_row_per_session_prefix_and_its_next_view(tmp_path: Path) -> None:
    rows, manifest = build(tmp_path)
    got = list(zip(rows["customer_id"], rows["time"], rows["split"], rows["next"], strict=True))
    assert got == [
        # Not a's first view of each session (10:00, 11:00, 03-04 08:00), nor the page view (no item) or
        # the cart (not of the configured type); the cutoff is the target view's own time.
        ("a", "03-02 10:05", "train", ["I2"]),
        ("a", "03-02 10:10", "train", ["I3"]),
        ("a", "03-02 11:20", "train", ["I1"]),
        ("a", "03-04 08:02", "test", ["I4"]),
        # b's lone view of 03-02 is a session of one; 03-03 is the validation window.
        ("b", "03-03 09:01", "valid", ["I3"]),
    ]
    # Point in time: everything strictly before the cutoff, earlier sessions included (ts < cutoff).
    assert rows["seq_len"].tolist() == [1, 3, 5, 8, 2]
    assert rows["last_item"].tolist() == ["I1", None, "I4", "I3", "I2"]  # 10:06 is the page view
    assert manifest["rows"] == {"train": 3, "valid": 1, "test": 1}
    assert manifest["cutoffs"] == {
        "train": ["2026-03-02"],
        "valid": ["2026-03-03"],
        "test": ["2026-03-04"],
    }
    assert set(rows["segment"]) <= {"new", "active"}


def test_the_gap_setting_splits_sessions(tmp_path: Path) -> None:
    # With a 60-minute gap the 50 minutes between 10:10 and 11:00 no longer end a session.
    rows, _ = build(tmp_path, sessions={"gap_minutes": 60})
    train = rows[rows["split"] == "train"]
    assert train["time"].tolist() == ["03-02 10:05", "03-02 10:10", "03-02 11:00", "03-02 11:20"]
    assert [x[0] for x in train["next"]] == ["I2", "I3", "I4", "I1"]


def test_the_target_is_the_next_event_of_the_configured_types(tmp_path: Path) -> None:
    # Carts count too: a's second session is view I4, view I1, cart I1 -> rows at 11:20 and 11:25.
    rows, _ = build(tmp_path, labels={"next_item_events": ["product_view", "add_to_cart"]})
    a = rows[(rows["customer_id"] == "a") & (rows["split"] == "train")]
    assert list(zip(a["time"], [x[0] for x in a["next"]], strict=True)) == [
        ("03-02 10:05", "I2"),
        ("03-02 10:10", "I3"),
        ("03-02 11:20", "I1"),
        ("03-02 11:25", "I1"),
    ]


def test_rows_per_split_are_capped(tmp_path: Path) -> None:
    rows, manifest = build(tmp_path, sessions={"max_rows_per_split": 1})
    assert manifest["rows"] == {"train": 1, "valid": 1, "test": 1}
    again, _ = build(tmp_path / "again", sessions={"max_rows_per_split": 1})
    assert rows["time"].tolist() == again["time"].tolist()  # the same seeded choice


def test_windows_by_time_and_their_errors() -> None:
    first, last = pd.Timestamp("2026-01-01 08:00", tz="UTC"), pd.Timestamp("2026-01-31 20:00", tz="UTC")
    got = session_windows(first, last, SessionConfig())
    # The data ends at the end of its last day (02-01); test is its last 7 days, validation the 7 before.
    assert got == {
        "train": pd.Timestamp("2026-01-01", tz="UTC"),
        "valid": pd.Timestamp("2026-01-18", tz="UTC"),
        "test": pd.Timestamp("2026-01-25", tz="UTC"),
    }
    with pytest.raises(ValueError, match=r"sessions\.test_days"):
        session_windows(first, last, SessionConfig(test_days=20, valid_days=20))


def test_settings_are_checked() -> None:
    assert BuildConfig().mode == "grid"  # the default: weekly cutoffs, unchanged
    with pytest.raises(ValueError, match="mode"):
        BuildConfig.from_dict({"mode": "clicks"})
    with pytest.raises(ValueError, match="unknown sessions setting"):
        BuildConfig.from_dict({"sessions": {"gap": 30}})
    with pytest.raises(ValueError, match=r"sessions\.gap_minutes"):
        SessionConfig(gap_minutes=0)


# ----------------------------------------------------------------------------------------------------------
# The click-only shop


def test_the_click_only_shop_writes_product_views_only(tmp_path: Path) -> None:
    from features.sim import SimConfig, simulate

    summary = simulate(
        SimConfig(n_customers=150, n_items=600, n_categories=6, days=21, click_only=True),
        tmp_path,
        progress=False,
    )
    ev = pq.read_table(tmp_path / "events").to_pandas()
    assert set(ev["event_type"].astype(str)) == {"product_view"}
    assert ev["item_id"].notna().all()
    assert (summary.purchases, summary.decisions, summary.sends) == (0, 0, 0)
    assert not (tmp_path / "decisions.parquet").exists()
    # The latent structure: consecutive views of a session follow each item's own successors, one way.
    successors = pq.read_table(tmp_path / "truth" / "successors.parquet").to_pandas()
    pairs = set(zip(successors["item_id"], successors["successor_id"], strict=True))
    ev = ev.sort_values(["customer_id", "ts"])
    same = ev["session_id"].to_numpy()[1:] == ev["session_id"].to_numpy()[:-1]
    prev, nxt = ev["item_id"].to_numpy()[:-1][same], ev["item_id"].to_numpy()[1:][same]
    forward = np.mean([(p, n) in pairs for p, n in zip(prev, nxt, strict=True)])
    backward = np.mean([(n, p) in pairs for p, n in zip(prev, nxt, strict=True)])
    assert forward > 0.4
    assert backward < forward / 3


# ----------------------------------------------------------------------------------------------------------
# Session k-NN on hand-worked sessions

A, B, C, D, E = range(FIRST, FIRST + 5)
SESSION_TOKEN = FIRST + 1 + int(np.searchsorted(DT_EDGES_S, 1_800, side="right"))  # a gap of 30 minutes


def sessions_data(prefixes: list[list[int]], labels: list[list[int]], customers: list[str], gaps=None):
    data = feature_data([[(i, "product_view") for i in p] for p in prefixes], labels, customers)
    dt = data.tokens["dt_bucket"]
    for row, p in enumerate(prefixes):
        start = dt.shape[1] - len(p)
        dt[row, start:] = FIRST + 2  # a minute apart
        if p:
            dt[row, start] = FIRST  # the customer's first event
        for pos in (gaps or {}).get(row, []):
            dt[row, start + pos] = SESSION_TOKEN
    return data


def test_session_knn_by_hand() -> None:
    # Training sessions {A, B}, {A, B}, {A, C}, {D, E}: the first is two rows of one session (A -> B,
    # then A, B -> B again), which count once. Cosine over sessions: cos(A, B) = 2 / sqrt(3 * 2) = 0.8165,
    # cos(A, C) = 1 / sqrt(3) = 0.5774, cos(D, E) = 1.
    train = sessions_data(
        [[A], [A, B], [A], [A], [D]], [[B], [B], [B], [C], [E]], ["s1", "s1", "s2", "s3", "s4"]
    )
    sessions = training_sessions(train, gap_s=1_800)
    assert sessions.shape[0] == 4
    assert sorted(map(tuple, (np.flatnonzero(r) for r in sessions.toarray()))) == [
        (A, B), (A, B), (A, C), (D, E),
    ]  # fmt: skip
    model = SessionKNN(decay_grid=(0.5,), neighbours=10, gap_minutes=30).fit(train, train)
    # Query: D, then (after a 30-minute gap) C, A. D is another session: left out. Weights A 1, C 0.5:
    # B = 0.8165, C = cos(A, C) = 0.5774, A = 0.5 * cos(C, A) = 0.2887, D and E nothing.
    query = sessions_data([[D, C, A]], [[B]], ["q"], gaps={0: [1]})
    scores = model.scores(query).toarray()[0]
    np.testing.assert_allclose(
        scores[[A, B, C, D, E]], [0.5 / np.sqrt(3), 2 / np.sqrt(6), 1 / np.sqrt(3), 0, 0]
    )
    assert model.predict(query, k=3).top_items[0].tolist() == [B, C, A]


def test_session_knn_saves_and_is_a_session_default(tmp_path: Path) -> None:
    train = sessions_data([[A], [A], [D]], [[B], [C], [E]], ["s1", "s2", "s3"])
    model = SessionKNN(decay_grid=(0.5, 0.9), neighbours=10).fit(train, train)
    model.save(tmp_path / "knn")
    loaded = load_baseline(tmp_path / "knn")
    assert loaded.predict(train, k=4).top_items.tolist() == model.predict(train, k=4).top_items.tolist()
    names = [b.name for b in all_baselines(build={"mode": "sessions", "sessions": {"gap_minutes": 45}})]
    assert "session_knn" in names
    assert "lightgbm_aggregates" not in names
    assert "session_knn" not in [b.name for b in all_baselines(build={"mode": "grid"})]
    knn = next(b for b in all_baselines(build={"mode": "sessions", "sessions": {"gap_minutes": 45}})
               if isinstance(b, SessionKNN))  # fmt: skip
    assert knn.gap_minutes == 45
    assert isinstance(sp.csr_matrix(model.scores(train)), sp.csr_matrix)
