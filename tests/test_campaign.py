"""Tests of the campaign report: rates, lifts and intervals against numbers worked out by hand, outcomes
derived from simulator-style events, the simulator's control group, and the written report.

The hand-made log (`hand_log`): 16 decisions in two ISO weeks (W1 = 2026-01-05, W2 = 2026-01-12), two
stages (consideration, decision), two actions (browse_abandonment = B, cart_abandonment = K) and the policy's
own no_send (N), plus six control decisions with the action the policy intended for them.

    treated  cust week stage action opened clicked purchased unsub revenue
    d01      t1   W1   C     B      1      1       1         0     40
    d02      t2   W1   C     B      1      0       0         0     -
    d03      t3   W1   D     K      1      1       1         0     60
    d04      t4   W1*  D     K      0      0       0         1     -      (* Sunday 23:59:59, still W1)
    d05      t5   W1   D     N      0      0       1         0     20
    d06      t1   W2*  C     B      0      0       0         0     -      (* Monday 00:00, already W2)
    d07      t2   W2   C     K      1      0       1         0     30
    d08      t3   W2   D     K      1      1       1         0     50
    d09      t5   W2   D     B      0      0       0         0     -
    d10      t6   W2   C     N      0      0       0         0     -
    control  cust week stage intended          purchased revenue
    e01      k1   W1   C     B                 0         -
    e02      k2   W1   D     K                 1         25
    e03      k1   W2   C     B                 0         -
    e04      k2   W2   D     K                 0         -
    e05      k3   W2   D     K                 1         35
    e06      k3   W1   C     N                 0         -
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features.sim import ACTIONS, SimConfig, control_group, simulate
from reports.campaign import (
    CampaignResults,
    campaign_results,
    load_decision_log,
    log_report,
    outcomes_from_events,
    write_report,
)
from stats import newcombe_interval, wilson_interval

B, K, N = "browse_abandonment", "cart_abandonment", "no_send"
C, D = "consideration", "decision"
W1, W2 = "2026-01-05", "2026-01-12"
TUE1, TUE2 = "2026-01-06 10:00", "2026-01-13 10:00"
Z = 1.959963984540054  # the 97.5 % normal quantile


def hand_log(*, intended: bool = True) -> pd.DataFrame:
    """The log of the module docstring, in the export's layout (revenue NaN where none)."""
    nan = float("nan")
    rows = [
        # id, customer, ts, stage, action, control, intended, opened, clicked, purchased, unsub, revenue
        ("d01", "t1", TUE1, C, B, False, B, 1, 1, 1, 0, 40.0),
        ("d02", "t2", TUE1, C, B, False, B, 1, 0, 0, 0, nan),
        ("d03", "t3", TUE1, D, K, False, K, 1, 1, 1, 0, 60.0),
        ("d04", "t4", "2026-01-11 23:59:59", D, K, False, K, 0, 0, 0, 1, nan),
        ("d05", "t5", TUE1, D, N, False, N, 0, 0, 1, 0, 20.0),
        ("d06", "t1", "2026-01-12 00:00:00", C, B, False, B, 0, 0, 0, 0, nan),
        ("d07", "t2", TUE2, C, K, False, K, 1, 0, 1, 0, 30.0),
        ("d08", "t3", TUE2, D, K, False, K, 1, 1, 1, 0, 50.0),
        ("d09", "t5", TUE2, D, B, False, B, 0, 0, 0, 0, nan),
        ("d10", "t6", TUE2, C, N, False, N, 0, 0, 0, 0, nan),
        ("e01", "k1", TUE1, C, N, True, B, 0, 0, 0, 0, nan),
        ("e02", "k2", TUE1, D, N, True, K, 0, 0, 1, 0, 25.0),
        ("e03", "k1", TUE2, C, N, True, B, 0, 0, 0, 0, nan),
        ("e04", "k2", TUE2, D, N, True, K, 0, 0, 0, 0, nan),
        ("e05", "k3", TUE2, D, N, True, K, 0, 0, 1, 0, 35.0),
        ("e06", "k3", TUE1, C, N, True, N, 0, 0, 0, 0, nan),
    ]
    columns = ["decision_id", "customer_id", "ts", "stage", "action", "control", "intended_action"]
    columns += ["opened", "clicked", "purchased", "unsubscribed", "revenue"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True, format="ISO8601")
    for name in ("opened", "clicked", "purchased", "unsubscribed"):
        frame[name] = frame[name].astype(bool)
    frame["delivered"] = frame["action"] != N
    frame["propensity"] = 0.5
    return frame if intended else frame.drop(columns="intended_action")


