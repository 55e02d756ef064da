"""The audience export: one row per customer of the events (or of a segment), valid actions only, never an
e-mail to an unsubscribed customer, and every decision recorded under the id written in the file."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest

from features.schema import ACTIONS, STAGES
from predictor.registry import CHAMPION, MODEL_NAME
from serving.audience import read_segment, score_audience
from serving.model import ModelManager
from serving.service import Service
from serving.settings import ServeSettings
from serving.store import open_store
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NOW = datetime(2026, 4, 20, 12, tzinfo=UTC)


@pytest.fixture
def audience_events(served: Served, tmp_path: Path) -> tuple[Path, list[str], str]:
    """Events of 300 customers before NOW; the first of them unsubscribes the day before."""
    events = served.events[served.events["ts"] < pd.Timestamp(NOW)]
    customers = sorted(events["customer_id"].unique())[:300]
    mine = events[events["customer_id"].isin(customers)].copy()
    quitter = customers[0]
    unsubscribe = mine[mine["customer_id"] == quitter].tail(1).copy()
    unsubscribe["ts"] = pd.Timestamp(NOW) - pd.Timedelta(days=1)
    unsubscribe["event_type"] = "email_unsubscribe"
    unsubscribe["channel"] = "email"
    unsubscribe["item_id"] = None
    unsubscribe["event_id"] = "quit-1"
    path = tmp_path / "events"
    path.mkdir()
    pd.concat([mine, unsubscribe], ignore_index=True).to_parquet(path / "part-0.parquet", index=False)
    return path, customers, quitter


@pytest.fixture
def service(served: Served, tmp_path: Path) -> Service:
    manager = ModelManager(MODEL_NAME, CHAMPION)
    manager.reload()
    store = open_store(f"sqlite:///{tmp_path / 'online.db'}")
    # Send whenever anything is eligible, so that a consent leak could not hide behind no_send.
    return Service(ServeSettings(api_keys=("k",), min_uplift=-1.0, seed=0), store, manager)


def test_one_row_per_customer_valid_actions_and_no_email_after_unsubscribing(
    service: Service, audience_events: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    path, customers, quitter = audience_events
    seen: list[tuple[int, int]] = []
    summary = score_audience(service, path, tmp_path / "audience.parquet", now=NOW, chunk=128,
                             progress=lambda done, total: seen.append((done, total)))  # fmt: skip
    frame = pd.read_parquet(tmp_path / "audience.parquet")
    assert summary.customers == len(customers)
    assert sorted(frame["customer_id"]) == customers
    assert frame["customer_id"].is_unique
    assert set(frame["action"]) <= set(ACTIONS)
    assert set(frame["stage"]) <= set(STAGES)
    assert seen[-1] == (len(customers), len(customers))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    row = frame.set_index("customer_id").loc[quitter]
    assert row["action"] == "no_send"
    assert row["channel"] is None
    # Others do get e-mails (min_uplift -1), so the rule, not the model, kept the quitter's inbox empty.
    # (Each action's eligibility and the cooldowns of the shop's own sends leave about a fifth of them.)
    assert (frame["channel"] == "email").sum() > len(customers) // 10
    for decision_id, action in zip(frame["decision_id"], frame["action"], strict=True):
        decision = service.store.decision(decision_id)
        assert decision is not None
        assert decision.action == action
    assert frame["decision_id"].is_unique
    assert (frame["top_items"].str.split().str.len() == 5).all()
    assert ((frame["p_purchase_7d"] >= 0) & (frame["p_purchase_7d"] <= 1)).all()


def test_a_segment_to_csv_includes_customers_without_events(
    service: Service, audience_events: tuple[Path, list[str], str], tmp_path: Path
) -> None:
    path, customers, _ = audience_events
    segment_file = tmp_path / "segment.csv"
    pd.DataFrame({"customer_id": [*customers[10:20], "NEW-1"]}).to_csv(segment_file, index=False)
    segment = read_segment(segment_file)
    score_audience(service, path, tmp_path / "segment.csv.out.csv", now=NOW, segment=segment, record=False)
    frame = pd.read_csv(tmp_path / "segment.csv.out.csv", dtype={"customer_id": str})
    assert sorted(frame["customer_id"]) == sorted([*customers[10:20], "NEW-1"])
    assert frame["decision_id"].isna().all()  # a preview records nothing
    new = frame.set_index("customer_id").loc["NEW-1"]
    assert new["stage"] in STAGES
    assert new["action"] == "no_send"  # unknown consent: no marketing e-mail
    with pytest.raises(ValueError, match=r"parquet or \.csv"):
        score_audience(service, path, tmp_path / "x.json", now=NOW)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_exporting_twice_at_the_same_time_sends_nobody_a_second_message(
    kind: str,
    served: Served,
    audience_events: tuple[Path, list[str], str],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """The export commits with the service's rules: the gap and the cooldowns hold between two runs."""
    path, customers, _ = audience_events
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'twice.db'}"
    else:
        url = f"{request.getfixturevalue('redis_url')}?namespace=audience-{uuid.uuid4().hex[:8]}:"
    manager = ModelManager(MODEL_NAME, CHAMPION)
    manager.reload()
    store = open_store(url)
    service = Service(ServeSettings(api_keys=("k",), min_uplift=-1.0, seed=0), store, manager)
    try:
        score_audience(service, path, tmp_path / "first.parquet", now=NOW, chunk=128)
        score_audience(service, path, tmp_path / "second.parquet", now=NOW, chunk=128)
        decisions = store.export_decisions()
    finally:
        store.close()
    first, second = pd.read_parquet(tmp_path / "first.parquet"), pd.read_parquet(tmp_path / "second.parquet")
    emailed = set(first.loc[first["channel"] == "email", "customer_id"])
    assert len(emailed) > len(customers) // 10
    again = second[second["customer_id"].isin(emailed) & (second["channel"] == "email")]
    assert again.empty, again[["customer_id", "action"]]
    messages = decisions[decisions["action"] != "no_send"]
    assert messages["customer_id"].is_unique
    assert len(decisions) == 2 * len(customers)
