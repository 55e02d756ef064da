"""evaluate() on a hand-made split whose metrics were worked out by hand; truth loading; tables; plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from matplotlib.figure import Figure

from features.encoder import AGGREGATE_NAMES, NEVER_DAYS, TOKEN_FIELDS
from features.policy import NO_SEND
from features.schema import ACTIONS, STAGES
from reports.plots import (
    evaluation_figures,
    plot_confusion,
    plot_policy_values,
    plot_recall_at_k,
    plot_reliability,
)
from training.data import FeatureData
from training.evaluate import evaluate
from training.interface import Predictions
from training.results import EvaluationResult, compare, is_valid_metric_name, markdown_table, results_table
from training.sim_truth import SimTruth, load_sim_truth

A = {a: i for i, a in enumerate(ACTIONS)}
WELCOME, BROWSE, CART = A["welcome_series"], A["browse_abandonment"], A["cart_abandonment"]


def hand_data() -> FeatureData:
    """Four rows over a 10-item catalogue (item indices 2..11); row 3 has no logged decision."""
    n, max_len = 4, 4
    tokens = {name: np.zeros((n, max_len), dtype=np.int64) for name in TOKEN_FIELDS}
    tokens["item_id"] = np.array([[0, 0, 3, 5], [0, 0, 0, 0], [0, 0, 0, 10], [0, 0, 0, 0]])
    agg = {name: np.zeros(n, dtype=np.float32) for name in AGGREGATE_NAMES}
    agg["email_consent"] = np.array([1, 0, 1, 1], dtype=np.float32)  # row 1 unsubscribed
    agg["days_since_last_purchase"][:] = NEVER_DAYS
    agg["days_since_last_email"][:] = NEVER_DAYS  # no e-mail yet: the minimum gap blocks nothing
    agg["days_since_signup"][:] = NEVER_DAYS  # new contacts by tenure (0 days): welcome is eligible
    agg["n_product_views_7d"][2] = 3  # row 2 browsed this week: browse abandonment is eligible
    return FeatureData(
        customer_id=np.array(["a", "b", "c", "d"], dtype=object),
        cutoff_ms=np.zeros(n, dtype=np.int64),
        tokens=tokens,
        length=np.full(n, 2, dtype=np.int64),
        aggregates=np.column_stack([agg[name] for name in AGGREGATE_NAMES]),
        stage=np.array([0, 1, 2, 2]),
        targets={"purchase_7d": np.array([0, 1, 1, 0], dtype=np.float32)},
        next_items=[np.array([3, 9]), np.array([1]), np.array([8, 2]), np.array([], dtype=np.int64)],
        logged_action=np.array([WELCOME, NO_SEND, BROWSE, -1]),
        logged_propensity=np.array([0.5, 1.0, 0.25, np.nan]),
        outcome=np.array([1, 0, 1, np.nan], dtype=np.float32),
        unsubscribed=np.array([0, 0, 0, np.nan], dtype=np.float32),
        n_items=12,
    )


def hand_predictions() -> Predictions:
    stage_proba = np.full((4, len(STAGES)), 0.05)
    stage_proba[np.arange(4), [0, 1, 2, 0]] = 0.75  # argmax 0, 1, 2, 0 (row 3 wrong)
    q = np.full((4, len(ACTIONS)), 0.1)
    q[0, WELCOME] = 0.3
    q[1, WELCOME] = 0.9  # the best, but row 1 has no consent
    q[2, BROWSE] = 0.4
    q[2, CART] = 0.9  # the best, but there is no open cart
    return Predictions(
        stage_proba=stage_proba / stage_proba.sum(axis=1, keepdims=True),
        propensity={"purchase_7d": np.array([0.1, 0.4, 0.35, 0.8]), "purchase_30d": np.full(4, 0.5)},
        top_items=np.array([[2, 3, 4], [5, 6, 7], [2, 5, 8], [2, 3, 4]]),
        action_outcome=q,
    )


@pytest.fixture(scope="module")
def result() -> EvaluationResult:
    return evaluate(hand_predictions(), hand_data(), catalogue_size=10, ks=(1, 3, 5), n_boot=50, name="hand")


def test_metric_names_are_stable_and_valid_for_mlflow(result: EvaluationResult) -> None:
    expected = {
        "stage/macro_f1", "stage/macro_f1_lo", "stage/macro_f1_hi", "stage/accuracy", "stage/f1/decision",
        "purchase_7d/roc_auc", "purchase_7d/pr_auc", "purchase_7d/log_loss", "purchase_7d/ece",
        "purchase_7d/ece_lo", "rec/recall_at_3", "rec/ndcg_at_3", "rec/mrr_at_3", "rec/hit_at_3",
        "rec/coverage_at_3", "rec/repeat/recall_at_3", "rec/explore/recall_at_3", "policy/learned/ips",
        "policy/learned/snips", "policy/learned/snips_lo", "policy/learned/snips_hi", "policy/learned/dm",
        "policy/learned/dr", "policy/no_send/snips", "policy/uniform/snips", "policy/playbook/snips",
        "policy/playbook_hindsight/snips", "policy/best_constant/snips", "policy/logging/value",
        "policy/learned_minus_no_send/snips", "policy/learned_minus_best_constant/dr",
        "policy/learned_minus_logging/snips",
    }  # fmt: skip
    assert expected <= set(result.metrics)
    assert all(is_valid_metric_name(k) for k in result.metrics)
    # purchase_30d is predicted but the data has no labels for it: skipped; no truth: no true values.
    assert not any(
        k.startswith(("purchase_30d/", "stage_true/")) or "true_value" in k for k in result.metrics
    )


def test_metric_name_rule() -> None:
    assert is_valid_metric_name("rec/recall_at_10")
    assert is_valid_metric_name("policy/learned/snips_lo")
    for bad in ("rec/recall@10", "a//b", "a/", "/a", "stage:f1", "a/../b", ""):
        assert not is_valid_metric_name(bad), bad


def test_recommendation_metrics_by_hand(result: EvaluationResult) -> None:
    m = result.metrics
    # Row 1's only next item is unknown to the vocabulary (index 1) and row 3 has none: both left out.
    assert m["rec/n_rows"] == 2
    # Row 0: relevant {3, 9}, 3 at rank 2 -> recall@3 1/2, RR 1/2, NDCG (1/log2 3) / (1 + 1/log2 3) = 0.38685.
    # Row 2: relevant {8, 2} at ranks 3 and 1 -> recall 1, RR 1, NDCG (1 + 1/2) / 1.63093 = 0.91972.
    assert m["rec/recall_at_3"] == pytest.approx(0.75)
    assert m["rec/mrr_at_3"] == pytest.approx(0.75)
    assert m["rec/hit_at_3"] == pytest.approx(1.0)
    assert m["rec/ndcg_at_3"] == pytest.approx((0.38685 + 0.91972) / 2, abs=1e-5)
    # @1: only row 2 has a relevant item first.
    assert m["rec/recall_at_1"] == pytest.approx((0 + 0.5) / 2)
    # Top 3 of all rows: {2, 3, 4, 5, 6, 7, 8} = 7 of 10 items.
    assert m["rec/coverage_at_3"] == pytest.approx(0.7)
    # Row 0 had seen item 3 (repeat) but not 9 (explore); row 2 had seen neither.
    assert m["rec/repeat/n_rows"] == 1
    assert m["rec/explore/n_rows"] == 2
    assert m["rec/repeat/recall_at_3"] == 1.0
    assert m["rec/repeat/mrr_at_3"] == 0.5
    assert m["rec/explore/recall_at_3"] == pytest.approx((0 + 1) / 2)
    # The ranking holds 3 items: K = 5 is skipped and said so.
    assert "rec/recall_at_5" not in m
    assert result.info["rec_skipped_ks"] == [5]
    assert result.plots.recall_at_k[3].point == pytest.approx(0.75)


def test_stage_and_propensity_metrics_by_hand(result: EvaluationResult) -> None:
    m = result.metrics
    # True 0, 1, 2, 2; predicted 0, 1, 2, 0: F1 class 0 = 2/(2+1) = 2/3, class 1 = 1, class 2 = 2/(2+1) = 2/3.
    assert m["stage/macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert m["stage/accuracy"] == pytest.approx(0.75)
    assert m["stage/f1/consideration"] == 1.0
    assert np.isnan(m["stage/f1/loyal"])  # neither true nor predicted
    assert m["stage/macro_f1_lo"] <= m["stage/macro_f1"] <= m["stage/macro_f1_hi"]
    assert result.plots.confusion is not None
    np.testing.assert_array_equal(result.plots.confusion[:3, :3], np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]]))
    # Positives 0.4, 0.35 against negatives 0.1, 0.8: 2 of 4 pairs ordered right.
    assert m["purchase_7d/roc_auc"] == pytest.approx(0.5)
    assert m["purchase_7d/base_rate"] == 0.5
    assert m["purchase_7d/n_rows"] == 4


def test_policy_values_by_hand(result: EvaluationResult) -> None:
    m = result.metrics
    assert m["policy/n_decisions"] == 3  # row 3 has no logged decision
    # Learned: welcome (row 0), no_send (row 1: the rules block every e-mail without consent), browse
    # (row 2: cart abandonment would score higher but needs an open cart) = exactly the logged actions.
    # w = 1/0.5, 1/1, 1/0.25 = 2, 1, 4; rewards 1, 0, 1.
    # IPS = (2 + 0 + 4) / 3 = 2; SNIPS = 6 / 7 = 0.857143; DM = (0.3 + 0.1 + 0.4) / 3 = 0.266667;
    # DR = DM + (2 (1 - 0.3) + 1 (0 - 0.1) + 4 (1 - 0.4)) / 3 = 0.266667 + 3.7 / 3 = 1.5.
    assert m["policy/learned/ips"] == pytest.approx(2.0)
    assert m["policy/learned/snips"] == pytest.approx(6 / 7)
    assert m["policy/learned/dm"] == pytest.approx(0.8 / 3)
    assert m["policy/learned/dr"] == pytest.approx(1.5)
    assert m["policy/learned/send_rate"] == pytest.approx(2 / 3)
    # no_send agrees with the log on row 1 only: w = 0, 1, 0: IPS = 0, SNIPS = 0 / 1 = 0.
    assert m["policy/no_send/ips"] == 0
    assert m["policy/no_send/snips"] == 0
    # Playbook on the predicted stages awareness, consideration, decision: welcome, (browse blocked by
    # consent ->) no_send, (cart blocked ->) no_send. w = 2, 1, 0: SNIPS = 2 / 3.
    assert m["policy/playbook/snips"] == pytest.approx(2 / 3)
    # The logging policy's own value: (1 + 0 + 1) / 3.
    assert m["policy/logging/value"] == pytest.approx(2 / 3)
    assert m["policy/learned_minus_no_send/snips"] == pytest.approx(6 / 7)
    assert result.plots.policy_values["snips"]["learned"].point == pytest.approx(6 / 7)


def test_unsubscribe_is_scored_only_where_an_email_was_sent() -> None:
    """The unsubscribe head predicts "unsubscribe if mailed" and is trained on logged sends only; rows
    whose logged action was no_send carry an outcome of 0 (nothing to unsubscribe from) and must not be
    scored against it. With them, a head that ranks the sent rows perfectly scored below a coin on the
    demo shop (0.378 there; LightGBM's 0.66 on the same rows)."""
    data = hand_data()
    # Sent: rows 0 (welcome, unsubscribed) and 2 (browse, stayed); row 1 was no_send, row 3 no decision.
    data.unsubscribed = np.array([1, 0, 0, np.nan], dtype=np.float32)
    p = np.array([0.3, 0.9, 0.1, 0.5])  # the no_send row scores highest: it would be mailed least gladly
    out = evaluate(Predictions(propensity={"unsubscribe": p}), data, catalogue_size=10, n_boot=0)
    assert out.metrics["unsubscribe/n_rows"] == 2
    assert out.metrics["unsubscribe/roc_auc"] == 1.0  # with row 1 scored it would be 0.5
    assert out.metrics["unsubscribe/base_rate"] == 0.5


def test_missing_heads_are_skipped() -> None:
    pred = Predictions(top_items=hand_predictions().top_items)
    out = evaluate(pred, hand_data(), catalogue_size=10, ks=(3,), n_boot=0)
    assert "rec/recall_at_3" in out.metrics
    assert not any(k.startswith(("stage/", "purchase_7d/")) for k in out.metrics)
    assert not any(k.startswith(("policy/learned", "policy/playbook/")) for k in out.metrics)
    # Policies that need no head are still valued, by IPS and SNIPS only (no reward model for DM / DR).
    assert "policy/no_send/snips" in out.metrics
    assert "policy/no_send/dr" not in out.metrics
    assert np.isnan(out.metrics["rec/recall_at_3_lo"])  # n_boot = 0: no interval
    empty = evaluate(Predictions(), hand_data().subset(np.array([3])), catalogue_size=10, n_boot=0)
    assert set(empty.metrics) == set()


def test_results_table_compare_and_markdown(result: EvaluationResult) -> None:
    other = evaluate(
        Predictions(top_items=np.array([[9, 3, 2]] * 4)), hand_data(), catalogue_size=10, ks=(3,), n_boot=50,
        name="other",
    )  # fmt: skip
    table = results_table([result, other], ["rec/recall_at_3", "rec/coverage_at_3", "stage/macro_f1"])
    assert list(table.columns) == ["hand", "other"]
    assert str(table.loc["rec/recall_at_3", "hand"]).startswith("0.7500 [")
    assert table.loc["rec/coverage_at_3", "other"] == "0.3000"  # no interval for coverage
    assert table.loc["stage/macro_f1", "other"] == ""  # other has no stage head
    full = results_table([result])
    assert "rec/recall_at_3" in full.index
    assert "rec/recall_at_3_lo" not in full.index
    assert full.loc["rec/n_rows", "hand"] == "2"
    text = markdown_table(table)
    assert text.splitlines()[0] == "| metric | hand | other |"
    # other: row 0 finds 9 and 3 (recall 1), row 2 finds 2 (recall 1/2): 0.75 as well -> difference 0.
    diff = compare(result, other, "rec/recall_at_3", n_boot=50)
    assert diff.point == pytest.approx(0.0)
    assert compare(result, result, "rec/ndcg_at_3", n_boot=20) == (0.0, 0.0, 0.0)
    with pytest.raises(KeyError):
        compare(result, other, "stage/macro_f1")
    assert result.as_metrics("hand/")["hand/rec/recall_at_3"] == pytest.approx(0.75)
    assert all(np.isfinite(v) for v in result.as_metrics().values())


def _write_shop(tmp_path: Path) -> tuple[Path, Path]:
    """A features build's rows and a simulator's truth, by hand: two customers, two cutoffs."""
    features, shop = tmp_path / "features", tmp_path / "shop"
    (features / "rows").mkdir(parents=True)
    (shop / "truth").mkdir(parents=True)
    ts = pa.array(
        np.array(["2026-03-02", "2026-03-09", "2026-03-02", "2026-03-09"], dtype="datetime64[us]"),
        pa.timestamp("us", tz="UTC"),
    )
    rows = pa.table(
        {
            "customer_id": ["c2", "c2", "c1", "c1"],  # stored unsorted: load_rows sorts
            "cutoff": ts,
            "split": ["test"] * 4,
            "decision_id": ["D4", None, "D1", "D2"],
        }
    )
    pq.write_table(rows, features / "rows" / "part-0.parquet")
    stages = pa.table(
        {
            "customer_id": ["c1", "c1", "c1", "c2", "c2"],
            "day": pa.array(
                np.array(
                    ["2026-03-01", "2026-03-02", "2026-03-09", "2026-03-02", "2026-03-09"],
                    dtype="datetime64[D]",
                ),
                pa.date32(),
            ),
            "stage": ["decision", "loyal", "lapsed", "awareness", "consideration"],
        }
    )
    pq.write_table(stages, shop / "truth" / "stages.parquet")
    decisions: dict[str, list] = {"decision_id": ["D1", "D2", "D3", "D4"]}
    for j, action in enumerate(ACTIONS):
        decisions[f"p_convert__{action}"] = [0.1, 0.2, 0.3, 0.4 + 0.01 * j]
    pq.write_table(pa.table(decisions), shop / "truth" / "decisions.parquet")
    return shop, features


def test_load_sim_truth_joins_stages_and_decisions(tmp_path: Path) -> None:
    shop, features = _write_shop(tmp_path)
    truth = load_sim_truth(shop, features, "test")
    # Row order: c1 03-02, c1 03-09, c2 03-02, c2 03-09; the stage at the start of the cutoff's day, with
    # lapsed mapped to at_risk.
    assert [STAGES[s] for s in truth.stage] == ["loyal", "at_risk", "awareness", "consideration"]
    np.testing.assert_allclose(truth.p_convert[:, 0], [0.1, 0.2, 0.4, np.nan])
    assert truth.p_convert[2, NO_SEND] == pytest.approx(0.4 + 0.01 * NO_SEND)
    data = hand_data()  # four rows, but other customers
    with pytest.raises(ValueError, match="do not line up"):
        load_sim_truth(shop, features, "test", data)


def test_truth_adds_true_values_and_latent_stage_metrics() -> None:
    data = hand_data()
    p_convert = np.full((4, len(ACTIONS)), 0.1)
    p_convert[0, WELCOME] = 0.5
    p_convert[2, BROWSE] = 0.3
    truth = SimTruth(stage=np.array([0, 1, -1, 3]), p_convert=p_convert)
    out = evaluate(hand_predictions(), data, catalogue_size=10, ks=(3,), truth=truth, n_boot=0)
    m = out.metrics
    # Latent stage known on rows 0, 1, 3 (true 0, 1, 3; predicted 0, 1, 0). F1: class 0 TP 1, FP 1 -> 2/3;
    # class 1 -> 1; class 3 TP 0, FN 1 -> 0. Macro-F1 = (2/3 + 1 + 0) / 3 = 0.5556.
    assert m["stage_true/n_rows"] == 3
    assert m["stage_true/macro_f1"] == pytest.approx(5 / 9)
    # Learned takes welcome, no_send, browse on the three decisions: (0.5 + 0.1 + 0.3) / 3 = 0.3.
    assert m["policy/learned/true_value"] == pytest.approx(0.3)
    assert m["policy/no_send/true_value"] == pytest.approx(0.1)
    assert m["policy/learned_minus_no_send/true_value"] == pytest.approx(0.2)
    # The logging policy took the same actions.
    assert m["policy/logging/true_value"] == pytest.approx(0.3)
    assert out.plots.true_values["learned"] == pytest.approx(0.3)
    assert out.plots.confusion_true is not None


def test_on_a_simulated_shop_the_oracle_uplift_policy_is_best(tmp_path: Path) -> None:
    from features.build import build_features
    from features.sim import SimConfig, simulate
    from features.snapshots import BuildConfig
    from training.data import FeatureBuild

    shop = tmp_path / "shop"
    simulate(SimConfig(n_customers=300, seed=3), shop, progress=False)
    build_features(
        shop / "events", tmp_path / "features", BuildConfig(workers=1),
        decisions=shop / "decisions.parquet", progress=False,
    )  # fmt: skip
    build = FeatureBuild.open(tmp_path / "features")
    test = build.split("test")
    truth = load_sim_truth(shop, build.path, "test", test)
    assert (truth.stage >= 0).all()
    decided = test.has_decisions
    assert np.isfinite(truth.p_convert[decided]).all()
    # A scorer that knows the true conversion probabilities: the greedy policy on them is the best policy
    # that obeys the rules, so its true value beats every other rule-abiding policy's.
    oracle = Predictions(action_outcome=np.nan_to_num(truth.p_convert, nan=0.0))
    out = evaluate(oracle, test, catalogue_size=len(build.catalogue), truth=truth, n_boot=20)
    m = out.metrics
    learned = m["policy/learned/true_value"]
    for other in ("no_send", "uniform", "playbook_hindsight", "playbook_true_stage", "best_constant"):
        assert learned >= m[f"policy/{other}/true_value"] - 1e-12, other
    assert m["policy/n_decisions"] == decided.sum()
    # The logging policy's mean reward brackets its true value (seeded: this shop's draw, not a guarantee).
    assert m["policy/logging/value_lo"] <= m["policy/logging/true_value"] <= m["policy/logging/value_hi"]


# ---------------------------------------------------------------------------------------------- plots


def test_plots_return_figures_with_their_labels(result: EvaluationResult) -> None:
    assert result.plots.confusion is not None
    fig = plot_confusion(result.plots.confusion, STAGES, title="stage")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_title()) == ("predicted", "true", "stage")
    assert [t.get_text() for t in ax.get_xticklabels()] == list(STAGES)

    curve = result.plots.reliability["purchase_7d"]
    fig = plot_reliability({"a": curve, "b": curve}, title="purchase_7d")
    top, bottom = fig.axes[:2]
    assert top.get_ylabel() == "observed share of positives"
    assert bottom.get_xlabel() == "mean predicted probability"
    legend = top.get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["perfectly calibrated", "a", "b"]

    fig = plot_recall_at_k({"a": result.plots.recall_at_k, "b": {1: 0.1, 3: 0.2}})
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("K", "Recall@K")
    assert len(ax.get_lines()) == 2

    fig = plot_policy_values(result.plots.policy_values, {"learned": 0.3, "no_send": 0.1})
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert "learned" in labels
    assert "logging" in labels
    legend = ax.get_legend()
    assert legend is not None
    assert "true value" in [t.get_text() for t in legend.get_texts()]
    assert ax.get_ylabel() == "conversion rate"


def test_evaluation_figures_names(result: EvaluationResult) -> None:
    figures = evaluation_figures([result])
    assert set(figures) == {
        "confusion_hand.png",
        "policy_values_hand.png",
        "reliability_purchase_7d.png",
        "recall_at_k.png",
        "policy_values_snips.png",
    }
    assert all(isinstance(f, Figure) for f in figures.values())