def _row(table: pd.DataFrame, **keys: str) -> pd.Series:
    mask = np.ones(len(table), dtype=bool)
    for k, v in keys.items():
        mask &= (table[k] == v).to_numpy()
    assert mask.sum() == 1, keys
    return table[mask].iloc[0]


@pytest.fixture(scope="module")
def results() -> CampaignResults:
    return campaign_results(load_decision_log(hand_log()), n_boot=300, seed=1)


# -- the hand-made log -----------------------------------------------------------------------------------


def test_load_normalises_the_export() -> None:
    log = load_decision_log(hand_log())
    assert list(log.columns[:15]) == [
        "decision_id", "customer_id", "ts", "week", "action", "intended_action", "control", "stage",
        "sent", "delivered", "opened", "clicked", "purchased", "unsubscribed", "revenue",
    ]  # fmt: skip
    assert "propensity" in log.columns  # other columns are kept
    assert str(log["ts"].dt.tz) == "UTC"
    # ISO weeks start on Monday 00:00 UTC: Sunday 23:59:59 is still W1, Monday 00:00 is W2.
    weeks = log.set_index("decision_id")["week"]
    assert weeks["d04"] == W1
    assert weeks["d06"] == W2
    assert (log["revenue"] == log["revenue"]).all()  # NaN revenue -> 0.0
    assert log["revenue"].sum() == 40 + 60 + 20 + 30 + 50 + 25 + 35
    assert log["sent"].sum() == 8


def test_overall_rates_and_lift_by_hand(results: CampaignResults) -> None:
    r = results.overall
    assert r["decisions"] == 10
    assert r["control_decisions"] == 6
    assert r["sends"] == 8  # d01..d04, d06..d09
    assert r["open_rate"] == pytest.approx(5 / 8)  # d01 d02 d03 d07 d08
    assert r["click_rate"] == pytest.approx(3 / 8)  # d01 d03 d08
    assert r["unsubscribe_rate"] == pytest.approx(1 / 8)  # d04
    assert r["conversion_rate"] == pytest.approx(0.5)  # d01 d03 d05 d07 d08 of 10
    assert r["revenue"] == pytest.approx(200.0)  # 40 + 60 + 20 + 30 + 50
    assert r["revenue_per_decision"] == pytest.approx(20.0)
    assert r["control_conversion_rate"] == pytest.approx(1 / 3)  # e02 e05 of 6
    assert r["control_revenue_per_decision"] == pytest.approx(10.0)  # (25 + 35) / 6
    assert r["lift_conversion"] == pytest.approx(1 / 6)  # 0.5 - 1/3
    assert r["incremental_conversions"] == pytest.approx(10 / 6)  # 1/6 x 10 treated decisions
    assert r["lift_revenue_per_decision"] == pytest.approx(10.0)  # 20 - 10
    assert r["incremental_revenue"] == pytest.approx(100.0)  # 10 x 10
    # Newcombe (hybrid score) for 5/10 - 2/6, with z = 1.959964, z^2 = 3.841459:
    #   Wilson 5/10: denominator 1 + z^2/10 = 1.384146; centre (0.5 + z^2/20) / 1.384146 = 0.5;
    #     half-width z / 1.384146 * sqrt(0.5 * 0.5 / 10 + z^2 / 400) = 0.263407 -> (0.236593, 0.763407)
    #   Wilson 2/6: denominator 1 + z^2/6 = 1.640243; centre (1/3 + z^2/12) / 1.640243 = 0.398389;
    #     half-width z / 1.640243 * sqrt((1/3)(2/3) / 6 + z^2 / 144) = 0.301618 -> (0.096771, 0.700007)
    #   lo = 1/6 - sqrt((0.5 - 0.236593)^2 + (0.700007 - 1/3)^2) = 1/6 - 0.451478 = -0.284812
    #   hi = 1/6 + sqrt((0.763407 - 0.5)^2 + (1/3 - 0.096771)^2) = 1/6 + 0.354041 = 0.520707
    assert r["lift_conversion_low"] == pytest.approx(-0.284812, abs=1e-6)
    assert r["lift_conversion_high"] == pytest.approx(0.520707, abs=1e-6)
    # Not the Wald interval: 1/6 -+ z * sqrt(0.25/10 + (2/9)/6) = (-0.321506, 0.654840).
    assert r["lift_conversion_low"] != pytest.approx(-0.321506, abs=1e-3)


