"""The lean scoring path gives the answers of the batch path, and micro-batching changes no answer.

The reference below is built from the batch tools (the feature job's frame encoder, `validate_events`,
the predictor and the rules on the encoder's aggregates): what the service computed before its hot path
kept events as columns. The service must give the same stage, propensities, recommendations, gains,
eligibility and (exploration off) action for the same customers at the same times.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from features.encoder import encode
from features.policy import NO_SEND, eligibility, greedy_policy
from features.schema import ACTIONS, MESSAGE_ACTIONS, SENT_MESSAGE_EVENTS, STAGES
from features.validate import validate_events
from predictor.registry import CHAMPION, MODEL_NAME
from serving.model import LoadedModel, ModelManager
from serving.service import CustomerRequest, Service, request_events
from serving.settings import ServeSettings
from serving.store import open_store
from tests.worlds import Served

pytestmark = [pytest.mark.slow, pytest.mark.integration]

NOW = pd.Timestamp("2026-04-20T12:00:00Z")


@pytest.fixture(scope="module")
def model(served: Served) -> LoadedModel:
    manager = ModelManager(MODEL_NAME, CHAMPION)
    manager.reload()
    assert manager.current is not None
    return manager.current


def service_for(tmp_path: Path, model: LoadedModel, **overrides: Any) -> Service:
    settings = ServeSettings(
        allow_no_auth=True, epsilon=0.0, control_share=0.0, seed=0, reload_interval_s=0, **overrides
    )
    manager = ModelManager(MODEL_NAME, CHAMPION, current=model)
    return Service(settings, open_store(f"sqlite:///{tmp_path / 'online.db'}", max_events=100_000), manager)


def customers_with_history(served: Served, n: int) -> list[str]:
    e = served.events[served.events["ts"] < NOW]
    counts = e["customer_id"].value_counts()
    return sorted(counts[counts >= 3].index)[:n]


def inline_rows(customer: str) -> list[dict[str, Any]]:
    """A visit just before the scoring time: a view and a cart of the catalogue's first items."""
    return [
        {"customer_id": customer, "ts": (NOW - pd.Timedelta(minutes=9)).to_pydatetime(),
         "event_type": "product_view", "item_id": "I00001", "event_id": f"{customer}-v"},
        {"customer_id": customer, "ts": (NOW - pd.Timedelta(minutes=4)).to_pydatetime(),
         "event_type": "add_to_cart", "item_id": "I00002", "event_id": f"{customer}-c"},
    ]  # fmt: skip


def reference(
    model: LoadedModel, events: pd.DataFrame, customers: list[str], settings: ServeSettings
) -> dict:
    """The batch path: frame encoder, predictor, rules on the encoder's aggregates (sends from the events)."""
    cutoffs = pd.DataFrame({"customer_id": customers, "cutoff": [NOW] * len(customers)})
    batch = encode(events, cutoffs, model.vocab, model.encoder_config)
    pred = model.predictor.score(batch, 5)
    days = {}
    seen = events[events["ts"] < NOW]
    sends = seen[
        seen["event_type"].isin(list(SENT_MESSAGE_EVENTS)) & seen["message_type"].isin(list(MESSAGE_ACTIONS))
    ]
    for action in ACTIONS:
        last = sends[sends["message_type"] == action].groupby("customer_id")["ts"].max()
        days[action] = np.array(
            [(NOW - last[c]).total_seconds() / 86_400 if c in last.index else np.nan for c in customers]
        )
    aggregates = {k: np.asarray(v, dtype=np.float64) for k, v in batch.aggregates.items()}
    last_any = np.fmin.reduce([days[a] for a in ACTIONS])
    aggregates["days_since_last_email"] = np.fmin(aggregates["days_since_last_email"], last_any)
    elig = eligibility(aggregates, settings.rules, days, now=[NOW.to_pydatetime()] * len(customers))
    assert pred.action_outcome is not None
    uplift = pred.action_outcome - pred.action_outcome[:, [NO_SEND]]
    allowed = elig.allowed | (np.arange(len(ACTIONS)) == NO_SEND)
    greedy = greedy_policy(uplift, allowed, settings.min_uplift)
    return {"pred": pred, "allowed": elig.allowed, "uplift": uplift, "greedy": greedy}


