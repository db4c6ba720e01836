"""Seeded random networks: the fast-path trace equals the general path, and prune is clean.

Each seed draws a recipe of building blocks (convs of every grouping, norms, gates,
residuals, cats, splits, shuffles, permutes, views, slices, in-place ops, broadcast
parameters, token blocks with attention) whose shapes are valid by construction, and
checks that (a) switching the vector-form fast paths off changes nothing in the trace and
(b) ``prune(model, x, ratio=0.5)`` either raises a prunekit error or returns a model whose
forward runs with the same output shapes. A failing seed is rebuilt by ``_build(seed)``;
``_RandomNet.recipe`` names its blocks. About one seed in eight used to raise
PruneValidationError (the pruned model's own check); the minimised causes are the
regressions at the end. Now 999 of seeds 0-999 prune (seed 12, a group sum over a cat of a
depthwise output with itself, still fails that check, loudly and with the model untouched).
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from tests.graph.test_trace_fast_paths import _general_only, _summary, count_vector_hits
from torch import Tensor, nn

import prunekit
from prunekit.errors import PrunekitError
from prunekit.graph.labels import varies
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter

Shape = tuple[int, ...]  # (C, H, W) for images, (T, C) for tokens; batch is always 2
SEEDS = range(300)
SLOW_SEEDS = range(300, 2300)


def _width(rng: random.Random, low: int = 4, high: int = 16) -> int:
    return rng.randint(low, high)


def _divisors(n: int) -> list[int]:
    """Divisors of ``n`` strictly between 1 and ``n``."""
    return [d for d in range(2, n) if n % d == 0]


def _act(name: str, x: Tensor) -> Tensor:
    if name == "relu":
        return F.relu(x)
    if name == "gelu":
        return F.gelu(x)
    if name == "silu":
        return x * torch.sigmoid(x)
    return torch.sigmoid(x)


ACTS = ("relu", "gelu", "silu", "sigmoid")


class _Block(nn.Module):
    """One step of a recipe: ``shape`` is what it hands on; ``variant`` names its choice."""

    images = True  # takes (B, C, H, W); False: takes tokens (B, T, C)

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__()
        self.shape = shape
        self.variant = ""

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return (len(shape) == 3) == cls.images

    def extra_repr(self) -> str:
        return self.variant


def _conv(rng: random.Random, c: int, out: int | None = None, k: int | None = None) -> nn.Conv2d:
    """A random Conv2d from ``c`` channels: plain, depthwise or grouped (``out`` forces the
    width and then only groups dividing both are drawn)."""
    k = rng.choice([1, 3]) if k is None else k
    kind = rng.choice(["plain", "depthwise", "grouped"]) if c > 1 else "plain"
    groups = 1
    if out is None:
        if kind == "depthwise":
            groups, out = c, c * (2 if 2 * c <= 16 and rng.random() < 0.3 else 1)
        elif kind == "grouped" and _divisors(c):
            groups = rng.choice(_divisors(c))
            out = groups * rng.randint(max(1, -(-4 // groups)), max(1, 16 // groups))
        else:
            out = _width(rng)
    elif kind != "plain":
        common = [d for d in _divisors(c) if out % d == 0] + ([c] if out % c == 0 else [])
        groups = rng.choice(common) if common else 1
    return nn.Conv2d(c, out, k, padding=k // 2, groups=groups, bias=rng.random() < 0.5)


class _Conv(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        self.conv = _conv(rng, shape[0])
        self.act = rng.choice((None, *ACTS))
        self.shape = (self.conv.out_channels, *shape[1:])
        self.variant = f"groups={self.conv.groups} act={self.act}"

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.act is None else _act(self.act, x)


class _Norm(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[0]
        self.variant = rng.choice(["bn", "gn", "ln_last", "ln_last_contig"])
        if self.variant == "bn":
            self.norm: nn.Module = nn.BatchNorm2d(c)
        elif self.variant == "gn":
            self.norm = nn.GroupNorm(rng.choice([1, c, *_divisors(c)]), c)
        else:
            self.norm = nn.LayerNorm(c)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant in ("bn", "gn"):
            return self.norm(x)
        y = x.permute(0, 2, 3, 1)
        if self.variant == "ln_last_contig":
            y = y.contiguous()
        return self.norm(y).permute(0, 3, 1, 2)


class _SqueezeExcite(_Block):
    """mean over HW -> linear/conv -> ReLU -> linear/conv -> sigmoid -> multiply."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, r = shape[0], rng.randint(2, 8)
        self.variant = rng.choice(["conv", "linear_none", "linear_view", "pool_conv"])
        if self.variant.endswith("conv"):
            self.fc1: nn.Module = nn.Conv2d(c, r, 1)
            self.fc2: nn.Module = nn.Conv2d(r, c, 1)
        else:
            self.fc1, self.fc2 = nn.Linear(c, r), nn.Linear(r, c)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "conv":
            s = x.mean((2, 3), keepdim=True)
        elif self.variant == "pool_conv":
            s = F.adaptive_avg_pool2d(x, 1)
        else:
            s = x.mean((2, 3))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        if self.variant == "linear_none":
            s = s[:, :, None, None]
        elif self.variant == "linear_view":
            s = s.view(x.shape[0], -1, 1, 1)
        return x * s