def test_per_action_rates_and_lift_by_hand(results: CampaignResults) -> None:
    by_action = results.level("action")
    assert list(by_action["action"]) == [B, K, N]
    b = _row(by_action, action=B)  # treated d01 d02 d06 d09; control intended B: e01 e03
    assert (b["decisions"], b["sends"], b["control_decisions"]) == (4, 4, 2)
    assert b["open_rate"] == pytest.approx(2 / 4)  # d01 d02
    assert b["click_rate"] == pytest.approx(1 / 4)  # d01
    assert b["unsubscribe_rate"] == 0.0
    assert b["conversion_rate"] == pytest.approx(1 / 4)  # d01
    assert b["revenue_per_decision"] == pytest.approx(40 / 4)
    assert b["control_conversion_rate"] == 0.0
    assert b["lift_conversion"] == pytest.approx(0.25)  # 1/4 - 0/2
    assert b["lift_revenue_per_decision"] == pytest.approx(10.0)  # 40/4 - 0/2

    k = _row(by_action, action=K)  # treated d03 d04 d07 d08; control intended K: e02 e04 e05
    assert (k["decisions"], k["sends"], k["control_decisions"]) == (4, 4, 3)
    assert k["open_rate"] == pytest.approx(3 / 4)  # d03 d07 d08
    assert k["click_rate"] == pytest.approx(2 / 4)  # d03 d08
    assert k["unsubscribe_rate"] == pytest.approx(1 / 4)  # d04
    assert k["conversion_rate"] == pytest.approx(3 / 4)
    assert k["revenue"] == pytest.approx(140.0)  # 60 + 30 + 50
    assert k["control_conversion_rate"] == pytest.approx(2 / 3)  # e02 e05
    assert k["control_revenue_per_decision"] == pytest.approx(20.0)  # (25 + 35) / 3
    assert k["lift_conversion"] == pytest.approx(1 / 12)  # 3/4 - 2/3
    assert k["lift_revenue_per_decision"] == pytest.approx(15.0)  # 35 - 20
    # Newcombe for 3/4 - 2/3:
    #   Wilson 3/4: denominator 1 + z^2/4 = 1.960365; centre (0.75 + z^2/8) / 1.960365 = 0.627527;
    #     half-width z / 1.960365 * sqrt(0.75 * 0.25 / 4 + z^2 / 64) = 0.326885 -> (0.300642, 0.954413)
    #   Wilson 2/3: denominator 1 + z^2/3 = 2.280486; centre (2/3 + z^2/6) / 2.280486 = 0.573084;
    #     half-width z / 2.280486 * sqrt((2/3)(1/3) / 3 + z^2 / 36) = 0.365424 -> (0.207660, 0.938508)
    #   lo = 1/12 - sqrt((0.75 - 0.300642)^2 + (0.938508 - 2/3)^2) = 1/12 - 0.525186 = -0.441853
    #   hi = 1/12 + sqrt((0.954413 - 0.75)^2 + (2/3 - 0.207660)^2) = 1/12 + 0.502466 = 0.585799
    assert k["lift_conversion_low"] == pytest.approx(-0.441853, abs=1e-6)
    assert k["lift_conversion_high"] == pytest.approx(0.585799, abs=1e-6)

    n = _row(by_action, action=N)  # the policy's own no_send, d05 d10, against intended no_send e06
    assert n["sends"] == 0
    assert math.isnan(n["open_rate"])
    assert n["conversion_rate"] == pytest.approx(0.5)
    assert n["lift_conversion"] == pytest.approx(0.5)  # 1/2 - 0/1


