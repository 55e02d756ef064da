"""The whole-history item profile: its arrays on hand-made events, batch == online, a build's round trip,
and the model's use of it (an item bought often long ago outranks an unseen one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from features.columns import EventColumns
from features.encoder import EncodedBatch, EncoderConfig, encode, encode_columns
from features.history import HISTORY_FIELDS, NEVER_DAYS
from features.vocab import FIRST, Vocabulary
from predictor.model import JourneyModel, ModelConfig
from predictor.predictor import Predictor
from tests.factories import events, random_events


@pytest.fixture
def vocab() -> Vocabulary:
    counts = {
        "item_id": pd.Series({"I1": 5, "I2": 4, "I3": 3, "I4": 2}),
        "category": pd.Series({"cat_1": 5}),
    }
    return Vocabulary.fit(counts)


def _cutoffs(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [r[0] for r in rows], "cutoff": [pd.Timestamp(r[1], tz="UTC") for r in rows]}
    )


def _row(batch: EncodedBatch, i: int) -> list[dict[str, int]]:
    padded = batch.history_padded
    n = int(batch.history_length[i])
    return [{name: int(padded[name][i, j]) for name in HISTORY_FIELDS} for j in range(n)]


I1, I2, I3, I4 = FIRST, FIRST + 1, FIRST + 2, FIRST + 3


def test_profile_counts_recency_and_order_by_hand(vocab: Vocabulary) -> None:
    ev = events(
        ("a", "2026-01-01 10:00", "purchase", "I1", 5.0),
        ("a", "2026-01-01 10:01", "purchase", "I1", 5.0),  # same day: 2 purchases, 1 purchase day
        ("a", "2026-01-03 10:00", "purchase", "I1", 5.0),
        ("a", "2026-01-04 10:00", "product_view", "I2"),
        ("a", "2026-01-05 10:00", "add_to_cart", "I2"),
        ("a", "2026-01-06 10:00", "purchase", "I3", 5.0),
        ("a", "2026-01-07 10:00", "product_view", "I4"),
        ("a", "2026-01-08 09:00", "product_view", "I9"),  # out of vocabulary: not in the profile
        ("a", "2026-01-08 10:00", "email_sent", None, None, "cross_sell"),
        ("a", "2026-01-10 00:00", "purchase", "I4", 5.0),  # at the cutoff: excluded
        ("b", "2026-01-02 00:00", "purchase", "I2", 5.0),  # another customer's
    )
    batch = encode(ev, _cutoffs(("a", "2026-01-10")), vocab, EncoderConfig(max_len=8, history_items=10))
    rows = _row(batch, 0)
    # Most purchase days first, then the most recent touch.
    assert [r["item"] for r in rows] == [I1, I3, I4, I2]
    i1, i3, i4, i2 = rows
    assert (i1["purchases"], i1["purchase_days"], i1["carts"], i1["views"]) == (3, 2, 0, 0)
    assert (i1["days_since"], i1["days_since_purchase"]) == (6, 6)  # 2026-01-03 10:00 -> 6.58 days
    assert (i1["days_since_first"], i1["purchases_30d"], i1["purchases_90d"]) == (8, 3, 3)
    assert (i3["purchases"], i3["days_since"], i3["days_since_purchase"]) == (1, 3, 3)
    assert (i4["purchases"], i4["views"], i4["days_since"]) == (0, 1, 2)
    assert i4["days_since_purchase"] == NEVER_DAYS
    assert (i2["purchases"], i2["carts"], i2["views"], i2["days_since"]) == (0, 1, 1, 4)


def test_profile_cap_point_in_time_and_empty(vocab: Vocabulary) -> None:
    ev = events(
        ("a", "2026-01-01 10:00", "purchase", "I1", 5.0),
        ("a", "2026-01-02 10:00", "product_view", "I2"),
        ("a", "2026-01-03 10:00", "product_view", "I3"),
        ("a", "2026-01-04 10:00", "purchase", "I2", 5.0),
        ("a", "2026-03-01 10:00", "purchase", "I1", 5.0),
    )
    cut = _cutoffs(
        ("a", "2026-01-03 10:00"), ("a", "2027-06-01"), ("nobody", "2026-02-01"), ("a", "2025-01-01")
    )
    batch = encode(ev, cut, vocab, EncoderConfig(max_len=8, history_items=2))
    assert batch.history_length.tolist() == [2, 2, 0, 0]
    first = _row(batch, 0)
    # The view of I3 at exactly the cutoff is not seen; I1 bought, I2 viewed, most purchases first.
    assert [r["item"] for r in first] == [I1, I2]
    assert first[1]["purchases"] == 0
    later = _row(batch, 1)
    # Capped at 2 items: I1 (2 purchase days) and I2 (1, more recent than I3's view); days capped.
    assert [r["item"] for r in later] == [I1, I2]
    assert later[0]["purchase_days"] == 2
    assert (later[0]["purchases_30d"], later[0]["purchases_90d"]) == (0, 0)  # over a year later
    assert later[1]["days_since"] == NEVER_DAYS
    assert batch.history_padded["item"].shape == (4, 2)
    assert batch.history_padded["item"][2].tolist() == [0, 0]

    # 2026-03-15: I1 bought 14 days before (in both windows) and 73 days before (in 90 days only).
    march = encode(ev, _cutoffs(("a", "2026-03-15")), vocab, EncoderConfig(max_len=8, history_items=2))
    assert (_row(march, 0)[0]["purchases_30d"], _row(march, 0)[0]["purchases_90d"]) == (1, 2)

    off = encode(ev, cut, vocab, EncoderConfig(max_len=8, history_items=0))
    assert off.history_padded["item"].shape == (4, 0)
    assert off.history_length.tolist() == [0, 0, 0, 0]


def test_profile_online_equals_batch_and_does_not_depend_on_other_customers() -> None:
    events_frame = random_events(40, 3_000, seed=3)
    counts = {
        "item_id": events_frame["item_id"].value_counts().head(60),
        "category": events_frame["category"].value_counts(),
    }
    vocab = Vocabulary.fit(counts)
    customers = np.array([*sorted(events_frame["customer_id"].unique())[:25], "nobody"], dtype=object)
    rng = np.random.default_rng(0)
    cut = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 130 * 86_400, 26), unit="s")
    cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": cut})
    config = EncoderConfig(max_len=10, history_items=7)
    expected = encode(events_frame.sample(frac=1.0, random_state=1), cutoffs, vocab, config)
    got = encode_columns(
        EventColumns.from_frame(events_frame), customers, cut.as_unit("ms").asi8, vocab, config
    )
    assert expected.history_length.max() == 7
    assert expected.history_length.sum() > 100
    np.testing.assert_array_equal(got.history_length, expected.history_length)
    for name in HISTORY_FIELDS:
        np.testing.assert_array_equal(got.history[name], expected.history[name], err_msg=name)
    # One customer alone gives the same row as in the batch.
    one = customers[3]
    alone = encode(events_frame[events_frame["customer_id"] == one], cutoffs.iloc[[3]], vocab, config)
    for name in HISTORY_FIELDS:
        np.testing.assert_array_equal(alone.history_padded[name][0], expected.history_padded[name][3])
    both = EncodedBatch.concat([expected, alone])
    assert len(both) == 27
    np.testing.assert_array_equal(both.history_padded["item"][26], expected.history_padded["item"][3])


def test_feature_data_round_trip_through_a_build_and_an_old_build(tmp_path: Path) -> None:
    from features.build import build_features, load_rows
    from features.snapshots import BuildConfig
    from tests.factories import write_events
    from training.data import FeatureBuild, FeatureData

    frame = random_events(30, 2_500, seed=5)
    path = write_events(frame, tmp_path / "events.parquet")
    config = BuildConfig(encoder=EncoderConfig(max_len=6, history_items=5), n_buckets=1, workers=1)
    out = tmp_path / "features"
    build_features(path, out, config, progress=False)
    build = FeatureBuild.open(out)
    assert build.history_items == 5
    data = build.split("train")
    table = load_rows(out, "train")
    again = encode(
        frame,
        pd.DataFrame(
            {"customer_id": data.customer_id, "cutoff": pd.to_datetime(data.cutoff_ms, unit="ms", utc=True)}
        ),
        build.vocab,
        config.encoder,
    )
    for name in HISTORY_FIELDS:
        np.testing.assert_array_equal(data.history[name], again.history_padded[name], err_msg=name)
    assert data.history["item"].shape == (len(data), 5)
    picked = data.subset(np.array([2, 0]))
    np.testing.assert_array_equal(picked.history["views"][1], data.history["views"][0])

    # A build from before the profile: no `hist_` columns, history_items absent from its manifest.
    old = table.drop_columns([c for c in table.column_names if c.startswith("hist_")])
    assert isinstance(old, pa.Table)
    data_old = FeatureData.from_table(old, build.max_len, build.n_items, build.targets, history_items=5)
    assert data_old.history["item"].shape == (len(data_old), 0)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["config"]["encoder"]["history_items"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert FeatureBuild.open(out).history_items == 0


def _model(**overrides: object) -> JourneyModel:
    sizes = {"event_type": 30, "item_id": 12, "category": 4, "channel": 4, "message_type": 4,
             "dt_bucket": 16, "hour": 25, "weekday": 8, "value_bucket": 14}  # fmt: skip
    settings: dict[str, object] = {"history_items": 3, "dropout": 0.0, **overrides}
    config = ModelConfig(token_sizes=sizes, n_items=12, n_aggregates=3, max_len=4, **settings)  # type: ignore[arg-type]
    torch.manual_seed(0)
    return JourneyModel(config).eval()


def _inputs(n: int, history: dict[str, list[list[int]]]) -> tuple[dict, torch.Tensor, dict]:
    tokens = {name: torch.zeros(n, 4, dtype=torch.long) for name in _model().embed}
    hist = {
        name: torch.tensor(history.get(name, [[0, 0, 0]] * n), dtype=torch.long) for name in HISTORY_FIELDS
    }
    return tokens, torch.zeros(n, 3), hist


def test_model_ranks_an_often_bought_old_item_above_unseen_ones_with_explore_zeroed() -> None:
    model = _model(repeat=False)
    with torch.no_grad():  # no explore part: the item query and the biases are zero
        model.item_query.weight.zero_()
        model.item_query.bias.zero_()
        model.item_bias.zero_()
    old = 300
    history = {
        "item": [[5, 0, 0]],
        "purchases": [[5, 0, 0]],
        "purchase_days": [[5, 0, 0]],
        "days_since": [[old, 0, 0]],
        "days_since_purchase": [[old, 0, 0]],
    }
    tokens, agg, hist = _inputs(1, history)
    with torch.no_grad():
        items = model(tokens, agg, hist).items[0]
        assert int(items[FIRST:].argmax()) + FIRST == 5
        # Without the profile every real item scores the same.
        bare = model(tokens, agg, _inputs(1, {})[2]).items[0]
    assert torch.allclose(bare[FIRST:], bare[FIRST])


def test_profile_reaches_the_state_and_gets_gradients() -> None:
    model = _model(profile_input=True).train()  # the taste vector is off by default (predictor/model.py)
    history = {"item": [[5, 7, 0]], "purchases": [[2, 1, 0]], "purchase_days": [[2, 1, 0]],
               "days_since": [[3, 40, 0]], "days_since_purchase": [[3, 40, 0]]}  # fmt: skip
    tokens, agg, hist = _inputs(1, history)
    out = model(tokens, agg, hist)
    torch.log_softmax(out.items, dim=-1)[0, 5].backward()
    assert model.profile.repeat_in.weight.grad is not None
    assert float(model.profile.repeat_in.weight.grad.abs().sum()) > 0
    model.eval()
    with torch.no_grad():
        stage_with = model(tokens, agg, hist).stage
        stage_without = model(tokens, agg, _inputs(1, {})[2]).stage
    assert not torch.allclose(stage_with, stage_without)  # the taste vector reaches every head
    plain = _model().eval()  # by default the profile reaches the item head only
    with torch.no_grad():
        same = plain(tokens, agg, hist).stage, plain(tokens, agg, _inputs(1, {})[2]).stage
    torch.testing.assert_close(same[0], same[1])


def test_old_predictor_without_profile_keys_loads(tmp_path: Path, vocab: Vocabulary) -> None:
    model = _model(profile_input=False, profile_repeat=False, history_items=0)
    from predictor.model import Calibration

    Predictor(model, Calibration(), vocab).save(tmp_path)
    meta = json.loads((tmp_path / "predictor.json").read_text())
    for key in ("history_items", "profile_input", "profile_repeat"):
        del meta["model_config"][key]
    (tmp_path / "predictor.json").write_text(json.dumps(meta))
    loaded = Predictor.load(tmp_path)
    assert loaded.config.history_items == 0
    assert not loaded.config.profile_repeat
    assert loaded.encoder_config.history_items == 0
