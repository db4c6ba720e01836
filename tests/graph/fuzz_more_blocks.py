"""More trace-fuzz blocks: unsqueeze, in-place and view-writing ops, reductions, broadcast
parameters, pooling, and token blocks (linear, MLP, attention with head splits)."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from tests.graph.fuzz_blocks import ACTS, Shape, _act, _Block, _conv, _width
from torch import Tensor, nn


class _Unsqueeze(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        self.conv = _conv(rng, shape[0])
        self.shape = (self.conv.out_channels, *shape[1:])
        self.variant = rng.choice(["unsq_sq", "none_index", "unsqueeze_", "unsqueeze_sq_",
                                   "last_mean"])

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.variant == "unsq_sq":
            return y.unsqueeze(2).squeeze(2)
        if self.variant == "none_index":
            return y[:, None].squeeze(1)
        if self.variant == "last_mean":
            return y.unsqueeze(-1).mean(-1)
        y.unsqueeze_(2)
        if self.variant == "unsqueeze_sq_":
            return y.squeeze_(2)
        return y.squeeze(2)


class _InPlace(_Block):
    """In-place ops on a fresh conv output."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[0]
        self.variant = rng.choice(["add_x", "mul_param", "relu_", "imul_scalar", "sigmoid_",
                                   "add_bias"])
        self.conv = _conv(rng, c, c if self.variant == "add_x" else None)
        out = self.conv.out_channels
        self.gamma = nn.Parameter(torch.rand(1, out, 1, 1) + 0.5)
        self.shape = (out, *shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.variant == "add_x":
            y.add_(x)
        elif self.variant == "mul_param":
            y.mul_(self.gamma)
        elif self.variant == "relu_":
            y.relu_()
        elif self.variant == "imul_scalar":
            y *= 0.5
        elif self.variant == "sigmoid_":
            torch.sigmoid_(y)
        else:
            y += self.gamma
        return y


class _Mutate(_Block):
    """Writes into views and in-place reshapes of a fresh conv output: setitem, in-place
    ops through a slice/transpose/view, transpose_, masked_fill, where, clamp, pad."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["set_channels", "set_rows", "slice_add_", "view_mul_",
                                   "transpose_", "masked_fill", "where", "clamp", "pad",
                                   "set_from_other"])
        self.conv = _conv(rng, c, c)
        self.k = rng.randint(1, c - 1)
        self.scale = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)
        self.shape = (c, h + 2, w + 2) if self.variant == "pad" else shape

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.variant == "set_channels":
            y[:, : self.k] = 0.0
        elif self.variant == "set_rows":
            y[:, :, :1] = y[:, :, -1:]
        elif self.variant == "slice_add_":
            y[:, self.k:].add_(x[:, self.k:])
        elif self.variant == "view_mul_":
            y.view(y.shape[0], y.shape[1], -1).mul_(self.scale.view(1, -1, 1))
        elif self.variant == "transpose_":
            y.transpose_(1, 3)
            y = F.relu(y).transpose(1, 3)
        elif self.variant == "masked_fill":
            y = y.masked_fill(x > 0, 0.0)
        elif self.variant == "where":
            y = torch.where(y > 0, y, x)
        elif self.variant == "clamp":
            y = y.clamp(min=-1.0, max=1.0) * self.scale
        elif self.variant == "pad":
            y = F.pad(y, (1, 1, 1, 1))
        else:
            y[:, : self.k] = x[:, -self.k:]
        return y


class _Reduce(_Block):
    """Reductions and stacks written with negative dims, a channel-reduced gate, softmax
    over channels, an expanded SE gate, batch-channel flatten, repeat and interpolate."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["center", "row_mean", "channel_gate", "softmax_c",
                                   "amax_c", "stack", "flatten_batch", "se_expand",
                                   "repeat", "interpolate"])
        self.conv = _conv(rng, c, c)
        self.shape = {"repeat": (c, 2 * h, w), "interpolate": (c, 2 * h, 2 * w)}.get(
            self.variant, shape)

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and max(shape[1:]) <= 8

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        if self.variant == "center":
            return x - x.mean((-2, -1), keepdim=True)
        if self.variant == "row_mean":
            return x * x.mean(-1, keepdim=True)
        if self.variant == "channel_gate":
            return x * torch.sigmoid(x.sum(-3, keepdim=True))
        if self.variant == "softmax_c":
            return torch.softmax(x, dim=-3)
        if self.variant == "amax_c":
            return x - x.amax(dim=1, keepdim=True)
        if self.variant == "stack":
            return torch.stack([x, self.conv(x)], dim=-1).sum(-1)
        if self.variant == "flatten_batch":
            return F.relu(x.flatten(0, 1)).view(b, c, h, w)
        if self.variant == "se_expand":
            return x * torch.sigmoid(x.mean((2, 3)))[..., None, None].expand(-1, -1, h, w)
        if self.variant == "repeat":
            return x.repeat(1, 1, 2, 1)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")


