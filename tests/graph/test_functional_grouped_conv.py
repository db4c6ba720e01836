"""Grouped and depthwise ``F.conv2d`` with a parameter or buffer weight: a blur filter
between convs (anti-aliased downsampling, BlurPool), a depthwise layer written in code
with a channel multiplier, a grouped conv. The weight's rows (and the bias) follow the
channels they belong to, the group count follows where the code can be rewritten, and
pruning equals zeroing the removed channels' inputs in the unpruned model.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _complement as _removed
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import PruneValidationError
from prunekit.structured import analyze


class _BlurPool(nn.Module):
    """A fixed [1, 2, 1]² filter per channel, reflect-padded, stride 2; each channel's copy
    has its own gain so that a row cut for the wrong channel changes the output."""

    def __init__(self, channels: int, persistent: bool) -> None:
        super().__init__()
        self.channels = channels
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16
        gains = torch.arange(1.0, channels + 1).view(-1, 1, 1, 1)
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1) * gains,
                             persistent=persistent)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.filt, stride=2, groups=self.channels)


class _BlurResNet(nn.Module):
    """A stem and one downsampling residual block whose strides are blur pools."""

    def __init__(self, persistent: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.blur = _BlurPool(16, persistent)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.down_blur = _BlurPool(8, persistent)
        self.down = nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 5)
        for bn in (self.bn0, self.bn1, self.bn2):  # statistics that are not the identity
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(self.blur(F.relu(self.bn1(self.conv1(x))))))
        y = F.relu(y + self.down(self.down_blur(x)))
        return self.fc(y.mean((2, 3)))


class _Depthwise(nn.Module):
    """A depthwise layer written in code: ``mult`` outputs per input channel, a bias, and the
    group count read from the input."""

    def __init__(self, mult: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8 * mult, 1, 3, 3))
        self.bias = nn.Parameter(torch.randn(8 * mult))
        self.pw = nn.Conv2d(8 * mult, 6, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.stem(x))
        y = F.relu(F.conv2d(y, self.weight, self.bias, padding=1, groups=y.shape[1]))
        return self.pw(y).mean((2, 3))


class _Grouped(nn.Module):
    """A conv with two groups of four input channels, written in code."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(3, 8, 1)
        self.weight = nn.Parameter(torch.randn(12, 4, 3, 3))
        self.bias = nn.Parameter(torch.randn(12))
        self.head = nn.Conv2d(12, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.conv(x))
        return self.head(F.relu(F.conv2d(y, self.weight, self.bias, padding=1, groups=2)))