class _Residual(_Block):
    """A conv branch combined with an identity or 1x1 projection by add/sub/mul (or +=)."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[0]
        self.branch = nn.Sequential(_conv(rng, c), nn.BatchNorm2d(1), nn.ReLU())
        out = self.branch[0].out_channels
        self.branch[1] = nn.BatchNorm2d(out)
        identity = out == c and rng.random() < 0.6
        self.proj = nn.Identity() if identity else _conv(rng, c, out, k=1)
        self.op = rng.choice(["add", "sub", "mul", "iadd", "add_"])
        self.shape = (out, *shape[1:])
        self.variant = f"{self.op} identity={identity}"

    def forward(self, x: Tensor) -> Tensor:
        y, s = self.branch(x), self.proj(x)
        if self.op == "add":
            return y + s
        if self.op == "sub":
            return s - y
        if self.op == "mul":
            return y * s
        if self.op == "iadd":
            y += s
            return y
        return y.add_(s)


class _CatChannels(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[0]
        self.variant = rng.choice(["x_conv", "conv_x", "conv_conv", "x_x"])
        self.a = _conv(rng, c, rng.randint(2, 8))
        self.b = _conv(rng, c, rng.randint(2, 8))
        widths = {"x_conv": c + self.b.out_channels, "conv_x": self.a.out_channels + c,
                  "conv_conv": self.a.out_channels + self.b.out_channels, "x_x": 2 * c}
        self.shape = (widths[self.variant], *shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "x_conv":
            return torch.cat([x, self.b(x)], dim=1)
        if self.variant == "conv_x":
            return torch.cat((self.a(x), x), 1)
        if self.variant == "conv_conv":
            return torch.cat([self.a(x), self.b(x)], dim=-3)
        return torch.cat([x, x], dim=1)


class _CatOther(_Block):
    """cat along H, W or the batch (the batch halves are added back together)."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.conv = _conv(rng, c, c)
        self.variant = rng.choice(["h", "w", "h_row", "batch"])
        self.shape = {"h": (c, 2 * h, w), "w": (c, h, 2 * w), "h_row": (c, h + 1, w),
                      "batch": shape}[self.variant]

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and max(shape[1:]) <= 8

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "h":
            return torch.cat([x, self.conv(x)], dim=2)
        if self.variant == "w":
            return torch.cat([self.conv(x), x], dim=-1)
        if self.variant == "h_row":
            return torch.cat([x[:, :, :1], x], dim=2)
        first, second = torch.cat([x, x * 2], dim=0).chunk(2, dim=0)
        return self.conv(first) + second


