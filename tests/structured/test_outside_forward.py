"""What the example's forward does not show: a layer it never reaches (an optional input
left None), and a block's size attribute that only code outside forward reads (RepVGG's
``self.in_channels``, read when the block is re-parameterised for deployment)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class CondNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.cond = nn.Linear(20, 32), nn.Linear(6, 32)
        self.l2, self.fc = nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = F.relu(self.l1(x))
        if cond is not None:
            h = h + self.cond(cond)
        return self.fc(F.relu(self.l2(h)))


def test_a_layer_the_example_never_reaches_is_named() -> None:
    """Was: no word; the pruned model then failed as soon as ``cond`` was passed."""
    torch.manual_seed(0)
    model, x = CondNet().eval(), torch.randn(6, 20)
    with pytest.warns(UserWarning, match=r"cond \(Linear, width 32\) never ran on the example "
                                         r"inputs and keeps its widths"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.model.cond.out_features == 32 and result.model.l1.out_features == 16
    reached = pk.prune(model, (x, torch.randn(6, 6)), ratio=0.5)  # the fix the note names
    assert reached.model.cond.out_features == reached.model.l1.out_features == 16


def test_an_unread_parameter_of_the_model_itself_is_named_as_such() -> None:
    # the model's own path is "": the note read " (CondNet, width 32) never ran ..."
    torch.manual_seed(0)
    model, x = CondNet().eval(), torch.randn(6, 20)
    model.unused = nn.Parameter(torch.zeros(32))
    with pytest.warns(UserWarning, match=r"the model itself \(CondNet, width 32\) never ran"):
        pk.prune(model, (x, torch.randn(6, 6)), ratio=0.5)


def test_layers_run_by_their_parent_are_not_named() -> None:
    """nn.MultiheadAttention runs its out_proj through its own weights, never calling it."""
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16)).eval()
    attention = nn.MultiheadAttention(16, 4, batch_first=True).eval()

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.attn, self.head = model, attention, nn.Linear(16, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.body(x)
            return self.head(self.attn(h, h, h, need_weights=False)[0])

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(Net().eval(), torch.randn(2, 5, 8), ratio=0.5)
    assert result.model.body[0].out_features == 16


class RepVGGBlock(nn.Module):
    """DingXiaoH/RepVGG's block, trimmed: ``in_channels`` is read by the kernel fusion that
    ``switch_to_deploy`` runs, never by forward."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_channels, self.groups = channels, 1
        self.rbr_identity = nn.BatchNorm2d(channels)
        self.rbr_dense = nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                                       nn.BatchNorm2d(channels))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False),
                                     nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.rbr_dense(x) + self.rbr_1x1(x) + self.rbr_identity(x))

    def identity_kernel(self) -> Tensor:
        input_dim = self.in_channels // self.groups
        kernel = torch.zeros(self.in_channels, input_dim, 3, 3)
        for i in range(self.in_channels):
            kernel[i, i % input_dim, 1, 1] = 1
        bn = self.rbr_identity
        return kernel * (bn.weight / (bn.running_var + bn.eps).sqrt()).reshape(-1, 1, 1, 1)


def _repvgg() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), RepVGGBlock(32),
                         nn.Conv2d(32, 8, 1)).eval()


def test_a_blocks_size_attribute_follows_its_layers(tmp_path: Path) -> None:
    """Was: ``in_channels`` stayed 32, and re-parameterising the pruned block failed."""
    torch.manual_seed(0)
    model, x = _repvgg(), torch.randn(2, 3, 16, 16)
    result = pk.prune(model, x, ratio=0.5)
    block = result.model[1]
    assert block.in_channels == block.rbr_dense[0].in_channels == 16
    assert result.plan["attrs"] == {"1": {"in_channels": 16}}
    assert block.identity_kernel().shape == (16, 16, 3, 3)
    assert model[1].in_channels == 32  # the user's model is untouched
    loaded = pk.load(pk.save(result, tmp_path / "p"), _repvgg())
    assert loaded[1].in_channels == 16