def test_stage_week_and_cell_lifts_by_hand(results: CampaignResults) -> None:
    stage = results.level("stage")
    # consideration: treated d01 d02 d06 d07 d10 (2 convert) vs control e01 e03 e06 (none): 2/5 - 0
    assert _row(stage, stage=C)["lift_conversion"] == pytest.approx(0.4)
    # decision: treated d03 d04 d05 d08 d09 (3 convert) vs control e02 e04 e05 (2 convert): 3/5 - 2/3
    assert _row(stage, stage=D)["lift_conversion"] == pytest.approx(3 / 5 - 2 / 3)
    week = results.level("week")
    w1, w2 = _row(week, week=W1), _row(week, week=W2)
    assert (w1["decisions"], w1["sends"], w2["decisions"], w2["sends"]) == (5, 4, 5, 4)
    # W1: d01 d03 d05 convert of 5; control e01 e02 e06: 1 of 3. W2: d07 d08 of 5; e03 e04 e05: 1 of 3.
    assert w1["lift_conversion"] == pytest.approx(3 / 5 - 1 / 3)
    assert w2["lift_conversion"] == pytest.approx(2 / 5 - 1 / 3)
    assert w1["revenue"] == pytest.approx(120.0)
    assert w2["revenue"] == pytest.approx(80.0)
    cells = results.level("action_stage_week")
    # K | decision | W2: d08 converts; control e04 (no) e05 (yes) -> 1 - 1/2.
    assert _row(cells, action=K, stage=D, week=W2)["lift_conversion"] == pytest.approx(0.5)
    # B | consideration | W1: d01 (yes) d02 (no); control e01 (no) -> 1/2 - 0.
    assert _row(cells, action=B, stage=C, week=W1)["lift_conversion"] == pytest.approx(0.5)
    # K | consideration | W2 (d07): no control customer was meant to get K there -> no lift.
    lone = _row(cells, action=K, stage=C, week=W2)
    assert lone["control_decisions"] == 0
    assert math.isnan(lone["lift_conversion"])
    # Rows that do not split by a key hold "all" in its column.
    assert set(results.level("overall")[["action", "stage", "week"]].iloc[0]) == {"all"}


def test_without_intended_action_only_lifts_over_all_actions() -> None:
    res = campaign_results(load_decision_log(hand_log(intended=False)), n_boot=50)
    assert not res.per_action_lift
    assert res.level("action")["lift_conversion"].isna().all()
    assert res.level("action_stage_week")["lift_conversion"].isna().all()
    assert res.overall["lift_conversion"] == pytest.approx(1 / 6)  # all treated vs all control, as before
    assert _row(res.level("stage"), stage=C)["lift_conversion"] == pytest.approx(0.4)
    # The rates do not need the control group at all.
    assert _row(res.level("action"), action=K)["open_rate"] == pytest.approx(3 / 4)


def test_intervals_by_hand() -> None:
    # Wilson 0/5 (where Wald would give (0, 0)): hi = (z^2/10) / (1 + z^2/5) + z/(1 + z^2/5) sqrt(z^2/100)
    #   = 0.384146 / 1.768292 + 1.108391 * 0.195996 = 0.217241 + 0.217241 = 0.434482
    p, lo, hi = wilson_interval(0, 5)
    assert (p, lo) == (0.0, pytest.approx(0.0, abs=1e-12))
    assert hi == pytest.approx(0.434482, abs=1e-6)
    assert all(math.isnan(v) for v in newcombe_interval(1, 0, 1, 2))
    assert newcombe_interval(5, 10, 2, 6).point == pytest.approx(1 / 6)


def test_bootstrap_resamples_customers_not_decisions() -> None:
    """One treated customer with 4 decisions (0, 10, 0, 30 revenue) and two control customers with 10 per
    decision each: resampling customers always gives 10 - 10, so the interval is the point; resampling
    decisions would have spread it over roughly -10 .. +15."""
    ts = pd.Timestamp("2026-01-06 10:00", tz="UTC")
    rows = [("a", False, v, v > 0) for v in (0.0, 10.0, 0.0, 30.0)]
    rows += [(c, True, v, v > 0) for c in ("b", "c") for v in (0.0, 20.0)]
    frame = pd.DataFrame(
        {
            "decision_id": [f"x{i}" for i in range(len(rows))],
            "customer_id": [r[0] for r in rows],
            "ts": ts,
            "action": [K if not r[1] else N for r in rows],
            "control": [r[1] for r in rows],
            "intended_action": K,
            "opened": False,
            "clicked": False,
            "purchased": [r[3] for r in rows],
            "unsubscribed": False,
            "revenue": [r[2] for r in rows],
        }
    )
    r = campaign_results(load_decision_log(frame), by=("action",), n_boot=200, seed=3).overall
    assert r["lift_revenue_per_decision"] == pytest.approx(0.0)
    assert (r["lift_revenue_low"], r["lift_revenue_high"]) == (pytest.approx(0.0), pytest.approx(0.0))
    assert (r["lift_conversion_boot_low"], r["lift_conversion_boot_high"]) == (0.0, 0.0)


