"""Depth pruning: the least influential residual blocks become identity, replayably."""

from __future__ import annotations

import json

import pytest
import torch
from tests.structured.zoo import BY_NAME, call
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.structured import block_scores, prune_depth, replay_plan
from prunekit.structured.plan import SkipBlock


class Residual(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.weight.mul_(scale)
            self.fc.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc(x)


class Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(Residual(s) for s in (0.5, 0.01, 1.0, 0.02))
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


def test_least_influential_blocks_are_skipped() -> None:
    model, x = Blocks(), torch.randn(4, 8)
    scores = block_scores(model, x)
    assert {f"layers.{i}" for i in range(4)} <= set(scores)
    result = prune_depth(model, x, remove=2)
    assert result.removed == ("layers.1", "layers.3")
    assert isinstance(result.model.layers[1], SkipBlock)
    assert isinstance(model.layers[1], Residual)  # the user's model is untouched
    fresh = Blocks()
    replay_plan(fresh, json.loads(json.dumps(result.plan)))
    fresh.load_state_dict(result.model.state_dict())
    torch.testing.assert_close(fresh(x), result.model(x))


@pytest.mark.parametrize("name", ["resnet_basic", "gpt", "llama"])
def test_zoo_blocks_can_be_skipped(name: str) -> None:
    entry = BY_NAME[name]
    model, inputs = entry.build().eval(), entry.example_inputs()
    result = prune_depth(model, inputs, remove=1)
    assert len(result.removed) == 1
    with torch.no_grad():
        assert call(result.model, inputs).shape == call(model, inputs).shape
    assert sum(p.numel() for p in result.model.parameters()) < sum(
        p.numel() for p in model.parameters())


def test_depth_errors() -> None:
    model, x = Blocks(), torch.randn(4, 8)
    with pytest.raises(ConfigError, match="remove"):
        prune_depth(model, x, remove=9)
    with pytest.raises(ConfigError, match="blocks"):
        prune_depth(model, x, remove=1, blocks=[nn.Linear(2, 2)])
    with pytest.raises(ConfigError, match="head"):
        prune_depth(model, x, remove=1, blocks=[model.head])
