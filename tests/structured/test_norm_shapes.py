"""Norm layers whose group count or shape names the channels: ``GroupNorm(C, C)`` (one
channel per group, a per-channel norm) and GCNet's ``LayerNorm([C, 1, 1])``. Both kept
their channels whole before (GroupNorm silently, LayerNorm with an unsupported-op error)."""

from __future__ import annotations

import tempfile

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError
from prunekit.structured import prune


class PerChannel(nn.Module):
    def __init__(self, groups: int = 16, affine: bool = True) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3)
        self.norm = nn.GroupNorm(groups, 16, affine=affine)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.norm(self.a(x))))


@pytest.mark.parametrize("affine", [True, False])
def test_group_norm_with_a_group_per_channel_prunes_exactly(affine: bool) -> None:
    torch.manual_seed(0)
    model, x = PerChannel(affine=affine).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    norm = result.model.norm
    assert norm.num_channels == norm.num_groups == 8 and result.model.a.out_channels == 8
    with torch.no_grad():  # per-channel: the kept channels are normalised as before
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))
    with tempfile.TemporaryDirectory() as tmp:
        pk.save(result, tmp)
        loaded = pk.load(tmp, PerChannel(affine=affine).eval())
    assert loaded.norm.num_groups == 8
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)


def test_group_norm_with_shared_groups_keeps_its_group_count() -> None:
    result = prune(PerChannel(groups=4).eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    norm = result.model.norm
    assert norm.num_groups == 4 and norm.num_channels == 8


class ContextBlock(nn.Module):
    """GCNet's global context block (mmcv ``ContextBlock``): attention pooling, then a
    bottleneck transform with ``LayerNorm([C // r, 1, 1])``, added to every position."""

    def __init__(self, c: int = 16, r: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.mask = nn.Conv2d(c, 1, 1)
        self.transform = nn.Sequential(nn.Conv2d(c, c // r, 1), nn.LayerNorm([c // r, 1, 1]),
                                       nn.ReLU(), nn.Conv2d(c // r, c, 1))
        self.head = nn.Conv2d(c, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        b, c, h, w = x.shape
        weights = self.mask(x).view(b, 1, h * w).softmax(-1).unsqueeze(-1)
        context = torch.matmul(x.view(b, c, h * w).unsqueeze(1), weights).view(b, c, 1, 1)
        return self.head(x + self.transform(context))


def test_layer_norm_over_channels_and_unit_dims_prunes() -> None:
    torch.manual_seed(0)
    model, x = ContextBlock().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    norm = result.model.transform[1]
    assert norm.normalized_shape == (2, 1, 1) and tuple(norm.weight.shape) == (2, 1, 1)
    assert result.model.transform[0].out_channels == 2
    keep = torch.tensor(result.plan["modules"]["transform.1"]["keep"]["channels"])
    torch.testing.assert_close(norm.weight, model.transform[1].weight[keep])
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape


def test_layer_norm_over_a_spatial_shape_is_still_refused() -> None:
    class Spatial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.norm, self.b = nn.Conv2d(3, 8, 1), nn.LayerNorm([8, 4, 4]), \
                nn.Conv2d(8, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.norm(self.a(x)))

    with pytest.raises(UnsupportedOpError, match="spans several dims"):
        prune(Spatial().eval(), torch.randn(2, 3, 4, 4), ratio=0.5)
