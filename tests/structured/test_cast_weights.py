"""A parameter read through a dtype cast is still a layer weight: DeepSeek-V3's router runs
``F.linear(x.type(torch.float32), self.weight.type(torch.float32))``, a no-op on a float32
model (the same tensor back) and a new tensor on a bfloat16 one. Before, the cast labelled
the weight element by element, so it was "used both as a layer weight and elementwise" and
the residual it reads was kept whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import prune


class Router(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.weight = nn.Parameter(torch.randn(4, 8))  # 4 experts' scores from 8 channels
        self.head = nn.Linear(8, 2)
        self.mix = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        scores = F.linear(h.type(torch.float32), self.weight.type(torch.float32))
        return self.head(h) + self.mix(scores.softmax(-1).to(h.dtype))


def test_a_weight_cast_to_its_own_dtype_is_the_layer_weight() -> None:
    torch.manual_seed(0)
    model, x = Router().eval(), torch.randn(3, 5)
    result = prune(model, x, ratios={"embed": 0.5}, importance="random", seed=2)
    assert result.model.embed.out_features == 4
    assert result.model.weight.shape == (4, 4)  # its input axis follows embed's channels
    keep = result.plan["modules"]["embed"]["keep"]["out"]
    zeroed = Router().eval()
    zeroed.load_state_dict(model.state_dict())
    drop = [c for c in range(8) if c not in keep]
    with torch.no_grad():
        zeroed.embed.weight[drop] = 0
        zeroed.embed.bias[drop] = 0
        torch.testing.assert_close(result.model(x), zeroed(x))
        torch.testing.assert_close(result.model.weight, model.weight[:, keep])


def test_a_bfloat16_weight_cast_to_float32_is_the_layer_weight() -> None:
    torch.manual_seed(0)
    model, x = Router().to(torch.bfloat16).eval(), torch.randn(3, 5, dtype=torch.bfloat16)
    result = prune(model, x, ratios={"embed": 0.5})
    assert result.model.weight.shape == (4, 4) and result.model.weight.dtype == torch.bfloat16
    with torch.no_grad():
        assert result.model(x).shape == (3, 2)


class Cast(nn.Module):
    """A cast weight also read elementwise: both uses must agree, so it stays whole."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 8)
        self.weight = nn.Parameter(torch.randn(4, 8))

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.float()
        return F.linear(self.embed(x), w) + w[:, :1].T


def test_a_cast_weight_read_elementwise_too_is_labelled_then() -> None:
    torch.manual_seed(0)
    model, x = Cast().eval(), torch.randn(3, 5)
    with pytest.warns(UserWarning, match="removed nothing"):
        result = prune(model, x, ratio=0.5)
    assert result.model.weight.shape == (4, 8)
