"""The predictor's inference shortcuts give the training forward's answers."""

from __future__ import annotations

import pytest
import torch

from features.encoder import TOKEN_FIELDS
from features.schema import EVENT_TYPES
from predictor.model import JourneyModel, ModelConfig


def model_and_batch(
    n_layers: int, max_len: int = 30, batch: int = 48
) -> tuple[JourneyModel, dict, torch.Tensor]:
    torch.manual_seed(n_layers)
    sizes = dict.fromkeys(TOKEN_FIELDS, 20) | {"item_id": 400, "event_type": len(EVENT_TYPES) + 2}
    config = ModelConfig(token_sizes=sizes, n_items=400, n_aggregates=5, max_len=max_len, n_layers=n_layers)
    model = JourneyModel(config).eval()
    lengths = torch.randint(0, max_len + 1, (batch,))
    lengths[:3] = torch.tensor([0, 1, max_len])  # no events, one event, a full history
    real = torch.arange(max_len)[None, :] >= (max_len - lengths)[:, None]  # left-padded
    tokens = {n: torch.where(real, torch.randint(2, sizes[n], (batch, max_len)), 0) for n in TOKEN_FIELDS}
    return model, tokens, torch.rand(batch, 5) * 10


@pytest.mark.parametrize("n_layers", [1, 2])
def test_running_only_the_real_steps_gives_the_padded_forward(n_layers: int) -> None:
    model, tokens, aggregates = model_and_batch(n_layers)
    padded = model(tokens, aggregates)  # gradients on: the training path runs every padding step
    with torch.inference_mode():
        fast = model(tokens, aggregates)
    for head in ("stage", "propensity", "action", "items"):
        a, b = getattr(padded, head).detach(), getattr(fast, head)
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))
        finite = torch.isfinite(a)
        torch.testing.assert_close(b[finite], a[finite], rtol=1e-5, atol=1e-5)
    assert torch.equal(padded.items.detach().topk(10).indices, fast.items.topk(10).indices)


def test_the_padding_states_follow_the_weights() -> None:
    model, tokens, aggregates = model_and_batch(2)
    with torch.inference_mode():
        before = model(tokens, aggregates).stage
    with torch.no_grad():
        model.position.weight.mul_(2.0)  # changes what the padding steps feed the GRU
    expected = model(tokens, aggregates).stage.detach()
    with torch.inference_mode():
        after = model(tokens, aggregates).stage
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before)
