"""A YOLOv8-style detector for the zoo, written as Ultralytics writes it (no dependency).

C2f blocks (a 1×1 conv's output split in two, bottlenecks chained on the second half, every
part concatenated), SPPF (three chained max-pools concatenated), a top-down and bottom-up
neck (nearest upsampling, concat with backbone maps) and a decoupled head per level (box
branch of 4 × ``reg_max`` DFL bins, class branch). In eval mode the forward decodes, as
Ultralytics' ``Detect`` does: the levels are flattened and concatenated, anchors are made
from the feature-map shapes (``torch.arange`` of each map's width and height), the box bins
go through a softmax and a fixed conv with weights ``0..reg_max-1`` (DFL), and distances
become boxes by ``chunk`` and ``cat``. It returns ``(decoded, (level maps))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ConvBNSiLU(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__(nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1, self.cv2 = ConvBNSiLU(c, c, 3), ConvBNSiLU(c, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = ConvBNSiLU(c_in, 2 * self.c)
        self.cv2 = ConvBNSiLU((2 + n) * self.c, c_out)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: Tensor) -> Tensor:
        y = list(self.cv1(x).split((self.c, self.c), 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in // 2
        self.cv1, self.cv2 = ConvBNSiLU(c_in, hidden), ConvBNSiLU(hidden * 4, c_out)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = [self.cv1(x)]
        y.extend(self.pool(y[-1]) for _ in range(3))
        return self.cv2(torch.cat(y, 1))


class DFL(nn.Module):
    """The expected bin of a softmax over ``reg_max`` bins, as a fixed 1×1 conv."""

    def __init__(self, reg_max: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(reg_max, 1, 1, bias=False).requires_grad_(False)
        self.conv.weight.data[:] = torch.arange(reg_max, dtype=torch.float).view(1, reg_max,
                                                                                 1, 1)
        self.reg_max = reg_max

    def forward(self, x: Tensor) -> Tensor:
        b, _, a = x.shape
        bins = x.view(b, 4, self.reg_max, a).transpose(2, 1).softmax(1)
        return self.conv(bins).view(b, 4, a)


class Detect(nn.Module):
    def __init__(self, nc: int, widths: tuple[int, ...], strides: tuple[int, ...],
                 reg_max: int = 8) -> None:
        super().__init__()
        self.nc, self.reg_max, self.no = nc, reg_max, nc + 4 * reg_max
        self.register_buffer("stride", torch.tensor(strides, dtype=torch.float))
        box, cls = max(16, widths[0] // 4, 4 * reg_max), max(widths[0], min(nc, 100))
        self.cv2 = nn.ModuleList(nn.Sequential(ConvBNSiLU(w, box, 3), ConvBNSiLU(box, box, 3),
                                               nn.Conv2d(box, 4 * reg_max, 1)) for w in widths)
        self.cv3 = nn.ModuleList(nn.Sequential(ConvBNSiLU(w, cls, 3), ConvBNSiLU(cls, cls, 3),
                                               nn.Conv2d(cls, nc, 1)) for w in widths)
        self.dfl = DFL(reg_max)

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, tuple[Tensor, ...]]:
        x = [torch.cat((b(f), c(f)), 1) for f, b, c in zip(feats, self.cv2, self.cv3,
                                                            strict=True)]
        flat = torch.cat([xi.view(x[0].shape[0], self.no, -1) for xi in x], 2)
        anchors, strides = _make_anchors(x, self.stride)
        box, cls = flat.split((4 * self.reg_max, self.nc), 1)
        lt, rb = self.dfl(box).chunk(2, 1)
        boxes = torch.cat(((anchors + (rb - lt) / 2), rb + lt), 1) * strides
        return torch.cat((boxes, cls.sigmoid()), 1), tuple(x)


def _make_anchors(feats: list[Tensor], strides: Tensor) -> tuple[Tensor, Tensor]:
    points, stride_per_point = [], []
    for f, stride in zip(feats, strides, strict=True):
        _, _, h, w = f.shape
        sx = torch.arange(w, dtype=f.dtype, device=f.device) + 0.5
        sy = torch.arange(h, dtype=f.dtype, device=f.device) + 0.5
        yy, xx = torch.meshgrid(sy, sx, indexing="ij")
        points.append(torch.stack((xx, yy), -1).view(-1, 2))
        stride_per_point.append(torch.ones(h * w, 1, dtype=f.dtype, device=f.device) * stride)
    return torch.cat(points).t().unsqueeze(0), torch.cat(stride_per_point).t().unsqueeze(0)


class YOLOLike(nn.Module):
    def __init__(self, nc: int = 6, w: tuple[int, int, int, int] = (8, 16, 24, 48)) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNSiLU(3, w[0], 3, 2), ConvBNSiLU(w[0], w[1], 3, 2),
                                  C2f(w[1], w[1], 1, True))
        self.down3 = nn.Sequential(ConvBNSiLU(w[1], w[2], 3, 2), C2f(w[2], w[2], 1, True))
        self.down4 = nn.Sequential(ConvBNSiLU(w[2], w[3], 3, 2), C2f(w[3], w[3], 1, True),
                                   SPPF(w[3], w[3]))
        self.up = nn.Upsample(scale_factor=2.0, mode="nearest")
        self.top = C2f(w[3] + w[2], w[2])
        self.down = ConvBNSiLU(w[2], w[2], 3, 2)
        self.bottom = C2f(w[2] + w[3], w[3])
        self.detect = Detect(nc, (w[2], w[3]), (8, 16))

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, ...]]:
        p3 = self.down3(self.stem(x))
        p4 = self.down4(p3)
        n3 = self.top(torch.cat((self.up(p4), p3), 1))
        n4 = self.bottom(torch.cat((self.down(n3), p4), 1))
        return self.detect([n3, n4])
