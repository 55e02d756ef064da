"""Next-item targets from any behaviour, and no registered model with a head that never saw a label.

A click stream (product views, no purchases) is the case that matters: with the default label (items
bought) its next-item label is empty, the item loss is 0 and every rec/* metric is NaN, so the model's
recommendations would come from an untrained head. `labels.next_item_events: [product_view]` makes the
next viewed items the target instead; without it, `train()` must refuse to register the model, even
forced.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest

from features.encoder import prepare
from features.labels import LabelConfig, hindsight_labels
from features.snapshots import BuildConfig
from features.vocab import FIRST, Vocabulary
from tests.factories import events, write_events

if TYPE_CHECKING:
    from training.data import FeatureData
    from training.train import TrainResult

T = pd.Timestamp("2026-02-05", tz="UTC")  # a cutoff of the click shop below (first event + 35 days)

# Customer H, hand-made: with a 7-day next-item window after T, the next viewed items are I7, I2, I5.
HAND = [
    ("H", "2026-02-01 09:00", "product_view", "I3"),  # before the cutoff: an input, not a label
    ("H", "2026-02-05 10:00", "product_view", "I7"),
    ("H", "2026-02-06 10:00", "product_view", "I2"),
    ("H", "2026-02-07 10:00", "add_to_cart", "I4"),  # a cart, not a view
    ("H", "2026-02-08 10:00", "product_view", "I7"),  # seen already: kept once, at its first view
    ("H", "2026-02-11 23:00", "product_view", "I5"),  # the window's last day
    ("H", "2026-02-12 01:00", "product_view", "I9"),  # after the window
]
HAND_NEXT_VIEWS = ["I7", "I2", "I5"]


def _labels(config: LabelConfig, *rows: tuple) -> list[list[str]]:
    """The next-item labels of customer H at T, as item ids."""
    ev = events(*rows)
    vocab = Vocabulary.fit({"item_id": ev["item_id"].dropna().value_counts()})
    out = hindsight_labels(prepare(ev, vocab), pd.DataFrame({"customer_id": ["H"], "cutoff": [T]}), config)
    items = np.array(vocab.tokens["item_id"], dtype=object)
    return [[str(items[i - FIRST]) for i in row] for row in out["next_items"].to_pylist()]


def test_the_default_label_is_the_items_bought_so_a_click_stream_has_none() -> None:
    assert LabelConfig().next_item_events == ("purchase",)
    assert _labels(LabelConfig(next_items_days=7), *HAND) == [[]]
    bought = [("H", "2026-02-06 12", "purchase", "I4", 20.0), ("H", "2026-02-07 12", "purchase", "I2", 9.0)]
    assert _labels(LabelConfig(next_items_days=7), *HAND, *bought) == [["I4", "I2"]]


def test_product_views_as_targets_are_the_next_viewed_items() -> None:
    config = LabelConfig(next_items_days=7, next_item_events=("product_view",))
    assert _labels(config, *HAND) == [HAND_NEXT_VIEWS]
    # Several behaviours: in order of the first event of any of them.
    both = LabelConfig(next_items_days=7, next_item_events=("product_view", "add_to_cart"))
    assert _labels(both, *HAND) == [["I7", "I2", "I4", "I5"]]


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (["product_view", "prodcut_view"], "prodcut_view"),
        ("checkout", "checkout"),
        (["email_sent"], "email_sent"),  # the shop's own send is not the customer's choice
        ([], "next_item_events"),
    ],
)
def test_a_bad_event_type_is_a_one_line_error_naming_it(value: object, named: str) -> None:
    with pytest.raises(ValueError, match=named) as caught:
        BuildConfig.from_dict({"labels": {"next_item_events": value}})
    assert "labels.next_item_events" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_setting_reads_from_yaml_and_overrides_and_reaches_the_manifest_config() -> None:
    one = BuildConfig.from_yaml(None, {"labels.next_item_events": "product_view"})  # --set gives a name
    assert one.labels.next_item_events == ("product_view",)
    config = BuildConfig.from_dict({"labels": {"next_item_events": ["product_view", "email_click"]}})
    assert config.labels.next_item_events == ("product_view", "email_click")
    assert BuildConfig.from_dict(config.to_dict()) == config  # the manifest's config builds it again
    assert config.to_dict()["labels"]["next_item_events"] == ("product_view", "email_click")


def _split(next_items: list[list[int]], logged_action: list[int]) -> FeatureData:
    """A training split of len(next_items) rows with these labels (the inputs do not matter here)."""
    from training.data import FeatureData

    n = len(next_items)
    logged = np.array(logged_action)
    label = np.where(logged >= 0, 0.0, np.nan)
    return FeatureData(
        customer_id=np.array([f"c{i}" for i in range(n)], dtype=object), cutoff_ms=np.zeros(n, np.int64),
        tokens={}, length=np.ones(n, np.int64), aggregates=np.zeros((n, 1), np.float32),
        stage=np.zeros(n, np.int64), targets={"purchase_7d": np.zeros(n, np.float32)},
        next_items=[np.array(x, np.int64) for x in next_items], logged_action=logged,
        logged_propensity=np.where(logged >= 0, 0.5, np.nan), outcome=label, unsubscribed=label, n_items=12,
    )  # fmt: skip


def test_every_served_head_needs_a_labelled_training_row() -> None:
    from features.schema import ACTIONS
    from training.heads import labelled_rows, untrained_heads

    no_send, cross_sell = ACTIONS.index("no_send"), ACTIONS.index("cross_sell")
    data = _split([[3, 4], [], []], [-1, no_send, -1])
    # All-zero purchase labels are labels (nobody bought); the next items label one row of three.
    assert labelled_rows(data, ("purchase_7d",), decision_log=False) == {
        "stage": 3, "purchase_7d": 3, "next items": 1
    }  # fmt: skip
    # With a decision log, unsubscribe learns from sends only: a logged no_send teaches it nothing.
    assert labelled_rows(data, ("purchase_7d",), decision_log=True) == {
        "stage": 3, "purchase_7d": 3, "next items": 1, "unsubscribe": 0, "action outcomes": 1
    }  # fmt: skip
    manifest = {"config": {"labels": {"decision_window_days": 1}}, "input": {"decisions": "log.parquet"}}
    assert [r.split(":")[0] for r in untrained_heads(data, ("purchase_7d",), manifest)] == ["unsubscribe"]
    assert untrained_heads(data, ("purchase_7d",), {"input": {"decisions": None}}) == []
    sent = _split([[3], [], []], [cross_sell, -1, -1])
    assert untrained_heads(sent, ("purchase_7d",), manifest) == []
    empty = _split([], [])
    assert [r.split(":")[0] for r in untrained_heads(empty, ("purchase_7d",), {})] == [
        "stage", "purchase_7d", "next items"
    ]  # fmt: skip


# -- a click-only shop, built and trained ------------------------------------------------------------------


def click_shop(tmp_path: Path) -> Path:
    """40 customers who view products (I0..I9) and pages for 16 weeks and never buy, and H."""
    rng = np.random.default_rng(0)
    rows: list[tuple] = []
    start = pd.Timestamp("2026-01-01")
    for c in range(40):
        for day in np.sort(rng.choice(112, size=30, replace=False)):
            ts = start + pd.Timedelta(days=int(day), hours=int(rng.integers(8, 22)))
            for k in range(int(rng.integers(1, 4))):
                at = str(ts + pd.Timedelta(minutes=5 * k))
                rows.append((f"C{c:02d}", at, "product_view", f"I{int(rng.integers(0, 10))}"))
            rows.append((f"C{c:02d}", str(ts), "page_view"))
    rows[0] = ("C00", "2026-01-01 00:00", "page_view")  # the shop's first event: cutoffs from Jan 15
    return write_events(events(*rows, *HAND), tmp_path / "events" / "part-0.parquet").parent


def build(shop: Path, out: Path, **labels: object) -> Path:
    from features.build import build_features

    # No cart-abandonment label: the click stream has one cart, after the training cutoffs (an untrained
    # head of its own, refused like the next items: tests/test_cart_abandonment.py).
    config = BuildConfig.from_dict(
        {"encoder": {"max_len": 10}, "labels": {"next_items_days": 7, "cart_abandon_hours": None, **labels},
         "warmup_days": 14, "n_buckets": 1, "workers": 1}
    )  # fmt: skip
    build_features(shop, out, config, progress=False)
    return out


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


def tiny_train(features: Path) -> TrainResult:
    from training.config import TrainConfig
    from training.train import train

    config = TrainConfig(features=str(features), experiment="targets", n_boot=0,
                         model={"d_model": 8, "n_layers": 1}, baselines={"enabled": False},
                         journey_map={"enabled": False}, fit={"max_epochs": 1, "batch_size": 64})  # fmt: skip
    return train(config, progress=False, force_register=True)


@pytest.mark.slow
def test_a_click_stream_with_the_default_label_is_never_registered_even_forced(
    tmp_path: Path, store: Path
) -> None:
    import mlflow

    from features.build import load_rows

    features = build(click_shop(tmp_path), tmp_path / "features")
    rows = load_rows(features)
    assert rows.num_rows > 0
    assert sum(len(x) for x in rows.column("next_items").to_pylist()) == 0

    result = tiny_train(features)
    assert result.version is None
    assert not result.forced
    assert result.refused
    assert len(result.untrained) == 1, result.untrained
    reason = result.untrained[0]
    assert reason.startswith("next items: no labelled training rows")
    assert "labels.next_item_events = purchase" in reason
    assert "[product_view]" in reason
    assert "\n" not in reason
    assert reason in result.gate_failures
    assert result.run_id is not None
    tags = mlflow.get_run(result.run_id).data.tags
    assert tags["gate"] == "refused"
    assert reason in tags["untrained_heads"].split("\n")
    assert reason in tags["gate_reasons"].split("\n")
    assert "registered_version" not in tags


@pytest.mark.slow
def test_product_views_as_targets_label_the_click_stream_and_the_model_registers(
    tmp_path: Path, store: Path
) -> None:
    from features.build import load_rows
    from training.data import FeatureBuild

    features = build(click_shop(tmp_path), tmp_path / "features", next_item_events=["product_view"])
    opened = FeatureBuild.open(features)
    assert opened.manifest["config"]["labels"]["next_item_events"] == ["product_view"]
    rows = load_rows(features).to_pandas()
    cutoff = rows["cutoff"].dt.tz_convert("UTC")
    hand = rows[(rows["customer_id"] == "H") & (cutoff == T)]
    assert len(hand) == 1
    items = np.array(opened.vocab.tokens["item_id"], dtype=object)
    assert [str(items[i - FIRST]) for i in hand["next_items"].iloc[0]] == HAND_NEXT_VIEWS
    assert (rows["next_items"].map(len) > 0).mean() > 0.5

    result = tiny_train(features)
    assert result.untrained == []
    assert result.version is not None  # forced past the gate's NaN purchase AUC (no purchases): allowed
