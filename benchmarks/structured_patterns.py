"""Patterns from users' own models that the ninth and tenth sessions' tables report
(results/structured.md).

Each model is pruned at ratio 0.5 (L2, ``strict=True``); the columns are the fraction of
parameters and MACs kept, and the largest difference between the pruned model and the
unpruned one with the removed channels' inputs zeroed (random importance, three seeds; 0
where pruning is exact; ``-`` where that reference does not apply: a norm over the
channels, or removed units also read by a recurrent cell's own ``weight_hh``). ``error``
names the exception where the prune fails. Run it against an older tree to get the
"before" column. Not a test.

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

from tests.graph.test_split_parts import Halves
from tests.graph.test_written_positions import PaddedCopy, SegNet, Written, XLAttention
from tests.structured.test_equivalence import _zero_removed_inputs
from tests.structured.test_norm_shapes import ContextBlock, PerChannel
from tests.structured.test_rnn_cells import Stepped

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


def _image() -> Tensor:
    return torch.randn(2, 3, 16, 16)


def _vector() -> Tensor:
    return torch.randn(3, 6)


MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], Tensor]]] = {
    # ninth session
    "roll along channels": (ChannelRoll, _image),
    "nn.Unflatten after Linear": (unflatten_decoder, lambda: torch.randn(2, 8)),
    "ResNet-20, option-A shortcut": (ResNet20, lambda: torch.randn(2, 3, 32, 32)),
    "DPN dual path": (dpn, _image),
    # tenth session: code that names channel positions (tests/graph/test_written_positions.py)
    "y[:, 2:4] = 0": (lambda: Written("slice_zero"), _vector),
    "y[:, 2:4] = other(x)": (lambda: Written("slice_value"), _vector),
    "y * arange(y.shape[1])": (lambda: Written("arange"), _vector),
    "sin(arange(C)) features": (lambda: Written("frequencies"), _vector),
    "embedding(y.argmax(1))": (lambda: Written("argmax"), _vector),
    "embedding(max(y, 1).indices)": (lambda: Written("max_indices"), _vector),
    # tenth session: what kept channels whole or was refused
    "narrow halves": (lambda: Halves("narrow_own"), _vector),
    "tensor_split(h, 2)": (lambda: Halves("sections"), _vector),
    "Transformer-XL d_head": (XLAttention, lambda: torch.randn(2, 5, 16)),
    "GroupNorm(C, C)": (PerChannel, _image),
    "GCNet LayerNorm([C,1,1])": (ContextBlock, _image),
    "SegNet max_unpool2d": (lambda: SegNet(True), _image),
    "copy padded to self.max_len": (lambda: PaddedCopy(False), lambda: torch.randn(2, 3, 7)),
    "LSTMCell loop": (lambda: Stepped("lstm"), lambda: torch.randn(2, 4, 5)),
    "GRUCell loop": (lambda: Stepped("gru"), lambda: torch.randn(2, 4, 5)),
}
# where the zeroed model is not the reference (see the docstring)
NOT_ZEROED = {"GCNet LayerNorm([C,1,1])", "LSTMCell loop", "GRUCell loop"}


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
            error = "-" if name in NOT_ZEROED else f"{_max_error(model, x):.1e}"
            print(f"{name:<30} {kept} {error:>10}")
        except Exception as exc:  # a benchmark reports failures instead of stopping
            print(f"{name:<30} error: {type(exc).__name__}: {str(exc)[:60]}")


if __name__ == "__main__":
    main()
