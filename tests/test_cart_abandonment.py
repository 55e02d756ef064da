"""The cart-abandonment head, end to end on hand-made data: the label (hand-worked customers), its masked
training and evaluation (only rows with an open cart have a label), and its answer in the service and in
the audience export (null where the customer has no open cart)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from features.encoder import AGGREGATE_NAMES, EncoderConfig, encode, prepare
from features.labels import LabelConfig, cart_abandon_hours, cart_abandon_target, hindsight_labels
from features.schema import ACTIONS, STAGES
from features.vocab import FIRST, Vocabulary
from tests.factories import events

T = pd.Timestamp("2026-03-02", tz="UTC")  # the cutoff (midnight UTC)
VOCAB = Vocabulary.fit({"item_id": pd.Series({"I1": 3, "I2": 2, "I3": 1})})

# Customer -> (events, the label at T with the default 24-hour window: True abandoned, False bought, None
# no open cart). The window is [T, T + 24 h).
CUSTOMERS: dict[str, tuple[list[tuple], bool | None]] = {
    "bought_in_a_day": (
        [
            ("bought_in_a_day", "2026-03-01 10:00", "add_to_cart", "I1"),
            ("bought_in_a_day", "2026-03-02 20:00", "purchase", "I1"),
        ],
        False,
    ),
    "bought_after_25h": (
        [
            ("bought_after_25h", "2026-03-01 10:00", "add_to_cart", "I1"),
            ("bought_after_25h", "2026-03-03 01:00", "purchase", "I1"),
        ],
        True,
    ),
    "never_bought": ([("never_bought", "2026-02-27 09:00", "add_to_cart", "I2")], True),
    # Any order counts as buying the cart, as any order closes it (the encoder's definition).
    "bought_other_item": (
        [
            ("bought_other_item", "2026-03-01 10:00", "add_to_cart", "I1"),
            ("bought_other_item", "2026-03-02 09:00", "purchase", "I3"),
        ],
        False,
    ),
    "no_cart": (
        [
            ("no_cart", "2026-03-01 10:00", "product_view", "I1"),
            ("no_cart", "2026-03-02 09:00", "purchase", "I1"),
        ],
        None,
    ),
    # A purchase before the cutoff closes the cart: nothing is open at T.
    "closed_before": (
        [
            ("closed_before", "2026-02-28 10:00", "add_to_cart", "I1"),
            ("closed_before", "2026-03-01 10:00", "purchase", "I1"),
        ],
        None,
    ),
    # A cart older than 7 days is not open any more.
    "stale_cart": ([("stale_cart", "2026-02-20 10:00", "add_to_cart", "I1")], None),
    # Carted again after an earlier order: open.
    "carted_again": (
        [
            ("carted_again", "2026-02-20 10:00", "purchase", "I1"),
            ("carted_again", "2026-03-01 23:00", "add_to_cart", "I2"),
        ],
        True,
    ),
    # Events at or after the cutoff are not what the customer had at T.
    "carted_after_t": ([("carted_after_t", "2026-03-02 01:00", "add_to_cart", "I2")], None),
}


def _labels(config: LabelConfig | None = None) -> tuple[list[str], dict]:
    ev = events(*(row for rows, _ in CUSTOMERS.values() for row in rows))
    names = [*CUSTOMERS, "unknown_customer"]
    rows = pd.DataFrame({"customer_id": names, "cutoff": [T] * len(names)})
    return names, hindsight_labels(prepare(ev, VOCAB), rows, config or LabelConfig())


def test_label_worked_by_hand() -> None:
    names, out = _labels()
    got = dict(zip(names, out["cart_abandon_24h"].to_pylist(), strict=True))
    assert got == {**{c: label for c, (_, label) in CUSTOMERS.items()}, "unknown_customer": None}


def test_the_labelled_rows_are_the_encoders_open_carts() -> None:
    # One definition of an open cart: the label is known exactly where the encoder's aggregate says open.
    names, out = _labels()
    ev = events(*(row for rows, _ in CUSTOMERS.values() for row in rows))
    batch = encode(ev, pd.DataFrame({"customer_id": names, "cutoff": [T] * len(names)}), VOCAB)
    labelled = np.array([v is not None for v in out["cart_abandon_24h"].to_pylist()])
    assert np.array_equal(batch.aggregates["open_cart"] == 1.0, labelled)
    assert labelled.sum() == 5


def test_the_window_names_the_column_and_moves_the_label() -> None:
    names, out = _labels(LabelConfig(cart_abandon_hours=48))
    assert "cart_abandon_24h" not in out
    got = dict(zip(names, out["cart_abandon_48h"].to_pylist(), strict=True))
    assert got["bought_after_25h"] is False  # bought 25 h after T: inside 48 h
    assert got["never_bought"] is True
    assert cart_abandon_target(48) == "cart_abandon_48h"
    assert cart_abandon_hours("cart_abandon_48h") == 48
    assert cart_abandon_hours("purchase_7d") is None
    # The labels look as far after the cutoff as the window: later cutoffs cannot be labelled.
    assert LabelConfig(cart_abandon_hours=24 * 40 + 1).horizon_days == 41
    _, off = _labels(LabelConfig(cart_abandon_hours=None))
    assert not [k for k in off if k.startswith("cart_abandon")]


@pytest.mark.parametrize("hours", [0, -3, 2.5, True])
def test_a_bad_window_is_refused_naming_the_setting(hours: object) -> None:
    with pytest.raises(ValueError, match=r"^labels\.cart_abandon_hours: "):
        LabelConfig(cart_abandon_hours=hours)  # type: ignore[arg-type]


def test_the_build_label_config_drives_the_propensity_targets() -> None:
    from training.data import propensity_targets

    labels = {"purchase_horizons": [7, 30], "churn_days": 30, "cart_abandon_hours": 24}
    assert propensity_targets(labels) == ("purchase_7d", "purchase_30d", "churn_30d", "cart_abandon_24h")
    assert propensity_targets({**labels, "cart_abandon_hours": 6})[-1] == "cart_abandon_6h"
    # Turned off, or a build from before the label: no such column, no such head.
    assert propensity_targets({**labels, "cart_abandon_hours": None})[-1] == "churn_30d"
    assert "cart_abandon_24h" not in propensity_targets({"purchase_horizons": [7], "churn_days": 30})


# -- training and evaluation on labelled rows only ---------------------------------------------------------

CART = "cart_abandon_24h"


def _data(n: int = 400, seed: int = 0, labelled_share: float = 0.3):  # type: ignore[no-untyped-def]
    """A split whose cart label is known on about `labelled_share` of its rows and follows the first
    aggregate there (so a model can learn it); the purchase label follows the second aggregate."""
    from training.data import FeatureData

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, len(AGGREGATE_NAMES))).astype(np.float32)
    has_cart = rng.random(n) < labelled_share
    cart = np.where(has_cart, (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(np.float32), np.nan)
    purchase = (x[:, 1] + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    nan = np.full(n, np.nan)
    return FeatureData(
        customer_id=np.array([f"c{i}" for i in range(n)], dtype=object), cutoff_ms=np.zeros(n, np.int64),
        tokens={}, length=np.ones(n, np.int64), aggregates=x, stage=rng.integers(0, len(STAGES), n),
        targets={"purchase_7d": purchase, CART: cart.astype(np.float32)},
        next_items=[np.zeros(0, np.int64)] * n,
        logged_action=np.full(n, -1, np.int64), logged_propensity=nan, outcome=nan.astype(np.float32),
        unsubscribed=nan.astype(np.float32), n_items=10,
    )  # fmt: skip


def test_the_propensity_loss_ignores_unlabelled_rows() -> None:
    from predictor.model import ModelOutput
    from training.sequence import FitConfig, journey_loss

    torch.manual_seed(0)
    b = 6
    targets = torch.tensor([[1.0, 0.0], [0.0, float("nan")], [1.0, 1.0], [0.0, float("nan")],
                            [1.0, 0.0], [0.0, float("nan")]])  # fmt: skip
    logits = torch.randn(b, 3, requires_grad=True)  # purchase_7d, cart, unsubscribe
    batch = {"stage": torch.zeros(b, dtype=torch.long), "targets": targets,
             "unsubscribed": torch.full((b,), -1.0), "action": torch.full((b,), -1, dtype=torch.long),
             "next_items": torch.full((b, 2), -1, dtype=torch.long), "propensity": torch.ones(b),
             "outcome": torch.zeros(b)}  # fmt: skip

    def output(prop: torch.Tensor) -> ModelOutput:
        return ModelOutput(stage=torch.zeros(b, len(STAGES)), propensity=prop, items=torch.zeros(b, 12),
                           action=torch.zeros(b, len(ACTIONS)))  # fmt: skip

    _, parts = journey_loss(output(logits), batch, FitConfig())
    known = ~torch.isnan(targets)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, :2][known], targets[known]
    )  # the mean over the labelled cells: with every cell labelled, what it always was
    assert parts["propensity"] == pytest.approx(float(expected.detach()), rel=1e-6)
    total, _ = journey_loss(output(logits), batch, FitConfig())
    total.backward()
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[~known[:, 1], 1] == 0).all()  # an unlabelled cell teaches nothing
    # Whatever the model says on an unlabelled cell, the loss is the same.
    moved = logits.detach().clone()
    moved[~known[:, 1], 1] += 5.0
    assert journey_loss(output(moved), batch, FitConfig())[1]["propensity"] == pytest.approx(
        parts["propensity"]
    )
    # A batch without any labelled cart row still has a finite loss.
    none = {**batch, "targets": torch.stack([targets[:, 0], torch.full((b,), float("nan"))], dim=1)}
    assert np.isfinite(journey_loss(output(logits), none, FitConfig())[1]["propensity"])


def test_the_temperature_is_fitted_on_labelled_rows() -> None:
    from training.temperature import temperatures

    valid = _data(seed=1)
    n = len(valid)
    rng = np.random.default_rng(2)
    cart = valid.targets[CART]
    # Overconfident logits on the labelled rows: the right temperature is above 1.
    logit = np.where(
        np.isnan(cart), 0.0, np.where(cart == 1, 6.0, -6.0) * np.where(rng.random(n) < 0.7, 1, -1)
    )
    outs = {"stage": np.zeros((n, len(STAGES))), "action": np.zeros((n, len(ACTIONS))),
            "propensity": np.column_stack([np.zeros(n), logit, np.zeros(n)])}  # fmt: skip
    cal = temperatures(outs, valid, ("purchase_7d", CART, "unsubscribe"))
    assert np.isfinite(cal.propensity).all()
    assert cal.propensity[1] > 2.0


def test_baselines_fit_the_cart_head_on_labelled_rows_only() -> None:
    from training.baselines.lightgbm import LightGBMAggregates
    from training.baselines.logistic import LogisticRF

    train, valid, test = _data(2_000, 0), _data(1_000, 1), _data(1_000, 2)
    lgbm = LightGBMAggregates(min_child_samples=20, num_threads=1).fit(train, valid)
    info = lgbm.heads_[CART].info
    assert info["train_rows"] == int(np.isfinite(train.targets[CART]).sum())
    assert info["valid_rows"] == int(np.isfinite(valid.targets[CART]).sum())
    assert info["model"] == "lightgbm"
    p = lgbm.predict(test).propensity[CART]
    known = np.isfinite(test.targets[CART])
    from training.metrics import roc_auc

    assert roc_auc(test.targets[CART][known], p[known]) > 0.75
    logistic = LogisticRF(features=("n_events", "n_events_28d")).fit(train, valid)
    assert CART in logistic.heads_
    assert np.isfinite(logistic.predict(test).propensity[CART]).all()


def test_evaluation_scores_the_cart_head_on_rows_with_an_open_cart() -> None:
    from training.evaluate import evaluate, population
    from training.interface import Predictions
    from training.results import population_line

    data = _data(300, 3)
    data.split = "test"
    cart = data.targets[CART]
    # A perfect score on the labelled rows, anything (here the wrong answer) on the others.
    p = np.where(np.isnan(cart), 0.99, cart * 0.8 + 0.1)
    result = evaluate(Predictions(propensity={CART: p}), data, catalogue_size=10, n_boot=0)
    n_open = int(np.isfinite(cart).sum())
    assert result.metrics[f"{CART}/n_rows"] == n_open
    assert result.metrics[f"{CART}/roc_auc"] == 1.0
    heads = population(data)["heads"]
    assert heads == {CART: {"rows": n_open, "who": "with an open cart at the cutoff"}}
    assert f"{CART} on the {n_open:,} with an open cart at the cutoff" in population_line([result])


def test_a_cart_head_without_labelled_rows_is_named_with_its_setting() -> None:
    from training.heads import labelled_rows, untrained_heads

    data = _data(50, 4, labelled_share=0.0)
    assert labelled_rows(data, ("purchase_7d", CART), decision_log=False)[CART] == 0
    manifest = {"config": {"labels": {"cart_abandon_hours": 24}}, "input": {}}
    reasons = untrained_heads(data, ("purchase_7d", CART), manifest)
    assert [r.split(":")[0] for r in reasons] == [CART, "next items"]  # (no next items in `_data`)
    reason = reasons[0]
    assert reason.startswith(f"{CART}: no labelled training rows (labels.cart_abandon_hours = 24)")
    assert "cart_abandon_hours: null" in reason


# -- the service and the audience export ---------------------------------------------------------------------

NOW = datetime(2026, 3, 2, tzinfo=UTC)


class _Predictor:
    """A stand-in for a registered model: fixed answers, a cart-abandonment head among its propensities."""

    def __init__(self) -> None:
        self.vocab = VOCAB
        self.encoder_config = EncoderConfig()
        self.items = np.array(["", "", "I1", "I2", "I3"], dtype=object)[: VOCAB.size("item_id")]
        self.catalogue_size = VOCAB.size("item_id") - FIRST

    def score(self, batch, k):  # type: ignore[no-untyped-def]
        from predictor.interface import Predictions

        n = len(batch)
        items = np.tile(np.arange(FIRST, FIRST + k), (n, 1))
        return Predictions(
            stage_proba=np.full((n, len(STAGES)), 1 / len(STAGES)),
            propensity={"purchase_7d": np.full(n, 0.3), CART: np.full(n, 0.8),
                        "unsubscribe": np.full(n, 0.01)},
            top_items=items, top_scores=np.full((n, k), 0.1), action_outcome=np.full((n, len(ACTIONS)), 0.1),
        )  # fmt: skip

    def weight_problems(self) -> list[str]:
        return []


@pytest.fixture
def service(tmp_path: Path):  # type: ignore[no-untyped-def]
    from serving.model import LoadedModel, ModelManager
    from serving.service import Service
    from serving.settings import ServeSettings
    from serving.store import open_store

    manager = ModelManager("journey-scorer", "champion")
    manager.current = LoadedModel("journey-scorer", "7", "champion", None, NOW, _Predictor())  # type: ignore[arg-type]
    store = open_store(f"sqlite:///{tmp_path / 'online.db'}")
    ev = events(*CUSTOMERS["never_bought"][0], *CUSTOMERS["closed_before"][0])
    store.append_events(ev)
    yield Service(ServeSettings(api_keys=("k",), seed=0), store, manager)
    store.close()


def test_the_answer_has_the_cart_probability_and_null_without_an_open_cart(service) -> None:  # type: ignore[no-untyped-def]
    from serving.schemas import ScoreResponse
    from serving.service import CustomerRequest

    requests = [CustomerRequest(c, now=NOW, record=False) for c in ("never_bought", "closed_before", "new")]
    open_cart, closed, new = (ScoreResponse.model_validate(a) for a in service.score(requests, record=False))
    assert open_cart.cart_abandonment is not None
    assert open_cart.cart_abandonment.probability == pytest.approx(0.8)
    assert open_cart.cart_abandonment.window_hours == 24
    assert closed.cart_abandonment is None
    assert new.cart_abandonment is None
    # The other propensities are unchanged; the cart head is answered in its own field only.
    assert open_cart.propensities == pytest.approx({"purchase_7d": 0.3, "unsubscribe": 0.01})
    documented = ScoreResponse.model_json_schema()["properties"]["cart_abandonment"]["description"]
    assert "null" in documented
    assert "open cart" in documented


def test_the_export_has_the_cart_column_empty_without_an_open_cart(service) -> None:  # type: ignore[no-untyped-def]
    from serving.service import CustomerRequest

    requests = [CustomerRequest(c, now=NOW) for c in ("never_bought", "closed_before")]
    frame = service.score_table(requests, record=False).set_index("customer_id")
    assert frame.loc["never_bought", f"p_{CART}"] == pytest.approx(0.8)
    assert np.isnan(frame.loc["closed_before", f"p_{CART}"])


def test_the_pyfunc_table_answers_the_cart_head_only_for_open_carts() -> None:
    """`mlflow models serve` and batch scoring read `predictions_frame`: NaN without an open cart, as the
    service answers null."""
    from features.schema import ACTIONS, STAGES
    from predictor.interface import Predictions
    from predictor.pyfunc import predictions_frame

    pred = Predictions(
        stage_proba=np.full((2, len(STAGES)), 1 / len(STAGES)),
        propensity={"purchase_7d": np.array([0.2, 0.3]), "cart_abandon_24h": np.array([0.8, 0.6])},
        top_items=np.array([[2], [3]]),
        action_outcome=np.zeros((2, len(ACTIONS))),
    )
    items = np.array(["", "", "A", "B"], dtype=object)
    frame = predictions_frame(np.array(["c1", "c2"]), pred, items, open_cart=np.array([True, False]))
    assert frame["p_cart_abandon_24h"].iloc[0] == 0.8
    assert np.isnan(frame["p_cart_abandon_24h"].iloc[1])
    assert frame["p_purchase_7d"].tolist() == [0.2, 0.3]  # other heads answer for everyone
