"""``F.pad`` keeps channels whole only on the dims it really pads.

Swin pads a channels-last ``(b, h, w, c)`` map to a multiple of its window with
``F.pad(x, (0, 0, 0, pad_w, 0, pad_h))``: the channel dim is listed with a zero pad, so its
channels pass through (they were kept whole, and with them every Swin block's width).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit


class _ChannelsLastPad(nn.Module):
    """Linear -> channels-last map padded on h and w (``pad`` as given) -> norm -> head."""

    def __init__(self, pad: tuple[int, ...]) -> None:
        super().__init__()
        self.pad = pad
        self.proj = nn.Linear(3, 16)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Linear(16, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)  # (b, h, w, c)
        x = F.pad(x, self.pad)
        x = self.mlp(self.norm(x)).relu()
        return self.head(x.mean(dim=(1, 2)))


def _pruned(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 5, 3)
    with torch.no_grad():
        expected = model(x).shape
    pruned = prunekit.prune(model, x, ratio=0.5, ignore=[model.head]).model
    with torch.no_grad():
        assert pruned(x).shape == expected
    return pruned


@pytest.mark.parametrize("pad", [(0, 0, 0, 1, 0, 1), (0, 0, 1, 1), (0, 0)])
def test_zero_pad_on_the_channel_dim_lets_channels_go(pad: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    pruned = _pruned(_ChannelsLastPad(pad))
    assert pruned.proj.out_features == 8
    assert pruned.norm.normalized_shape == (8,)
    assert pruned.mlp.out_features == 8


def test_nonzero_pad_on_the_channel_dim_keeps_its_channels() -> None:
    torch.manual_seed(0)

    class ChannelPad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(3, 16)
            self.head = nn.Linear(17, 4)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(F.pad(self.proj(x), (1, 0, 0, 1)))

    model = ChannelPad()
    x = torch.randn(2, 5, 3)
    pruned = prunekit.prune(model, x, ratio=0.5, ignore=[model.head]).model
    assert pruned.proj.out_features == 16
    assert pruned(x).shape == model(x).shape


def test_zero_pad_on_the_channel_dim_of_a_conv_map_lets_channels_go() -> None:
    torch.manual_seed(0)

    class ConvPad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.head = nn.Conv2d(8, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(F.pad(self.conv(x), (1, 1, 0, 2, 0, 0)))

    model = ConvPad()
    x = torch.randn(1, 3, 8, 8)
    pruned = prunekit.prune(model, x, ratio=0.5, ignore=[model.head]).model
    assert pruned.conv.out_channels == 4
    assert pruned(x).shape == model(x).shape