class _Broadcast(_Block):
    """Layer scale (1,C,1,1), a (1,1,H,W) gate, a scalar, a (1,C,H,W) positional term."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["scale", "gate", "scalar", "scalar_param", "pos",
                                   "expand_as", "channel_vector"])
        self.scale = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)
        self.gate = nn.Parameter(torch.rand(1, 1, h, w))
        self.scalar = nn.Parameter(torch.tensor(1.5))
        self.pos = nn.Parameter(torch.randn(1, c, h, w))

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "scale":
            return x * self.scale
        if self.variant == "gate":
            return torch.sigmoid(self.gate) * x
        if self.variant == "scalar":
            return x * 0.5 + 1.0
        if self.variant == "scalar_param":
            return x * self.scalar
        if self.variant == "pos":
            return x + self.pos
        if self.variant == "expand_as":
            return x * self.scale.expand_as(x)
        return x * self.scale.view(-1)[:, None, None]


class _Pool(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["max", "avg", "adaptive"])
        self.shape = (c, h // 2, w // 2)

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and min(shape[1:]) >= 4

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "max":
            return F.max_pool2d(x, 2)
        if self.variant == "avg":
            return F.avg_pool2d(x, 2)
        return F.adaptive_avg_pool2d(x, self.shape[1:])


class _ToTokens(_Block):
    """(B, C, H, W) -> (B, H*W, C)."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["flatten_transpose", "permute_reshape"])
        self.shape = (h * w, c)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "flatten_transpose":
            return x.flatten(2).transpose(1, 2)
        return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1])


class _TokenLinear(_Block):
    images = False

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        self.linear = nn.Linear(shape[1], _width(rng), bias=rng.random() < 0.7)
        self.norm = nn.LayerNorm(self.linear.out_features) if rng.random() < 0.5 else None
        self.act = rng.choice((None, *ACTS))
        self.shape = (shape[0], self.linear.out_features)
        self.variant = f"norm={self.norm is not None} act={self.act}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x)
        x = x if self.norm is None else self.norm(x)
        return x if self.act is None else _act(self.act, x)


class _TokenMlp(_Block):
    """Pre-norm MLP residual with an optional layer scale."""

    images = False

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[1]
        self.norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, _width(rng))
        self.fc2 = nn.Linear(self.fc1.out_features, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5) if rng.random() < 0.5 else None
        self.variant = f"scale={self.gamma is not None}"

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc2(F.gelu(self.fc1(self.norm(x))))
        return x + (y if self.gamma is None else self.gamma * y)


class _Attention(_Block):
    """q @ k^T softmax @ v with heads split by view(B, T, H, D).transpose(1, 2)."""

    images = False

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[1]
        self.heads, self.dim = rng.choice([1, 2, 4]), rng.choice([2, 4])
        inner = self.heads * self.dim
        self.fused = rng.random() < 0.5
        self.qkv = nn.Linear(c, 3 * inner)
        self.q, self.k, self.v = nn.Linear(c, inner), nn.Linear(c, inner), nn.Linear(c, inner)
        self.proj = nn.Linear(inner, c)
        self.residual = rng.random() < 0.7
        self.variant = f"heads={self.heads} dim={self.dim} fused={self.fused}"

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        if self.fused:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q, k, v = (z.view(b, t, self.heads, self.dim).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax((q @ k.transpose(-2, -1)) * self.dim ** -0.5, dim=-1)
        y = self.proj((att @ v).transpose(1, 2).reshape(b, t, -1))
        return x + y if self.residual else y


class _TokenMisc(_Block):
    """Token-model odds and ends: positional term, class token, token slices, token-mixing
    Linear, channel split/cat, layer scale."""

    images = False

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        t, c = shape
        self.variant = rng.choice(["pos", "cls", "drop_first", "half_channels", "mix",
                                   "split_swap", "scale"])
        if self.variant == "drop_first" and t < 2:
            self.variant = "pos"
        self.pos = nn.Parameter(torch.randn(1, t, c))
        self.cls = nn.Parameter(torch.randn(1, 1, c))
        self.mix = nn.Linear(t, t)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.k = rng.randint(1, c - 1)
        self.shape = {"cls": (t + 1, c), "drop_first": (t - 1, c),
                      "half_channels": (t, -(-c // 2))}.get(self.variant, shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "pos":
            return x + self.pos
        if self.variant == "cls":
            return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        if self.variant == "drop_first":
            return x[:, 1:]
        if self.variant == "half_channels":
            return x[..., ::2]
        if self.variant == "mix":
            return x + self.mix(x.transpose(1, 2)).transpose(1, 2)
        if self.variant == "split_swap":
            a, b = x.split([self.k, x.shape[-1] - self.k], dim=-1)
            return torch.cat([b, a], dim=2)
        return x * self.gamma