class SelectiveKernel(nn.Module):
    """timm's SelectiveKernel with ``split_input``: its ``in_channels`` is the block's input
    width, split in two by forward; the first layer reads one half, and a later layer (the
    attention's reduction) happens to have ``in_channels`` of the same value."""

    def __init__(self, channels: int = 16) -> None:
        super().__init__()
        self.in_channels, self.num_paths = channels, 2
        self.paths = nn.ModuleList(nn.Conv2d(channels // 2, channels, k, padding=k // 2)
                                   for k in (1, 3))
        self.reduce = nn.Conv2d(channels, 4, 1)
        self.select = nn.Conv2d(4, 2 * channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.in_channels // self.num_paths, 1)
        paths = torch.stack([op(p) for op, p in zip(self.paths, parts, strict=True)], 1)
        b, _, c = paths.shape[:3]
        attn = self.select(F.relu(self.reduce(paths.sum(1).mean((2, 3), keepdim=True))))
        attn = attn.view(b, 2, c, 1, 1).softmax(1)
        return (paths * attn).sum(1)


def test_an_attribute_another_layer_happens_to_match_is_left_alone() -> None:
    """Matching any layer of equal value (a84a552 to this fix) bound ``in_channels`` to the
    attention's reduction; rewritten to its width, forward's split then failed (timm's
    skresnet18). Only the first layer to run may give an input size."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), SelectiveKernel(),
                          nn.Conv2d(16, 4, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert "1" not in result.plan["attrs"] and result.model[1].in_channels == 16
    with torch.no_grad():
        assert result.model(x).shape == (2, 4, 8, 8)


class DepthwiseRepBlock(nn.Module):
    """apple/ml-mobileone's depthwise ``MobileOneBlock``, trimmed: ``groups`` and
    ``in_channels`` are read by ``reparameterize()`` alone."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_channels = self.groups = channels
        self.rbr_skip = nn.BatchNorm2d(channels)
        self.rbr_conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.rbr_skip(x) + self.rbr_conv(x)

    def identity_kernel(self) -> Tensor:
        input_dim = self.in_channels // self.groups
        kernel = torch.zeros(self.in_channels, input_dim, 3, 3)
        for i in range(self.in_channels):
            kernel[i, i % input_dim, 1, 1] = 1
        return kernel + self.rbr_conv.weight


class SkipOnly(nn.Module):
    """FastViT's ``MobileOneBlock`` with no conv branch: a norm alone."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.in_channels = channels
        self.rbr_skip = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.rbr_skip(x)


class RepMixer(nn.Module):
    """apple/ml-fastvit's ``RepMixer``, trimmed: ``dim`` is read by ``reparameterize()``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.norm, self.mixer = SkipOnly(dim), nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)
        self.layer_scale = nn.Parameter(torch.rand(dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.layer_scale * (self.mixer(x) - self.norm(x))

    def reparameterized_weight(self) -> Tensor:
        identity = torch.zeros(self.norm.in_channels, 1, 3, 3)
        identity[:, 0, 1, 1] = 1
        return (identity + self.layer_scale.unsqueeze(-1) * (self.mixer.weight - identity)
                ).view(self.dim, 1, 3, 3)


def _reparameterisable() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), DepthwiseRepBlock(16), RepMixer(16),
                         nn.Conv2d(16, 8, 1)).eval()


def test_sizes_that_only_reparameterisation_reads_follow_the_layers(tmp_path: Path) -> None:
    """Was: MobileOne's ``groups``, RepMixer's ``dim`` and its skip-only block's
    ``in_channels`` kept 16, and re-parameterising the pruned model failed."""
    torch.manual_seed(0)
    model, x = _reparameterisable(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    block, mixer = result.model[1], result.model[2]
    assert (block.in_channels, block.groups, mixer.dim, mixer.norm.in_channels) == (8, 8, 8, 8)
    assert block.identity_kernel().shape == mixer.reparameterized_weight().shape == (8, 1, 3, 3)
    loaded = pk.load(pk.save(result, tmp_path / "p"), _reparameterisable())
    assert (loaded[1].groups, loaded[2].dim, loaded[2].norm.in_channels) == (8, 8, 8)
    assert model[1].groups == 16  # the user's model is untouched
