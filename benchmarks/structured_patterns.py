"""Patterns from users' own models that the ninth session's table reports (results/structured.md).

Each model is pruned at ratio 0.5 (L2, ``strict=True``); the columns are the fraction of
parameters and MACs kept, and the largest difference between the pruned model and the
unpruned one with the removed channels' inputs zeroed (random importance, three seeds; 0
where pruning is exact). ``error`` names the exception where the prune fails. Run it
against an older tree to get the "before" column. Not a test.

Command:

    .venv/bin/python benchmarks/structured_patterns.py
    PYTHONPATH=<copy of an older tree>/src .venv/bin/python benchmarks/structured_patterns.py
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.structured

from tests.structured.test_equivalence import _zero_removed_inputs

import prunekit as pk


class ChannelRoll(nn.Module):
    """``torch.roll`` along the channel dim between two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.b(torch.roll(F.relu(self.a(x)), 1, 1))))


def unflatten_decoder() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Unflatten(1, (16, 2, 2)),
                         nn.Conv2d(16, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


class _Shortcut(nn.Module):
    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)


class _Basic(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = _Shortcut(planes) if stride != 1 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """The CIFAR ResNet-20 with the option-A (zero-padded) shortcut, as the pruning
    literature's ResNet-20/56 implementations write it."""

    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, width = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for s in [stride] + [1] * (n - 1):
                blocks.append(_Basic(width, planes, s))
                width = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _DualPath(nn.Module):
    """DPN's block: a residual path (the first ``out_planes`` channels) and a dense one."""

    def __init__(self, last: int, inner: int, out_planes: int, dense: int, first: bool) -> None:
        super().__init__()
        self.out_planes = out_planes
        self.conv1 = nn.Conv2d(last, inner, 1, bias=False)
        self.conv2 = nn.Conv2d(inner, inner, 3, 1, 1, groups=4, bias=False)
        self.conv3 = nn.Conv2d(inner, out_planes + dense, 1, bias=False)
        self.shortcut: nn.Module = nn.Conv2d(last, out_planes + dense, 1, bias=False) \
            if first else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x)))))
        x, d = self.shortcut(x), self.out_planes
        return F.relu(torch.cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], 1))


def dpn() -> nn.Module:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.b1 = _DualPath(16, 16, 32, 8, True)
            self.b2 = _DualPath(48, 16, 32, 8, False)
            self.linear = nn.Linear(56, 10)

        def forward(self, x: Tensor) -> Tensor:
            out = self.b2(self.b1(F.relu(self.conv1(x))))
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    return Net()


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    "roll along channels": (ChannelRoll, lambda: torch.randn(2, 3, 16, 16)),
    "nn.Unflatten after Linear": (unflatten_decoder, lambda: torch.randn(2, 8)),
    "ResNet-20, option-A shortcut": (ResNet20, lambda: torch.randn(2, 3, 32, 32)),
    "DPN dual path": (dpn, lambda: torch.randn(2, 3, 16, 16)),
}


def _max_error(model: nn.Module, x: Tensor) -> float:
    worst = 0.0
    for seed in range(3):
        result = pk.prune(model, x, ratio=0.5, importance="random", seed=seed)
        with torch.no_grad():
            diff = result.model(x) - _zero_removed_inputs(model, result.plan)(x)
        worst = max(worst, float(diff.abs().max()))
    return worst


def main() -> None:
    warnings.simplefilter("ignore")
    print(f"{'model':<30} {'params':>7} {'MACs':>7} {'vs zeroed':>10}")
    for name, (build, inputs) in MODELS.items():
        torch.manual_seed(0)
        model, x = build().eval(), inputs()
        for module in model.modules():  # BatchNorm statistics as a trained net has them
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        try:
            result = pk.prune(model, x, ratio=0.5)
            kept = f"{result.params_kept:>7.2f} {result.macs_kept:>7.2f}"
            print(f"{name:<30} {kept} {_max_error(model, x):>10.1e}")
        except Exception as exc:  # a benchmark reports failures instead of stopping
            print(f"{name:<30} error: {type(exc).__name__}: {str(exc)[:60]}")


if __name__ == "__main__":
    main()