def _zero_removed_inputs(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` whose layers (ungrouped Conv2d and Linear modules, and grouped
    functional weights: input axis 1, local to each group) ignore the removed channels."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, entry in plan["modules"].items():
            keep = entry["keep"].get("in")
            if keep is not None:
                module = zeroed.get_submodule(name)
                assert isinstance(module, (nn.Linear, nn.Conv2d)) and \
                    getattr(module, "groups", 1) == 1
                module.weight[:, _removed(keep, module.weight.shape[1])] = 0
        for name, entry in plan["params"].items():
            keep = entry["keep"].get("1")
            if keep is not None:
                weight = zeroed.get_parameter(name)
                weight[:, _removed(keep, weight.shape[1])] = 0
    return zeroed


def _check_equivalent(model: nn.Module, x: Tensor, result: pk.PruneResult) -> None:
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("persistent", [False, True])
def test_blur_pool_filter_is_cut_with_its_channels(tmp_path: Path, persistent: bool) -> None:
    model, x = _BlurResNet(persistent).eval(), torch.randn(2, 3, 16, 16)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape == (2, 5)
    assert result.params_kept < 0.6
    for blur, conv in ((pruned.blur, pruned.conv1), (pruned.down_blur, pruned.stem)):
        assert blur.channels == conv.out_channels < conv.weight.shape[0] * 2
    keep = result.plan["params"]["blur.filt"]["keep"]["0"]
    assert keep == result.plan["modules"]["conv1"]["keep"]["out"]
    assert torch.equal(pruned.blur.filt, model.blur.filt[keep])
    assert result.plan["attrs"] == {"blur": {"channels": 8}, "down_blur": {"channels": 4}}
    _check_equivalent(model, x, result)

    pk.save(result, tmp_path / "out")
    reloaded = pk.load(tmp_path / "out", _BlurResNet(persistent).eval())
    assert reloaded.blur.filt.shape == (8, 1, 3, 3) and reloaded.blur.channels == 8
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


def test_blur_pool_at_ratio_zero_changes_nothing() -> None:
    model, x = _BlurResNet().eval(), torch.randn(2, 3, 16, 16)
    pruned = pk.prune(model, x, ratio=0.0).model
    with torch.no_grad():
        assert torch.equal(pruned(x), model(x))
    assert pruned.blur.filt.shape == (16, 1, 3, 3)


@pytest.mark.parametrize("mult", [1, 2])
def test_depthwise_parameter_weight_and_bias_follow_the_input(mult: int) -> None:
    model, x = _Depthwise(mult).eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    kept = result.plan["modules"]["stem"]["keep"]["out"]
    assert len(kept) == 4
    rows = [g * mult + i for g in kept for i in range(mult)]  # output g·m + i reads input g
    assert result.plan["params"]["weight"]["keep"] == {"0": rows}
    assert torch.equal(pruned.weight, model.weight[rows])
    assert torch.equal(pruned.bias, model.bias[rows])
    assert pruned.pw.in_channels == 4 * mult
    _check_equivalent(model, x, result)
    with torch.no_grad():
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))


def test_grouped_parameter_weight_keeps_its_group_count(tmp_path: Path) -> None:
    model, x = _Grouped().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=4)
    pruned = result.model
    # channel j of both groups leaves together, on the input and the output side
    keep_in = result.plan["modules"]["conv"]["keep"]["out"]
    local = result.plan["params"]["weight"]["keep"]["1"]
    assert keep_in == local + [j + 4 for j in local] and len(local) == 2
    keep_out = result.plan["params"]["weight"]["keep"]["0"]
    assert keep_out[len(keep_out) // 2:] == [j + 6 for j in keep_out[:len(keep_out) // 2]]
    assert pruned.weight.shape == (6, 2, 3, 3) and pruned.bias.shape == (6,)
    _check_equivalent(model, x, result)
    pk.save(result, tmp_path / "out")
    reloaded = pk.load(tmp_path / "out", _Grouped().eval())
    with torch.no_grad():
        assert torch.equal(reloaded(x), pruned(x))


class _Counted(nn.Module):
    """A depthwise layer whose group count the code writes as a literal, or reads from one of
    two attributes that hold it."""

    def __init__(self, count: str) -> None:
        super().__init__()
        self.count = count
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(8, 1, 3, 3))
        self.head = nn.Conv2d(8, 4, 1)
        if count != "literal":
            self.width = self.depth = 8

    def forward(self, x: Tensor) -> Tensor:
        groups = 8 if self.count == "literal" else self.width
        return self.head(F.conv2d(F.relu(self.stem(x)), self.weight, groups=groups))


def test_group_count_held_by_two_attributes_is_kept_whole() -> None:
    model, x = _Counted("ambiguous").eval(), torch.randn(1, 3, 6, 6)
    analysis = analyze(model, x)
    assert not analysis.graph.groups
    assert "several attributes of the model hold (width, depth)" in \
        analysis.coverage.fixed["weight"]


def test_literal_group_count_fails_the_forward_check_and_is_kept_whole() -> None:
    model, x = _Counted("literal").eval(), torch.randn(1, 3, 6, 6)
    with pytest.raises(PruneValidationError, match=r"stem\.out"):
        pk.prune(model, x, ratio=0.5)
    with pytest.warns(UserWarning, match="kept whole"):
        result = pk.prune(model, x, ratio=0.5, strict=False)
    assert result.model.weight.shape == (8, 1, 3, 3)
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


class _LiteralInCall(nn.Module):
    """Hyena's and H3's short filter: ``F.conv1d(h, self.k, groups=16)``, the count written
    in the call."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.gate = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(8, 16)
        self.k = nn.Parameter(torch.randn(16, 1, 4))
        self.mlp = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, x: Tensor) -> Tensor:
        h = F.pad(self.a(x).transpose(1, 2), (3, 0))
        y = self.b(F.conv1d(h, self.k, groups=16).transpose(1, 2) * self.gate(x))
        return self.mlp(y)


def test_a_literal_group_count_in_the_call_keeps_its_channels_before_the_check() -> None:
    """Was: the depthwise rows were cut, and the forward check failed."""
    model, x = _LiteralInCall().eval(), torch.randn(2, 6, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.k.shape == (16, 1, 4) and result.model.mlp[0].out_features == 6
    assert "groups=16, a literal" in result.coverage.fixed["k"]
    with torch.no_grad():
        assert result.model(x).shape == (2, 6, 4)