def test_bootstrap_is_seeded_and_per_group(results: CampaignResults) -> None:
    r = results.overall
    assert r["lift_revenue_low"] <= r["lift_revenue_per_decision"] <= r["lift_revenue_high"]
    assert r["lift_revenue_low"] < r["lift_revenue_high"]
    log = load_decision_log(hand_log())
    again = campaign_results(log, by=("week",), n_boot=300, seed=1).overall
    # The overall row draws from its own stream: the same whatever else is grouped.
    assert (again["lift_revenue_low"], again["lift_revenue_high"]) == (
        r["lift_revenue_low"],
        r["lift_revenue_high"],
    )
    other = campaign_results(log, by=("week",), n_boot=300, seed=2).overall
    assert (other["lift_revenue_low"], other["lift_revenue_high"]) != (
        r["lift_revenue_low"],
        r["lift_revenue_high"],
    )


def test_missing_columns_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing column\(s\) customer_id, ts"):
        load_decision_log(hand_log().drop(columns=["customer_id", "ts"]))
    with pytest.raises(ValueError, match=r"missing outcome column\(s\) clicked, revenue.*events"):
        load_decision_log(hand_log().drop(columns=["clicked", "revenue"]))
    events = pd.DataFrame({"customer_id": ["t1"], "ts": [TUE1], "event_type": ["purchase"], "value": [1.0]})
    with pytest.raises(ValueError, match=r"events: missing column\(s\) campaign_id"):
        load_decision_log(hand_log(), events=events)
    with pytest.raises(ValueError, match="grouping key"):
        campaign_results(load_decision_log(hand_log()), by=("action", "channel"))


# -- outcomes from simulator-style events ----------------------------------------------------------------


def test_outcomes_from_events_windows_and_campaign_ids() -> None:
    decisions = pd.DataFrame(
        {
            "decision_id": ["D1", "D2", "D3"],
            "customer_id": ["c1", "c1", "c2"],
            "ts": pd.to_datetime(["2026-01-05 06:00", "2026-01-12 06:00", "2026-01-05 06:00"], utc=True),
            "action": [K, N, N],
        }
    )
    ev = [
        # customer, ts, type, value, campaign
        ("c1", "2026-01-05 06:00:00", "email_sent", None, "D1"),
        ("c1", "2026-01-05 08:00:00", "email_open", None, "D1"),
        ("c1", "2026-01-05 08:05:00", "email_click", None, "D1"),
        ("c2", "2026-01-05 09:00:00", "email_open", None, "D9"),  # another campaign: not D3's
        ("c1", "2026-01-05 05:59:59", "purchase", 100.0, None),  # before D1
        ("c1", "2026-01-05 06:00:00", "purchase", 10.0, None),  # at D1's ts: inside [ts, ts + 7 d)
        ("c1", "2026-01-12 05:59:59.999999", "purchase", 5.0, None),  # the last microsecond of D1's window
        ("c1", "2026-01-12 06:00:00", "purchase", 7.0, None),  # D1's end is D2's start: D2's
        ("c1", "2026-01-15 12:00:00", "purchase", 3.0, None),
        ("c1", "2026-01-20 09:00:00", "email_unsubscribe", None, "D2"),  # late, but it answers D2
        ("c2", "2026-01-06 12:00:00", "purchase", None, None),  # no value: converts, revenue 0
        ("c3", "2026-01-06 12:00:00", "purchase", 99.0, None),  # nobody's decision
        ("c1", "2026-01-06 12:00:00", "page_view", None, None),
    ]
    events = pd.DataFrame(ev, columns=["customer_id", "ts", "event_type", "value", "campaign_id"])
    events["ts"] = pd.to_datetime(events["ts"], utc=True, format="ISO8601")
    out = outcomes_from_events(decisions, events, window_days=7).set_index(decisions["decision_id"])
    assert out.loc["D1", ["delivered", "opened", "clicked", "unsubscribed", "purchased"]].tolist() == [
        True, True, True, False, True,
    ]  # fmt: skip
    assert out.loc["D1", "revenue"] == pytest.approx(15.0)  # 10 + 5
    assert out.loc["D2", ["opened", "unsubscribed", "purchased"]].tolist() == [False, True, True]
    assert out.loc["D2", "revenue"] == pytest.approx(10.0)  # 7 + 3
    assert out.loc["D3", ["opened", "purchased"]].tolist() == [False, True]
    assert out.loc["D3", "revenue"] == 0.0
    one_day = outcomes_from_events(decisions, events, window_days=1).set_index(decisions["decision_id"])
    assert one_day.loc["D1", "revenue"] == pytest.approx(10.0)
    assert one_day.loc["D2", "revenue"] == pytest.approx(7.0)
    # Through load_decision_log: outcomes come from the events; the control group is empty.
    log = load_decision_log(decisions, events=events, window_days=7)
    assert log["revenue"].tolist() == pytest.approx([15.0, 10.0, 0.0])
    assert log.attrs["window_days"] == 7
    assert math.isnan(campaign_results(log, n_boot=10).overall["lift_conversion"])