class _SplitChannels(_Block):
    """split/chunk along channels (uneven too), recombined by a reordered cat, a conv per
    piece, a glu-like product or keeping one piece."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c = shape[0]
        self.how = rng.choice(["split_sizes", "split_int", "chunk", "unbind_like"])
        self.then = rng.choice(["swap", "conv_each", "product", "first", "last"])
        k = rng.randint(1, c - 1)
        sizes = {"split_sizes": [k, c - k], "split_int": [min(rng.randint(1, c - 1), c)],
                 "chunk": [rng.randint(2, min(4, c))], "unbind_like": [c // 2, c - c // 2]}
        self.arg = sizes[self.how]
        pieces = self._widths(c)
        if self.then == "product" and len(set(pieces)) != 1:
            self.then = "swap"
        self.convs = nn.ModuleList(_conv(rng, p, rng.randint(2, 6), k=1) for p in pieces)
        if self.then == "swap":
            out = c
        elif self.then == "conv_each":
            out = sum(conv.out_channels for conv in self.convs)
        elif self.then == "product":
            out = pieces[0]
        else:
            out = pieces[0] if self.then == "first" else pieces[-1]
        self.shape = (out, *shape[1:])
        self.variant = f"{self.how}{self.arg} {self.then}"

    def _widths(self, c: int) -> list[int]:
        return [t.shape[1] for t in self._pieces(torch.zeros(1, c, 1, 1))]

    def _pieces(self, x: Tensor) -> list[Tensor]:
        if self.how in ("split_sizes", "unbind_like"):
            return list(torch.split(x, self.arg, dim=1))
        if self.how == "split_int":
            return list(x.split(self.arg[0], 1))
        return list(x.chunk(self.arg[0], dim=1))

    def forward(self, x: Tensor) -> Tensor:
        pieces = self._pieces(x)
        if self.then == "swap":
            return torch.cat(pieces[::-1], dim=1)
        if self.then == "conv_each":
            return torch.cat([conv(p) for conv, p in zip(self.convs, pieces, strict=True)], 1)
        if self.then == "product":
            out = pieces[0]
            for p in pieces[1:]:
                out = out * torch.sigmoid(p)
            return out
        return pieces[0] if self.then == "first" else pieces[-1]


class _SplitSpatial(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.dim = rng.choice([2, 3])
        size = shape[self.dim - 1]
        self.then = rng.choice(["swap", "add", "first"] if size % 2 == 0 else ["swap", "first"])
        half = -(-size // 2)
        if self.then == "swap":
            self.shape = shape
        else:
            self.shape = (c, half, w) if self.dim == 2 else (c, h, half)
        self.variant = f"dim={self.dim} {self.then}"

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and min(shape[1:]) >= 2

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=self.dim)
        if self.then == "swap":
            return torch.cat([b, a], dim=self.dim)
        return a + b if self.then == "add" else a


class _Shuffle(_Block):
    """Channel shuffle: view (B, g, C/g, H, W), transpose, back to (B, C, H, W)."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        self.groups = rng.choice(_divisors(shape[0]))
        self.variant = f"g={self.groups} " + rng.choice(["reshape", "contig_view", "flatten"])

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and bool(_divisors(shape[0]))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2)
        if self.variant.endswith("reshape"):
            return y.reshape(b, c, h, w)
        if self.variant.endswith("contig_view"):
            return y.contiguous().view(b, -1, h, w)
        return y.flatten(1, 2)


