"""Tests of the journey simulator: determinism, the event contract, realism, and that its truth is true.

One small shop (2,500 customers, 91 days) is simulated once per module; the realism ranges are those of the
module docstring of `features.sim`.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from features import schema
from features.sim import (
    ACTIONS,
    LATENT_STAGES,
    LATENT_TO_STAGE,
    PolicyInputs,
    SimConfig,
    format_summary,
    logging_policy_probabilities,
    simulate,
    true_conversion_probabilities,
    unsubscribe_probability,
)

CONFIG = SimConfig(n_customers=2_500, n_items=800, days=91, seed=7)


@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    simulate(CONFIG, out, progress=False)
    return out


@pytest.fixture(scope="module")
def events(sim_dir: Path) -> pd.DataFrame:
    table = schema.conform_table(ds.dataset(sim_dir / "events").to_table())
    return table.to_pandas()


@pytest.fixture(scope="module")
def truth(sim_dir: Path) -> pd.DataFrame:
    return pq.read_table(sim_dir / "truth/decisions.parquet").to_pandas()


@pytest.fixture(scope="module")
def stages(sim_dir: Path) -> pd.DataFrame:
    df = pq.read_table(sim_dir / "truth/stages.parquet").to_pandas()
    return df.astype({"customer_id": str, "stage": str})


def _p_taken(truth: pd.DataFrame) -> np.ndarray:
    p = truth[[f"p_convert__{a}" for a in ACTIONS]].to_numpy()
    idx = truth["action"].map({a: i for i, a in enumerate(ACTIONS)}).to_numpy()
    return np.asarray(p[np.arange(len(truth)), idx])


# -- determinism and layout --------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(sim_dir: Path, tmp_path: Path) -> None:
    simulate(CONFIG, tmp_path, progress=False)
    for name in (
        "events/part-00000.parquet",
        "catalog.parquet",
        "decisions.parquet",
        "truth/decisions.parquet",
        "truth/stages.parquet",
    ):
        assert (tmp_path / name).read_bytes() == (sim_dir / name).read_bytes(), name


def test_another_seed_gives_other_events(sim_dir: Path, tmp_path: Path) -> None:
    simulate(replace(CONFIG, seed=8), tmp_path, progress=False)
    ours = pq.read_table(sim_dir / "events/part-00000.parquet")
    theirs = pq.read_table(tmp_path / "events/part-00000.parquet")
    assert ours.num_rows != theirs.num_rows or not ours.equals(theirs)


def test_chunks_write_one_part_each_and_keep_customers_whole(tmp_path: Path) -> None:
    cfg = replace(CONFIG, n_customers=700, days=30, chunk_size=300)
    summary = simulate(cfg, tmp_path, progress=False)
    parts = sorted((tmp_path / "events").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    seen: set[str] = set()
    for part in parts:
        ids = set(pq.read_table(part, columns=["customer_id"]).column(0).to_pylist())
        assert not ids & seen
        seen |= ids
    assert len(seen) == cfg.n_customers == summary.customers
    assert pq.read_metadata(tmp_path / "truth/stages.parquet").num_row_groups >= 3


def test_summary_and_json(sim_dir: Path, tmp_path: Path) -> None:
    saved = json.loads((sim_dir / "simulation.json").read_text())
    assert saved["config"]["n_customers"] == CONFIG.n_customers
    assert saved["events"] == pq.read_metadata(sim_dir / "events/part-00000.parquet").num_rows
    assert set(saved["stage_mix"]) == set(LATENT_STAGES)
    assert abs(sum(saved["stage_mix"].values()) - 1.0) < 1e-9
    summary = simulate(replace(CONFIG, n_customers=50, days=20), tmp_path, progress=False)
    text = format_summary(summary)
    assert "50 customers" in text
    assert "open" in text


def test_config_rejects_overlapping_windows() -> None:
    with pytest.raises(ValueError, match="outcome_days"):
        SimConfig(outcome_days=8, decision_every_days=7)
    with pytest.raises(ValueError, match="send_rate"):
        SimConfig(send_rate=1.0)


def test_catalogue_of_100k_items(tmp_path: Path) -> None:
    simulate(SimConfig(n_customers=200, n_items=100_000, n_categories=40, days=14), tmp_path, progress=False)
    catalog = pq.read_table(tmp_path / "catalog.parquet").to_pandas()
    assert len(catalog) == 100_000
    assert catalog["item_id"].is_unique
    assert catalog["item_id"].iloc[-1] == "I100000"
    assert catalog["category"].nunique() == 40
    assert catalog["popularity"].sum() == pytest.approx(1.0)
    assert (catalog["price"] > 0).all()
    used = ds.dataset(tmp_path / "events").to_table(columns=["item_id"]).column(0).cast(pa.string())
    assert set(used.drop_null().unique().to_pylist()) <= set(catalog["item_id"])


# -- the event contract --------------------------------------------------------------------------------------


def test_events_follow_the_schema(sim_dir: Path) -> None:
    written = pq.read_schema(sim_dir / "events/part-00000.parquet")
    assert written.names == schema.EVENT_SCHEMA.names
    for field in schema.EVENT_SCHEMA:
        got = written.field(field.name)
        assert got.nullable == field.nullable, field.name
        value_type = got.type.value_type if pa.types.is_dictionary(got.type) else got.type
        assert value_type == field.type, field.name
    table = schema.conform_table(pq.read_table(sim_dir / "events/part-00000.parquet"))
    assert table.schema == schema.EVENT_SCHEMA
    for name in ("customer_id", "ts", "event_type", "channel", "event_id"):
        assert table.column(name).null_count == 0, name


def test_event_values_are_valid(events: pd.DataFrame) -> None:
    assert set(events["event_type"]) <= set(schema.EVENT_TYPES)
    assert set(events["channel"]) <= set(schema.CHANNELS)
    assert set(events["message_type"].dropna()) <= set(schema.MESSAGE_ACTIONS)
    assert events["event_id"].is_unique
    assert events["customer_id"].str.fullmatch(r"C\d{7}").all()
    assert events["item_id"].dropna().str.fullmatch(r"I\d{6}").all()
    product = events["event_type"].isin(schema.PRODUCT_EVENTS)
    assert events.loc[product, "item_id"].notna().all()
    assert events.loc[product, "category"].notna().all()
    assert events.loc[~product, "item_id"].isna().all()
    sent = events["event_type"].isin(schema.SENT_MESSAGE_EVENTS)
    assert events.loc[sent, "message_type"].notna().all()
    assert (events.loc[sent, "channel"] == "email").all()
    purchases = events[events["event_type"] == "purchase"]
    assert (purchases["value"] > 0).all()
    assert (purchases["quantity"] >= 1).all()
    assert events.loc[events["event_type"] != "purchase", "value"].isna().all()


def test_events_are_sorted_by_customer_then_time(sim_dir: Path) -> None:
    table = pq.read_table(sim_dir / "events/part-00000.parquet", columns=["customer_id", "ts"])
    cust = np.asarray(table.column("customer_id").cast(pa.string()).to_pylist())
    ts = table.column("ts").cast(pa.int64()).to_numpy()
    assert (cust[1:] >= cust[:-1]).all()
    same = cust[1:] == cust[:-1]
    assert (ts[1:][same] >= ts[:-1][same]).all()


def test_sessions_follow_the_funnel(events: pd.DataFrame) -> None:
    rank = {"page_view": 0, "search": 1, "product_view": 2, "review": 2}
    rank |= {"add_to_cart": 3, "remove_from_cart": 4, "checkout_start": 5, "purchase": 6}
    sessions = events[events["session_id"].notna()].copy()
    assert set(sessions["event_type"]) <= set(rank)
    assert set(sessions["channel"]) <= {"web", "app"}
    sessions["rank"] = sessions["event_type"].map(rank)
    step = sessions.groupby("session_id")["rank"].diff().dropna()
    assert (step >= 0).all()
    online = sessions[sessions["event_type"] == "purchase"]["session_id"].unique()
    with_checkout = sessions[sessions["event_type"] == "checkout_start"]["session_id"].unique()
    assert set(online) <= set(with_checkout)
    # A session lives within one day.
    by_session = sessions.groupby("session_id")["ts"]
    span = by_session.max() - by_session.min()
    assert (span < pd.Timedelta(hours=1)).all()


def test_signups_come_first_and_consent_follows(events: pd.DataFrame) -> None:
    first = events.groupby("customer_id").first()
    assert (first["event_type"] == "signup").all()
    consented = events.loc[events["event_type"] == "newsletter_signup", "customer_id"].nunique()
    assert 0.7 < consented / events["customer_id"].nunique() < 0.9


# -- decisions and the logging policy ----------------------------------------------------------------------


def test_decision_log_matches_email_events(sim_dir: Path, events: pd.DataFrame, truth: pd.DataFrame) -> None:
    log = pq.read_table(sim_dir / "decisions.parquet")
    assert log.column_names == [
        "decision_id", "customer_id", "ts", "action", "propensity", "policy", "control", "intended_action",
    ]  # fmt: skip
    assert log.schema.field("ts").type == schema.TS_TYPE
    assert log.schema.field("propensity").type == pa.float64()
    decisions = log.to_pandas()
    assert decisions["decision_id"].is_unique
    assert set(decisions["action"]) <= set(ACTIONS)
    assert (decisions["policy"] == CONFIG.policy).all()
    # No control group by default: nobody held out, the intended action is the one taken.
    assert not decisions["control"].any()
    assert (decisions["intended_action"] == decisions["action"]).all()
    assert decisions["decision_id"].tolist() == truth["decision_id"].tolist()
    sent = events[events["event_type"] == "email_sent"].set_index("campaign_id")
    sends = decisions[decisions["action"] != "no_send"].set_index("decision_id")
    assert len(sent) == len(sends)
    joined = sends.join(sent, rsuffix="_event", how="left")
    assert (joined["ts"] == joined["ts_event"]).all()
    assert (joined["action"] == joined["message_type"]).all()
    assert (joined["customer_id"] == joined["customer_id_event"]).all()
    # Decisions are exactly decision_every_days apart for each customer, so windows never overlap.
    gaps = decisions.groupby("customer_id")["ts"].diff().dropna()
    assert (gaps == pd.Timedelta(days=CONFIG.decision_every_days)).all()


def test_policy_gives_every_action_a_propensity() -> None:
    rng = np.random.default_rng(0)
    n = 2_000

    def days() -> np.ndarray:
        return np.where(rng.random(n) < 0.2, np.inf, rng.integers(0, 90, n).astype(float))

    inputs = PolicyInputs(
        consented=rng.random(n) < 0.8,
        tenure_days=rng.integers(0, 400, n).astype(float),
        days_since_view=days(),
        days_since_cart=days(),
        days_since_purchase=days(),
        days_since_activity=days(),
        purchases=rng.integers(0, 6, n).astype(float),
    )
    probs = logging_policy_probabilities(inputs, send_rate=0.75)
    assert probs.shape == (n, len(ACTIONS))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs[inputs.consented] > 0).all()
    no_send = ACTIONS.index("no_send")
    np.testing.assert_array_equal(
        probs[~inputs.consented], np.eye(len(ACTIONS))[[no_send] * (~inputs.consented).sum()]
    )
    np.testing.assert_allclose(probs[inputs.consented, no_send], 0.25)
    # A recent cart makes cart_abandonment likelier; the latent stage is not an input at all.
    cart = ACTIONS.index("cart_abandonment")
    recent = inputs.consented & (inputs.days_since_cart <= 7)
    old = inputs.consented & (inputs.days_since_cart > 7)
    assert probs[recent, cart].mean() > 2 * probs[old, cart].mean()


def test_logged_propensities(truth: pd.DataFrame, events: pd.DataFrame) -> None:
    assert ((truth["propensity"] > 0) & (truth["propensity"] <= 1)).all()
    consenting = set(events.loc[events["event_type"] == "newsletter_signup", "customer_id"])
    never = truth[~truth["customer_id"].isin(consenting)]
    assert len(never) > 0
    assert (never["action"] == "no_send").all()
    assert (never["propensity"] == 1.0).all()
    explored = truth[truth["propensity"] < 1]
    assert set(explored["action"]) == set(ACTIONS)
    no_send = explored[explored["action"] == "no_send"]
    np.testing.assert_allclose(no_send["propensity"], 1 - CONFIG.send_rate)


def test_unsubscribed_customers_are_never_sent_again(truth: pd.DataFrame, events: pd.DataFrame) -> None:
    unsub_events = events[events["event_type"] == "email_unsubscribe"]
    assert len(unsub_events) == truth["unsubscribed"].sum() > 0
    first_unsub = truth[truth["unsubscribed"] == 1].groupby("customer_id")["ts"].min()
    later = truth.join(first_unsub.rename("unsub_ts"), on="customer_id", how="inner")
    later = later[later["ts"] > later["unsub_ts"]]
    assert len(later) > 0
    assert (later["action"] == "no_send").all()
    assert (later["propensity"] == 1.0).all()
    sends = events[events["event_type"] == "email_sent"].join(
        unsub_events.groupby("customer_id")["ts"].min().rename("unsub_ts"), on="customer_id", how="inner"
    )
    assert (sends["ts"] < sends["unsub_ts"]).all()


def test_unsubscribes_grow_with_fatigue(truth: pd.DataFrame) -> None:
    stage = np.zeros(4, dtype=np.int64)
    p = unsubscribe_probability(np.arange(1, 5), stage)
    assert (np.diff(p) > 0).all()
    sent = truth[truth["action"] != "no_send"]
    assert 0.001 < sent["unsubscribed"].mean() < 0.01
    light = sent.loc[sent["sends_28d"] == 1, "unsubscribed"].mean()
    heavy = sent.loc[sent["sends_28d"] >= 3, "unsubscribed"].mean()
    assert heavy > light


# -- ground truth ----------------------------------------------------------------------------------------


def test_forward_pass_by_hand() -> None:
    """One and two days from `decision` for an average customer, worked out from the tables by hand."""
    stage = np.array([LATENT_STAGES.index("decision")])
    one = true_conversion_probabilities(stage, np.ones(1), np.zeros(1), days=1)[0]
    assert one[ACTIONS.index("no_send")] == pytest.approx(0.20)
    assert one[ACTIONS.index("cart_abandonment")] == pytest.approx(0.32)
    assert one[ACTIONS.index("welcome_series")] == pytest.approx(0.20 * 0.97)
    # Day 2 after surviving day 1 (0.8): stay in decision (1 - 0.12 - 0.03) and buy at 0.2, or move to
    # consideration (0.12) and buy at 0.012, or to at_risk (0.03) and buy at 0.003.
    two = true_conversion_probabilities(stage, np.ones(1), np.zeros(1), days=2)[0]
    expected = 0.2 + 0.8 * (0.85 * 0.2 + 0.12 * 0.012 + 0.03 * 0.003)
    assert two[ACTIONS.index("no_send")] == pytest.approx(expected)


def test_realised_conversion_is_drawn_from_the_true_probability(truth: pd.DataFrame) -> None:
    p = _p_taken(truth)
    y = truth["converted"].to_numpy()
    z_all = (y.sum() - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert abs(z_all) < 4
    frame = pd.DataFrame(
        {"stage": truth["stage"], "action": truth["action"], "y": y, "p": p, "v": p * (1 - p)}
    )
    cells = frame.groupby(["stage", "action"]).agg(
        n=("y", "size"), y=("y", "sum"), p=("p", "sum"), v=("v", "sum")
    )
    cells = cells[(cells["n"] >= 50) & (cells["v"] > 1)]
    assert len(cells) >= 40
    z = (cells["y"] - cells["p"]) / np.sqrt(cells["v"])
    assert (z.abs() < 4.5).all(), z[z.abs() >= 4.5]


def test_true_effects_have_the_stated_signs(truth: pd.DataFrame) -> None:
    def lift(action: str, stage: str) -> float:
        rows = truth[truth["stage"] == stage]
        assert len(rows) > 100
        return float((rows[f"p_convert__{action}"] - rows["p_convert__no_send"]).mean())

    assert lift("cart_abandonment", "decision") > 0.05
    assert lift("winback_offer", "at_risk") > 0.01
    assert lift("winback_offer", "lapsed") > 0
    assert lift("browse_abandonment", "consideration") > 0.02
    assert lift("welcome_series", "awareness") > 0.005
    assert lift("cross_sell", "post_purchase") > 0.01
    assert lift("post_purchase_onboarding", "post_purchase") > 0.01
    assert lift("loyalty_reward", "loyal") > 0.02
    for action, stage in [
        ("cart_abandonment", "awareness"),
        ("winback_offer", "loyal"),
        ("loyalty_reward", "awareness"),
        ("welcome_series", "loyal"),
        ("welcome_series", "decision"),
        ("feedback_request", "at_risk"),
    ]:
        assert abs(lift(action, stage)) < 0.015, (action, stage)


def test_truth_stages_cover_every_day_from_arrival(stages: pd.DataFrame, events: pd.DataFrame) -> None:
    assert set(stages["stage"]) == set(LATENT_STAGES)
    assert set(LATENT_TO_STAGE.values()) == set(schema.STAGES)
    start = pd.Timestamp(CONFIG.start, tz="UTC")
    signup = events[events["event_type"] == "signup"].set_index("customer_id")["ts"]
    arrival = ((signup - start).dt.floor("D") / pd.Timedelta(days=1)).clip(lower=0).astype(int)
    days = pd.to_datetime(stages["day"]) - start.tz_localize(None)
    stages = stages.assign(d=(days / pd.Timedelta(days=1)).astype(int))
    per = stages.groupby("customer_id")["d"].agg(["min", "max", "size", "nunique"])
    per = per.join(arrival.rename("arrival"))
    assert len(per) == CONFIG.n_customers
    assert (per["min"] == per["arrival"]).all()
    assert (per["max"] == CONFIG.days - 1).all()
    assert (per["size"] == CONFIG.days - per["arrival"]).all()
    assert (per["nunique"] == per["size"]).all()


# -- realism ------------------------------------------------------------------------------------------------


def test_stage_mix_is_realistic(stages: pd.DataFrame) -> None:
    mix = stages["stage"].value_counts(normalize=True)
    ranges = {
        "awareness": (0.03, 0.18),
        "consideration": (0.08, 0.25),
        "decision": (0.01, 0.06),
        "post_purchase": (0.05, 0.20),
        "loyal": (0.04, 0.20),
        "at_risk": (0.05, 0.20),
        "lapsed": (0.15, 0.55),
    }
    for stage, (lo, hi) in ranges.items():
        assert lo <= mix[stage] <= hi, (stage, mix[stage])


def test_activity_and_conversion_are_realistic(
    events: pd.DataFrame, stages: pd.DataFrame, truth: pd.DataFrame
) -> None:
    per_day = len(events) / len(stages)
    assert 0.35 <= per_day <= 0.8
    buys = events[events["event_type"] == "purchase"]
    buy_days = set(zip(buys["customer_id"], buys["ts"].dt.tz_localize(None).dt.normalize(), strict=True))
    decision = stages[stages["stage"] == "decision"]
    hit = [
        (c, pd.Timestamp(d)) in buy_days
        for c, d in zip(decision["customer_id"], decision["day"], strict=True)
    ]
    assert 0.10 <= np.mean(hit) <= 0.30
    no_send = truth[truth["action"] == "no_send"]
    assert 0.04 <= no_send["converted"].mean() <= 0.15
    assert 0.40 <= no_send.loc[no_send["stage"] == "decision", "converted"].mean() <= 0.80


def test_email_reactions_are_realistic(events: pd.DataFrame) -> None:
    counts = events["event_type"].value_counts()
    sends = counts["email_sent"]
    assert 0.20 <= counts["email_open"] / sends <= 0.30
    assert 0.02 <= counts["email_click"] / sends <= 0.05
    assert counts["email_unsubscribe"] / sends < 0.01


def test_recommendation_signal(events: pd.DataFrame) -> None:
    """Purchases come both from the customer's own history and from their category taste."""
    items = events[events["item_id"].notna()]
    day = items["ts"].dt.floor("D")
    first_day = day.groupby([items["customer_id"], items["item_id"]]).transform("min")
    buys = items["event_type"] == "purchase"
    from_history = (first_day[buys] < day[buys]).mean()
    assert 0.3 <= from_history <= 0.9
    top_share = items.groupby("customer_id")["category"].agg(lambda c: c.value_counts(normalize=True).iloc[0])
    active = items.groupby("customer_id").size() >= 10
    assert top_share[active].median() > 0.35


def test_ids_are_well_formed(truth: pd.DataFrame) -> None:
    assert truth["decision_id"].str.fullmatch(r"D\d{7}-\d{3}").all()
    assert all(re.fullmatch(r"p_convert__\w+", c) for c in truth.columns if c.startswith("p_convert__"))
    assert [c for c in truth.columns if c.startswith("p_convert__")] == [f"p_convert__{a}" for a in ACTIONS]