# -- the simulator's control group -----------------------------------------------------------------------

SIM = SimConfig(n_customers=400, n_items=200, days=35, seed=4, control_share=0.3)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    simulate(SIM, out, progress=False)
    return out


def test_simulated_control_group(shop: Path, tmp_path: Path) -> None:
    decisions = pq.read_table(shop / "decisions.parquet").to_pandas()
    assert decisions.columns[-2:].tolist() == ["control", "intended_action"]
    control = decisions.groupby("customer_id")["control"].agg(["min", "max"])
    assert (control["min"] == control["max"]).all()  # stable per customer
    share = control["min"].mean()
    assert 0.2 < share < 0.4
    in_control = decisions[decisions["control"]]
    assert (in_control["action"] == N).all()
    assert set(in_control["intended_action"]) - {N}  # the policy drew real messages for them
    # Marginal propensity of the logged no_send: 0.3 * 1 + 0.7 * pi(no_send), pi(no_send) = 1 - send_rate
    # (0.25) for consented customers and 1 for the others.
    logged = set(in_control["propensity"].round(12))
    assert round(0.3 + 0.7 * 0.25, 12) in logged
    assert logged <= {round(0.3 + 0.7 * 0.25, 12), 1.0}
    treated = decisions[~decisions["control"]]
    assert (treated["intended_action"] == treated["action"]).all()
    policy_no_send = treated[(treated["action"] == N) & (treated["propensity"] < 1)]
    assert np.allclose(policy_no_send["propensity"], 0.3 + 0.7 * 0.25)
    sends = treated[treated["action"] != N]
    assert (sends["propensity"] <= 0.7 * 0.75 + 1e-12).all()  # (1 - share) x pi(a), pi(a) <= send_rate
    # No e-mail ever reaches a control customer.
    events = pd.read_parquet(shop / "events", columns=["customer_id", "event_type"])
    members = set(decisions.loc[decisions["control"], "customer_id"])
    assert not events[(events["event_type"] == "email_sent") & events["customer_id"].isin(members)].size
    # Membership is a hash of id and seed: the same under another chunking (which changes everything else).
    simulate(replace(SIM, chunk_size=150), tmp_path, progress=False)
    rechunked = pq.read_table(tmp_path / "decisions.parquet").to_pandas()
    by_customer = rechunked.groupby("customer_id")["control"].first()
    before = decisions.groupby("customer_id")["control"].first()
    both = by_customer.index.intersection(before.index)  # arrivals differ, so who has decisions differs
    assert len(both) > 250
    assert by_customer[both].equals(before[both])
    assert control_group(list(by_customer.index), 0.3, SIM.seed).tolist() == by_customer.tolist()