class _Permute(_Block):
    """Permute/transpose round trips, some with a channels-last op in between."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.variant = rng.choice(["last_scale", "last_linear", "transpose13", "swap_hw",
                                   "mT", "transpose_neg"])
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.linear = nn.Linear(c, c)
        if self.variant in ("swap_hw", "mT"):
            self.shape = (c, w, h)

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "last_scale":
            return (x.permute(0, 2, 3, 1) * self.gamma).permute(0, 3, 1, 2)
        if self.variant == "last_linear":
            return self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        if self.variant == "transpose13":
            return F.relu(x.transpose(1, 3)).transpose(1, 3)
        if self.variant == "swap_hw":
            return x.permute(0, 1, 3, 2)
        if self.variant == "mT":
            return x.mT
        return x.transpose(-1, -3).transpose(1, -1)


class _GroupView(_Block):
    """view (B, g, C/g, H, W), an op on the 5-D tensor, and back."""

    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.groups = rng.choice(_divisors(c))
        self.variant = rng.choice(["scale_groups", "scale_within", "softmax", "sum_groups",
                                   "identity"])
        self.by_group = nn.Parameter(torch.rand(1, self.groups, 1, 1, 1) + 0.5)
        self.within = nn.Parameter(torch.rand(1, 1, c // self.groups, 1, 1) + 0.5)
        if self.variant == "sum_groups":
            self.shape = (c // self.groups, h, w)

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and bool(_divisors(shape[0]))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = x.view(b, self.groups, c // self.groups, h, w)
        if self.variant == "scale_groups":
            y = y * self.by_group
        elif self.variant == "scale_within":
            y = y * self.within
        elif self.variant == "softmax":
            y = torch.softmax(y, dim=1)
        elif self.variant == "sum_groups":
            return y.sum(1)
        return y.reshape(b, -1, h, w)


class _Slice(_Block):
    def __init__(self, rng: random.Random, shape: Shape) -> None:
        super().__init__(rng, shape)
        c, h, w = shape
        self.k = rng.randint(1, c - 1)
        self.variant = rng.choice(["head", "step2", "tail", "narrow", "rows"])
        widths = {"head": self.k, "step2": -(-c // 2), "tail": c - self.k, "narrow": self.k,
                  "rows": c}
        self.shape = (widths[self.variant], h - 1 if self.variant == "rows" else h, w)

    @classmethod
    def fits(cls, shape: Shape) -> bool:
        return len(shape) == 3 and shape[1] >= 2

    def forward(self, x: Tensor) -> Tensor:
        if self.variant == "head":
            return x[:, : self.k]
        if self.variant == "step2":
            return x[:, ::2]
        if self.variant == "tail":
            return x[:, self.k:]
        if self.variant == "narrow":
            return x.narrow(1, 0, self.k)
        return x[:, :, 1:]


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


BLOCKS: tuple[type[_Block], ...] = (
    _Conv, _Norm, _SqueezeExcite, _Residual, _CatChannels, _CatOther, _SplitChannels,
    _SplitSpatial, _Shuffle, _Permute, _GroupView, _Slice, _Unsqueeze, _InPlace, _Broadcast,
    _Pool, _Mutate, _Reduce, _ToTokens, _TokenLinear, _TokenMlp, _Attention, _TokenMisc,
)


class _RandomNet(nn.Module):
    """A stem, a seeded random recipe of blocks and a head; ``recipe`` names the blocks."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        rng = random.Random(seed)
        self.tokens_in = rng.random() < 0.25
        if self.tokens_in:
            self.in_shape: Shape = (rng.randint(4, 8), 8)
            self.stem: nn.Module = nn.Linear(8, _width(rng))
            shape: Shape = (self.in_shape[0], self.stem.out_features)
        else:
            self.in_shape = (3, rng.randint(4, 8), rng.randint(4, 8))
            self.stem = nn.Conv2d(3, _width(rng), 3, padding=1)
            shape = (self.stem.out_channels, *self.in_shape[1:])
        blocks = []
        for _ in range(rng.randint(2, 6)):
            kind = rng.choice([b for b in BLOCKS if b.fits(shape) and not (
                b is _ToTokens and shape[1] * shape[2] > 36)])
            blocks.append(kind(rng, shape))
            shape = blocks[-1].shape
            if shape[-1 if len(shape) == 2 else 0] < 2:  # keep a channel to split
                blocks.append(_Conv(rng, shape) if len(shape) == 3 else
                              _TokenLinear(rng, shape))
                shape = blocks[-1].shape
        self.blocks = nn.ModuleList(blocks)
        self.head_kind = rng.choice(["flatten", "mean", "conv"] if len(shape) == 3
                                    else ["mean", "first", "each"])
        c = shape[0] if len(shape) == 3 else shape[1]
        if self.head_kind == "flatten":
            self.head: nn.Module = nn.Linear(c * shape[1] * shape[2], 10)
        elif self.head_kind == "conv":
            self.head = nn.Conv2d(c, 5, 1)
        else:
            self.head = nn.Linear(c, 10)

    @property
    def recipe(self) -> list[str]:
        return [f"{type(b).__name__[1:]}({b.variant})" for b in self.blocks] + [self.head_kind]

    def example_input(self) -> Tensor:
        return torch.randn(2, *self.in_shape, generator=torch.Generator().manual_seed(1))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        if self.head_kind == "flatten":
            return self.head(torch.flatten(x, 1))
        if self.head_kind == "mean":
            return self.head(x.mean((2, 3)) if x.dim() == 4 else x.mean(1))
        if self.head_kind == "first":
            return self.head(x[:, 0])
        return self.head(x)


