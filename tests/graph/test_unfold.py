"""Sliding windows: ``Tensor.unfold`` over spatial or time dims keeps the channels where
they are (halo attention, framing a signal), ``F.unfold`` turns each channel into a block
of kernel-position rows, and windows over a channel dim are refused (strict) or kept whole.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _complement as _removed
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError


class _HaloAttention(nn.Module):
    """Single-head halo attention (as in HaloNet): each ``block``² block of queries attends
    to a ``block + 2·halo`` window of keys/values cut out by two spatial unfolds."""

    def __init__(self, channels: int, block: int = 4, halo: int = 1) -> None:
        super().__init__()
        self.block, self.halo = block, halo
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        bs, win = self.block, self.block + 2 * self.halo
        nh, nw = h // bs, w // bs
        q = self.q(x).reshape(b, -1, nh, bs, nw, bs).permute(0, 2, 4, 3, 5, 1)
        q = q.reshape(b, nh * nw, bs * bs, -1)
        kv = F.pad(self.kv(x), [self.halo] * 4)
        kv = kv.unfold(2, win, bs).unfold(3, win, bs)  # [B, 2C, nh, nw, win, win]
        kv = kv.permute(0, 2, 3, 4, 5, 1).reshape(b, nh * nw, win * win, -1)
        k, v = kv.chunk(2, dim=-1)
        attn = (q @ k.transpose(-1, -2) * 0.5).softmax(-1)
        out = (attn @ v).reshape(b, nh, nw, bs, bs, -1).permute(0, 5, 1, 3, 2, 4)
        return self.proj(out.reshape(b, -1, h, w))


class _HaloNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.attn = _HaloAttention(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.stem(x))
        y = y + self.attn(y)
        return self.head(y.mean((2, 3)))


class _Frames(nn.Module):
    """Two filter banks over a 1-D signal, stacked, then cut into overlapping frames (labels
    that vary along two dims: the replay path)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.low = nn.Conv1d(2, 8, 3, padding=1)
        self.high = nn.Conv1d(2, 8, 5, padding=2)
        self.mix = nn.Conv1d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.stack([F.relu(self.low(x)), F.relu(self.high(x))], 1)  # [B, 2, C, T]
        frames = y.unfold(3, 6, 2)  # [B, 2, C, 8, 6]
        return self.mix(frames.amax(-1).flatten(1, 2))


class _Im2col(nn.Module):
    """A conv written as ``F.unfold`` then a Linear over the patch rows ``c·9 + p``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.patch = nn.Linear(8 * 9, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        cols = F.unfold(F.relu(self.stem(x)), 3, padding=1).transpose(1, 2)  # [B, L, C·9]
        return self.head(F.relu(self.patch(cols)).mean(1))


class _ChannelWindows(nn.Module):
    """Windows slid along the channel dim (pairs of channels averaged)."""

    def __init__(self, functional: bool = False) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.functional = functional
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.c2(F.relu(self.c1(x))))
        if self.functional:  # channels moved into a spatial dim that F.unfold gathers
            y = F.unfold(y.transpose(1, 2), (2, 1), stride=(2, 1)).mean(-1)[:, :4]
        else:
            y = y.unfold(1, 2, 2).mean((-1, -2, -3))
        return self.head(y)


def _zero_removed_outputs(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` whose layers output zeros for the removed channels (weight rows
    and bias). Equals pruning where every op between a producer and its consumers keeps a
    zero channel zero (ReLU, padding, attention over positions: no norm layers)."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, entry in plan["modules"].items():
            keep = entry["keep"].get("out")
            if keep is not None:
                module = zeroed.get_submodule(name)
                removed = _removed(keep, module.weight.shape[0])
                module.weight[removed] = 0
                module.bias[removed] = 0
    return zeroed


def test_halo_attention_windows_keep_their_channels(tmp_path: Path) -> None:
    model, x = _HaloNet().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 5)
    assert result.params_kept < 0.5
    assert pruned.attn.kv.out_channels == 8 and pruned.attn.q.out_channels == 4
    # k's channels follow q's (their product), v's the output projection's input
    kv = result.plan["modules"]["attn.kv"]["keep"]["out"]
    assert kv[:4] == result.plan["modules"]["attn.q"]["keep"]["out"]
    assert [c - 8 for c in kv[4:]] == result.plan["modules"]["attn.proj"]["keep"]["in"]
    zeroed = _zero_removed_outputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))
    pk.save(result, tmp_path / "out")
    reloaded = pk.load(tmp_path / "out", _HaloNet().eval())
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_frames_of_a_signal_keep_their_channels() -> None:
    model, x = _Frames().eval(), torch.randn(2, 2, 20)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=2)
    low = result.plan["modules"]["low"]["keep"]["out"]
    high = result.plan["modules"]["high"]["keep"]["out"]
    assert result.plan["modules"]["mix"]["keep"]["in"] == low + [c + 8 for c in high]
    assert result.model.mix.in_channels == 8
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_im2col_rows_leave_with_their_channel() -> None:
    model, x = _Im2col().eval(), torch.randn(2, 3, 6, 6)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=3)
    keep = result.plan["modules"]["stem"]["keep"]["out"]
    rows = [c * 9 + p for c in keep for p in range(9)]
    assert result.plan["modules"]["patch"]["keep"]["in"] == rows
    assert result.model.patch.in_features == 4 * 9
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))


@pytest.mark.parametrize("functional", [False, True])
def test_windows_along_channels_are_refused_or_kept_whole(functional: bool) -> None:
    model, x = _ChannelWindows(functional).eval(), torch.randn(2, 3, 6, 6)
    with pytest.raises(UnsupportedOpError, match="unfold cannot be mapped"):
        pk.prune(model, x, ratio=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, x, ratio=0.5, strict=False)
    assert any("unfold" in str(w.message) for w in caught)
    assert "c2" not in result.plan["modules"] or "out" not in result.plan["modules"]["c2"]["keep"]
    assert result.model.c1.out_channels == 4  # the rest is still pruned
    with torch.no_grad():
        assert result.model(x).shape == (2, 5)


class _Outlook(nn.Module):
    """VOLO's outlook aggregation, reduced: a 1x1 conv's output unfolded into 3x3 windows
    (rows ``c·9 + p``), each window weighted, then folded back (``F.fold`` sums the rows of
    channel ``c`` into output channel ``c``)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.v = nn.Conv2d(8, 8, 1)
        self.weights = nn.Parameter(torch.rand(1, 1, 9, 1) + 0.5)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        v = F.unfold(self.v(F.relu(self.stem(x))), 3, padding=1)  # [B, C·9, H·W]
        v = (v.reshape(b, -1, 9, h * w) * self.weights).reshape(b, -1, h * w)
        return self.head(F.fold(v, (h, w), 3, padding=1))


def test_fold_sums_each_channels_rows_back_into_it() -> None:
    model, x = _Outlook().eval(), torch.randn(2, 3, 5, 5)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=4)
    assert result.model.v.out_channels == 4 and result.model.head.in_channels == 4
    keep = result.plan["modules"]["v"]["keep"]["out"]
    assert result.plan["modules"]["head"]["keep"]["in"] == keep
    zeroed = _zero_removed_outputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))