def test_no_control_group_changes_nothing(tmp_path: Path) -> None:
    """Share 0 logs control False and intended = action; a share so small that nobody is drawn goes
    through the control code and still leaves every random draw, hence every event, as it was."""
    base = replace(SIM, control_share=0.0)
    simulate(base, tmp_path / "a", progress=False)
    simulate(replace(base, control_share=1e-12), tmp_path / "b", progress=False)
    a = pq.read_table(tmp_path / "a" / "decisions.parquet").to_pandas()
    assert not a["control"].any()
    assert (a["intended_action"] == a["action"]).all()
    for name in ("events/part-00000.parquet", "truth/stages.parquet", "catalog.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    b = pq.read_table(tmp_path / "b" / "decisions.parquet").to_pandas()
    assert a.drop(columns="propensity").equals(b.drop(columns="propensity"))
    assert np.allclose(a["propensity"], b["propensity"])
    with pytest.raises(ValueError, match="control_share"):
        SimConfig(control_share=1.0)


def test_report_on_a_simulated_shop(shop: Path) -> None:
    """Outcomes derived from the events are the simulator's own: `purchased` is `truth.converted`."""
    log = load_decision_log(shop)
    truth = pd.read_parquet(shop / "truth" / "decisions.parquet").set_index("decision_id")
    joined = log.join(truth[["converted", "unsubscribed"]], on="decision_id", rsuffix="_truth")
    assert (joined["purchased"] == (joined["converted"] == 1)).all()
    assert (joined["unsubscribed"] == (joined["unsubscribed_truth"] == 1)).all()
    assert set(log["stage"]) <= {
        "awareness",
        "consideration",
        "decision",
        "post_purchase",
        "loyal",
        "at_risk",
    }
    assert (log.loc[log["sent"], "delivered"]).all()
    assert not log.loc[~log["sent"], "delivered"].any()
    assert log.attrs["window_days"] == SIM.outcome_days
    assert log.attrs["stage_source"] == "simulator truth (latent stage)"
    res = campaign_results(log, n_boot=100)
    assert res.per_action_lift
    assert set(res.level("action")["action"]) <= set(ACTIONS)
    overall = res.overall
    assert overall["decisions"] + overall["control_decisions"] == len(log)
    assert overall["lift_conversion_low"] < overall["lift_conversion"] < overall["lift_conversion_high"]


# -- the written report, the command and MLflow ------------------------------------------------------------


def test_write_report_embeds_plots_and_tables(results: CampaignResults, tmp_path: Path) -> None:
    files = write_report(results, tmp_path / "report", notes=["a note"])
    page = files.html.read_text()
    assert page.count('<img alt="') == 4
    assert page.count('src="data:image/png;base64,') == 4
    # Self-contained: nothing to fetch.
    assert "<script" not in page
    assert 'src="http' not in page
    assert "<link" not in page
    for caption in ("Rates per action", "Incremental conversion per action", "Weekly trend", "Revenue"):
        assert caption in page
    assert "Newcombe" in page
    assert "a note" in page
    assert sorted(files.plots) == ["lift_by_action", "rates_by_action", "revenue", "weekly_trend"]
    for png in files.plots.values():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(files.tables) == ["action", "action_stage_week", "overall", "stage", "week"]
    by_action = pd.read_csv(files.tables["action"])
    assert by_action.set_index("action").loc[K, "lift_conversion"] == pytest.approx(1 / 12)
    summary = json.loads(files.summary.read_text())
    assert summary["headline"]["lift/conversion"] == pytest.approx(1 / 6)
    assert summary["per_action"][K]["lift_conversion"] == pytest.approx(1 / 12)


def test_report_command_and_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from journey.cli import app

    export = tmp_path / "decisions.csv"
    hand_log().to_csv(export, index=False)  # the CSV form of `journey decisions export`
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", "--decisions", str(export), "--out", str(out), "--no-mlflow"])
    assert result.exit_code == 0, result.output
    assert "lift +16.67 pp" in result.output
    assert "(Newcombe)" in result.output
    assert str(out / "campaign_report.html") in result.output
    missing = tmp_path / "bad.csv"
    hand_log().drop(columns=["action"]).to_csv(missing, index=False)
    bad = CliRunner().invoke(app, ["report", "--decisions", str(missing), "--out", str(out), "--no-mlflow"])
    assert bad.exit_code == 1
    assert "action" in bad.output

    refused = CliRunner().invoke(app, ["simulate", "--out", str(tmp_path / "shop"), "--control-share", "1.5"])
    assert refused.exit_code == 1
    assert "control_share" in refused.output

    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = log_report(out, params={"decisions": str(export)})
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.data.metrics["lift/conversion"] == pytest.approx(1 / 6)
    assert run.data.metrics["lift/revenue_per_decision"] == pytest.approx(10.0)
    assert run.data.metrics[f"lift/conversion/{K}"] == pytest.approx(1 / 12)
    assert run.data.params["campaign.decisions"] == str(export)
    experiment = mlflow.MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == "journey-campaigns"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "campaign_report")}
    assert "campaign_report/campaign_report.html" in names
    assert "campaign_report/weekly_trend.png" in names
    # Inside an active run the report joins it instead of starting its own.
    with mlflow.start_run() as active:
        assert log_report(out) == active.info.run_id
