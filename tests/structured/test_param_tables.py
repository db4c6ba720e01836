"""Tensors built from parameters alone, then indexed by position (BEiT's relative-position
table: an interpolated part of the table concatenated with its last rows, then gathered):
their channel axis is known only at the trace's end, so the check of what the indexing
picks waits for it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.structured.residual import Residual
from torch import Tensor, nn

from prunekit.structured import prune


class BeitStyleAttention(nn.Module):
    """Window attention whose bias table is rebuilt in forward as HF BEiT's
    ``BeitRelativePositionBias`` does: the (2w-1)² positional rows are reshaped to a
    grid, interpolated, and concatenated with the three class-token rows."""

    def __init__(self, dim: int = 16, heads: int = 4, window: int = 3) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.window = heads, dim // heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        side = 2 * window - 1
        self.table = nn.Parameter(torch.randn(side * side + 3, heads))
        tokens = window * window
        self.register_buffer("index", torch.randint(0, side * side + 3, (tokens + 1, tokens + 1)))

    def bias(self) -> Tensor:
        side = 2 * self.window - 1
        grid = self.table[: side * side].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bilinear", align_corners=False)
        rows = grid.permute(0, 2, 3, 1).reshape(side * side, -1)
        table = torch.cat([rows, self.table[side * side:]])
        n = self.index.shape[0]
        return table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = q @ k.transpose(-2, -1) / 2.0 + self.bias().unsqueeze(0)
        y = scores.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))


def test_rebuilt_bias_table_loses_the_pruned_heads_columns() -> None:
    torch.manual_seed(0)
    model, x = BeitStyleAttention().eval(), torch.randn(2, 10, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    assert pruned.num_heads == 2 and pruned.head_dim == 4
    assert pruned.table.shape == (28, 2)
    assert pruned.qkv.out_features == 3 * 2 * 4
    assert "table" in result.coverage.prunable

    # the same heads zeroed in the dense model: their outputs no longer reach proj
    kept = [c // 4 for c in result.plan["modules"]["proj"]["keep"]["in"][::4]]
    drop = [h for h in range(4) if h not in kept]
    zeroed = BeitStyleAttention().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        for h in drop:
            zeroed.proj.weight[:, 4 * h:4 * h + 4] = 0
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(pruned.table, model.table[:, kept])


class SlicedScale(nn.Module):
    """A scale vector computed from a parameter, then sliced along its channels."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gamma * 2.0
        return self.out(self.lin(x) * scale) + scale[:3]


def test_channels_a_computed_parameter_slice_names_stay_whole() -> None:
    torch.manual_seed(0)
    model, x = SlicedScale().eval(), torch.randn(4, 6)
    result = prune(model, x, ratio=0.5)
    assert result.model.lin.out_features == 8
    reasons = " ".join(result.coverage.fixed.values())
    assert "selects a fixed part of a channel dimension" in reasons


class SwinV2Attention(nn.Module):
    """torchvision's Swin V2 attention path: the k third of a copy of the fused bias is
    zeroed, its bounds computed from the copy's own ``numel()``; cosine attention."""

    def __init__(self, dim: int = 16, heads: int = 2, bounds: str = "numel") -> None:
        super().__init__()
        self.num_heads, self.bounds = heads, bounds
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(heads, 1, 1)))

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        bias = self.qkv.bias.clone()
        length = bias.numel() // 3
        if self.bounds == "numel":
            bias[length: 2 * length].zero_()
        else:  # a fixed count after the first third: names channels
            bias[length: length + 2].zero_()
        qkv = F.linear(x, self.qkv.weight, bias)
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=4.6).exp()
        y = attn.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, n, c))


def SwinV2Net(bounds: str = "numel") -> Residual:
    return Residual("attn", SwinV2Attention(bounds=bounds), 5, 16, 2)


def test_a_bias_third_sliced_by_its_own_numel_shrinks_with_the_heads() -> None:
    torch.manual_seed(0)
    model, x = SwinV2Net().eval(), torch.randn(2, 6, 5)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    width = pruned.embed.out_features
    assert width == 8 and pruned.attn.num_heads == 2  # C // heads: every head shrinks alike
    assert pruned.attn.qkv.out_features == 3 * width
    kept = result.plan["modules"]["embed"]["keep"]["out"]
    rows = result.plan["params"]["attn.qkv.weight"]["keep"]["0"]  # (read by F.linear)
    assert rows == [p * 16 + c for p in range(3) for c in kept]  # the same channels in q, k, v

    zeroed = SwinV2Net().eval()  # the removed channels zeroed wherever they are made
    zeroed.load_state_dict(model.state_dict())
    drop = [c for c in range(16) if c not in kept]
    with torch.no_grad():
        zeroed.embed.weight[drop] = 0
        zeroed.embed.bias[drop] = 0
        for part in range(3):
            zeroed.attn.qkv.weight[[part * 16 + c for c in drop]] = 0
            zeroed.attn.qkv.bias[[part * 16 + c for c in drop]] = 0
        zeroed.attn.proj.weight[drop] = 0
        zeroed.attn.proj.bias[drop] = 0
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_a_bias_slice_of_a_fixed_count_keeps_its_channels() -> None:
    torch.manual_seed(0)
    model, x = SwinV2Net("fixed").eval(), torch.randn(2, 6, 5)
    result = prune(model, x, ratio=0.5)
    assert result.model.attn.qkv.out_features == 48
    assert "selects a fixed part of a channel dimension" in " ".join(
        result.coverage.fixed.values())