def test_the_lean_path_answers_as_the_batch_path(tmp_path: Path, served: Served, model: LoadedModel) -> None:
    customers = customers_with_history(served, 30)
    history = served.events[served.events["customer_id"].isin(customers) & (served.events["ts"] < NOW)]
    service = service_for(tmp_path, model)
    service.add_events(history.reset_index(drop=True))
    # Half the customers also send inline events with the request.
    requests, inline = [], []
    for j, c in enumerate(customers):
        rows = inline_rows(c) if j % 2 else []
        inline += rows
        requests.append(CustomerRequest(c, request_events(rows, c), now=NOW.to_pydatetime(), n_items=5))
    answers = service.score(requests, record=False)

    frame = pd.DataFrame(inline)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    checked = validate_events(frame, lines=np.arange(len(frame)), now=NOW).accepted
    events = pd.concat([history, checked], ignore_index=True)
    ref = reference(model, events, customers, service.settings)
    pred = ref["pred"]
    for i, (c, a) in enumerate(zip(customers, answers, strict=True)):
        assert a["customer_id"] == c
        np.testing.assert_allclose(
            [a["stage"]["probabilities"][s] for s in STAGES], pred.stage_proba[i], rtol=1e-5, atol=1e-7
        )
        for name, p in pred.propensity.items():
            if name.startswith("cart_abandon_"):  # its own field, null without an open cart
                cart = a["cart_abandonment"]
                assert cart is None or cart["probability"] == pytest.approx(float(p[i]), rel=1e-5, abs=1e-7)
                continue
            assert a["propensities"][name] == pytest.approx(float(p[i]), rel=1e-5, abs=1e-7)
        assert [r["item_id"] for r in a["recommendations"]] == list(model.items[pred.top_items[i]])
        np.testing.assert_allclose(
            [r["score"] for r in a["recommendations"]], pred.top_scores[i], rtol=1e-5, atol=1e-9
        )
        by_action = {r["action"]: r for r in a["next_best_action"]["ranked"]}
        for j, action in enumerate(ACTIONS):
            if action != "no_send":
                assert by_action[action]["score"] == pytest.approx(float(ref["uplift"][i, j]), abs=1e-6)
                assert by_action[action]["eligible"] == bool(ref["allowed"][i, j]), (c, action)
        assert a["next_best_action"]["action"] == ACTIONS[int(ref["greedy"][i])]
    service.close()


def test_concurrent_requests_share_forwards_and_get_the_answers_they_get_alone(
    tmp_path: Path,
    served: Served,
    model: LoadedModel,
) -> None:
    customers = customers_with_history(served, 24)
    history = served.events[served.events["customer_id"].isin(customers) & (served.events["ts"] < NOW)]

    def answers(batch_wait_ms: float, concurrent: bool, folder: str) -> dict[str, dict[str, Any]]:
        (tmp_path / folder).mkdir()
        service = service_for(tmp_path / folder, model, batch_wait_ms=batch_wait_ms)
        service.add_events(history.reset_index(drop=True))
        out: dict[str, dict[str, Any]] = {}

        def one(c: str) -> None:
            request = CustomerRequest(
                c, request_events(inline_rows(c), c), now=NOW.to_pydatetime(), n_items=3 + len(c) % 4
            )
            out[c] = service.score([request], record=False)[0]

        if concurrent:
            threads = [threading.Thread(target=one, args=(c,)) for c in customers]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for c in customers:
                one(c)
        stats = service._batcher.stats
        service.close()
        out["__stats__"] = {"batches": stats.batches, "items": stats.items}
        return out

    alone = answers(0.0, concurrent=False, folder="alone")
    together = answers(20.0, concurrent=True, folder="together")
    # A call that finds no one else on the way scores alone, in its own thread; the others share.
    assert together["__stats__"]["items"] >= len(customers) // 2
    assert together["__stats__"]["batches"] < together["__stats__"]["items"]  # forwards were shared
    for c in customers:
        a, b = alone[c], together[c]
        assert [r["item_id"] for r in a["recommendations"]] == [r["item_id"] for r in b["recommendations"]]
        np.testing.assert_allclose(
            [r["score"] for r in a["recommendations"]], [r["score"] for r in b["recommendations"]], rtol=1e-5
        )
        for s in STAGES:
            assert a["stage"]["probabilities"][s] == pytest.approx(
                b["stage"]["probabilities"][s], rel=1e-5, abs=1e-7
            )
        assert a["next_best_action"]["action"] == b["next_best_action"]["action"]
        assert a["reasons"] == b["reasons"]