def _build(seed: int) -> tuple[_RandomNet, Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = _RandomNet(seed)
        for m in model.modules():  # non-trivial norms, so a wrong slice shows
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), model.example_input()


def _traces_agree(model: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = _summary(trace(model, x, find_adapter, strict=False))
        with monkeypatch.context() as patch:
            _general_only(patch)
            general = _summary(trace(model, x, find_adapter, strict=False))
    for key in fast:  # key by key, so a failure names what differs
        assert fast[key] == general[key], key


def _prunes_cleanly(model: nn.Module, x: Tensor) -> bool:
    """True if prune returned a model with the same output shapes, False on a prunekit
    error; anything else fails."""
    with torch.no_grad():
        reference = model(x).shape
    try:
        result = prunekit.prune(model, x, ratio=0.5)
    except PrunekitError:
        return False
    with torch.no_grad():
        assert result.model.eval()(x).shape == reference
    return True


@pytest.mark.parametrize("seed", SEEDS)
def test_random_net_trace_fast_equals_general(seed: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _build(seed)
    _traces_agree(model, x, monkeypatch)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_net_prunes_cleanly(seed: int) -> None:
    model, x = _build(seed)
    _prunes_cleanly(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_random_net_sweep(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _build(seed)
    _traces_agree(model, x, monkeypatch)
    _prunes_cleanly(model, x)


def test_recipes_are_deterministic_and_cover_every_block() -> None:
    seen: set[str] = set()
    for seed in SEEDS:
        model, x = _build(seed)
        again, y = _build(seed)
        assert model.recipe == again.recipe and torch.equal(x, y)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                      again.state_dict().values(),
                                                      strict=True))
        seen.update(type(b).__name__ for b in model.blocks)
    assert seen == {b.__name__ for b in BLOCKS}


def test_fast_paths_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast/general comparison is not vacuous: the random nets hit the vector form."""
    hits = count_vector_hits(monkeypatch)
    for seed in SEEDS[:20]:
        model, x = _build(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trace(model, x, find_adapter, strict=False)
    assert hits[0] >= 100


def test_most_random_nets_prune() -> None:
    """The property above is not vacuous: most seeds prune rather than raise."""
    pruned = sum(_prunes_cleanly(*_build(seed)) for seed in SEEDS[:60])
    assert pruned >= 59  # all but seed 12 (see the module docstring)



# -- regressions the fuzz found, minimised ----------------------------------------------


def _prune_keeps_shapes(model: nn.Module, x: Tensor) -> prunekit.PruneResult:
    """prune must succeed here (no PruneValidationError) and keep the output shape."""
    with torch.no_grad():
        reference = model(x).shape
    result = prunekit.prune(model, x, ratio=0.5)
    with torch.no_grad():
        assert result.model(x).shape == reference
    return result


def test_varies_sees_negative_dims() -> None:
    labels = torch.arange(6).reshape(2, 3)
    assert varies(labels, -1) == varies(labels, 1) is True


class _ClassToken(nn.Module):
    """A class token cat along tokens (seeds 31, 67, 260); cat along the batch fails alike."""

    def __init__(self, along: int) -> None:
        super().__init__()
        self.along = along
        self.fc = nn.Linear(8, 6)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        return self.head(torch.cat([self.cls.expand(y.shape[0], -1, -1), y], dim=self.along))


@pytest.mark.parametrize("along", [1, 0])
def test_class_token_cat_prunes(along: int) -> None:
    torch.manual_seed(0)
    model = _ClassToken(along).eval()
    x = torch.randn(2 if along == 1 else 1, 5, 8)
    if along == 0:
        model.cls = nn.Parameter(torch.randn(1, 5, 6))
    result = _prune_keeps_shapes(model, x)
    assert result.model.fc.out_features < 6


class _OneHead(nn.Module):
    """Attention-style head split with one head: view(B, T, self.heads=1, self.head_dim)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.head_dim = 1, 4
        self.q, self.proj = nn.Linear(8, 4), nn.Linear(4, 8)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        return self.proj(q.transpose(1, 2).reshape(b, t, -1))


class _TwoShuffles(nn.Module):
    """Channel shuffles by 2 then by 5 of 10 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.head = nn.Conv2d(3, 10, 1), nn.Conv2d(10, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for groups in (2, 5):
            b, c, h, w = x.shape
            x = x.view(b, groups, c // groups, h, w).transpose(1, 2).contiguous().view(b, -1, h, w)
        return self.head(x)


class _SumOfGroups(nn.Module):
    """A depthwise conv with multiplier 2, cat with itself, then summed over
    ``self.groups`` = 4 groups (seed 12): the labels vary along the group factor only."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = 4
        self.stem, self.dw = nn.Conv2d(3, 2, 1), nn.Conv2d(2, 4, 1, groups=2, bias=False)
        self.head = nn.Conv2d(2, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw(self.stem(x))
        x = torch.cat([x, x], 1)
        b, c, h, w = x.shape
        return self.head(x.view(b, self.groups, c // self.groups, h, w).sum(1))


@pytest.mark.parametrize("build", [_OneHead, _TwoShuffles, _SumOfGroups],
                         ids=["one_head", "two_shuffles", "sum_of_groups"])
def test_split_with_one_varying_factor_prunes(build: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(2, 5, 8) if build is _OneHead else torch.randn(2, 3, 4, 4)
    _prune_keeps_shapes(model, x)


class _CatRows(nn.Module):
    """cat along H of a sliced (so kept whole) activation and a conv of it (seed 157)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 4, 1), nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(2 * 8 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)[:, :2]
        return self.head(torch.cat([y, self.conv(y)], dim=2).flatten(1))


def test_cat_along_rows_joins_the_parts_channels() -> None:
    torch.manual_seed(0)
    _prune_keeps_shapes(_CatRows().eval(), torch.randn(2, 3, 4, 4))


class _ScaledCat(nn.Module):
    """A (1, 7, 1, 1) parameter added to a cat of a 3-channel conv and a residual stream
    (seeds 69, 219, 265)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.res = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.a = nn.Conv2d(4, 3, 1)
        self.gamma = nn.Parameter(torch.rand(1, 7, 1, 1))
        self.head = nn.Conv2d(7, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = F.relu(self.res(x)) + x
        return self.head(torch.cat([self.a(x), x], 1) + self.gamma)


def test_group_spanning_a_cat_keeps_every_member() -> None:
    torch.manual_seed(0)
    model = _ScaledCat().eval()
    with torch.no_grad():
        model.a.weight.mul_(1e-3)  # a's channels rank lowest
    result = _prune_keeps_shapes(model, torch.randn(2, 3, 4, 4))
    assert result.model.a.out_channels >= 1
