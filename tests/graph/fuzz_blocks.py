"""Building blocks of the trace fuzz (tests/graph/test_trace_fuzz.py): channel, norm, gate,
residual, cat, split, shuffle, permute, group-view and slicing blocks on (C, H, W) maps."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Shape = tuple[int, ...]  # (C, H, W) for images, (T, C) for tokens; batch is always 2


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


