"""Equivalence per op family: pruning channels gives the same output as zeroing, in the
unpruned model, every input slice that reads those channels.

Zeroing the consumers' input columns removes exactly the removed channels' contribution,
so any index-mapping bug (concat offsets, split halves, shuffles, flatten blocks, residual
partners, grouped convs) shows up as a mismatch. It holds for models without
cross-channel normalisation (LayerNorm/GroupNorm/softmax over channels), which are excluded.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.structured.zoo import BY_NAME, call, output_tensors
from torch import Tensor, nn

import prunekit as pk
from prunekit.structured import prune
from prunekit.structured.pruning import PruneResult


def _zero_removed_inputs(model: nn.Module, plan: dict) -> nn.Module:
    """A copy of ``model`` whose layers ignore the channels the plan removes."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, entry in plan["modules"].items():
            module = zeroed.get_submodule(name)
            keep = entry["keep"].get("in")
            if keep is None:
                continue
            if isinstance(module, nn.Linear):
                removed = _complement(keep, module.in_features)
                module.weight[:, removed] = 0
            elif isinstance(module, nn.modules.conv._ConvNd):
                _zero_conv_inputs(module, _complement(keep, module.in_channels))
    return zeroed


def _zero_conv_inputs(conv: nn.modules.conv._ConvNd, removed: Tensor) -> None:
    groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
    weight = conv.weight
    if conv.transposed:  # [in, out/groups, *k]: input channels are rows
        weight[removed] = 0
    elif groups == 1:
        weight[:, removed] = 0
    elif cin == groups:  # depthwise: input channel g feeds output rows g·m .. g·m + m - 1
        mult = cout // groups
        rows = (removed[:, None] * mult + torch.arange(mult)).reshape(-1)
        weight[rows] = 0
        if conv.bias is not None:
            conv.bias[rows] = 0
    else:
        per = cin // groups
        for channel in removed.tolist():
            group, local = divmod(channel, per)
            weight[group * (cout // groups):(group + 1) * (cout // groups), local] = 0


def _complement(keep: list[int], size: int) -> Tensor:
    mask = torch.ones(size, dtype=torch.bool)
    mask[torch.tensor(keep, dtype=torch.long)] = False
    return mask.nonzero().reshape(-1)


def _check(model: nn.Module, inputs: object, ratio: float = 0.5) -> None:
    model = model.eval()
    result = prune(model, inputs, ratio=ratio, importance="random", seed=3)
    assert result.plan["modules"], "nothing was pruned"
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        expected = call(zeroed, inputs)
        got = call(result.model.eval(), inputs)
    for e, g in zip(output_tensors(expected), output_tensors(got), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


# --- one small model per op family -------------------------------------------------------


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.a(x)
        x = self.b(x) - x
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 10, 1)
        self.bn = nn.BatchNorm2d(16)
        self.mix = nn.Conv2d(16, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(F.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


class ChunkSplit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 1)
        self.left, self.right = nn.Conv2d(6, 7, 1), nn.Conv2d(6, 7, 1)
        self.out = nn.Conv2d(14, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        left, right = self.a(x).chunk(2, dim=1)
        p, q = torch.split(torch.cat([self.left(left), self.right(right)], 1), 7, dim=1)
        return self.out(torch.cat([q, p], dim=1))


class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.max_pool2d(F.relu(self.conv(x)), 2).flatten(1))


class ChannelsLast(nn.Module):
    """permute to channels-last, a Linear over channels, a layer-scale vector, permute back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 8)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        y = self.gamma * self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1))))
        return self.out(x + y.permute(0, 3, 1, 2))


class Shuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped(self.a(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.out(self.dw(x))


class TransposedAndGate(nn.Module):
    """ConvTranspose, a squeeze-excitation gate and a slice along a spatial dim."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.a(x))
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        x = x * gate[:, :, None, None]
        return self.out(self.up(x)[:, :, 1:])


class Conv1dAnd3d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c3 = nn.Conv3d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm3d(6)
        self.c1 = nn.Conv1d(6, 5, 3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn(self.c3(x))).mean((3, 4))
        return self.fc(F.adaptive_avg_pool1d(self.c1(x), 1).squeeze(-1))


class PixelShuffles(nn.Module):
    """Space to depth (each channel a block of 4 of the next conv's inputs) and depth to
    space (each block of 4 channels one input channel of the head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.mid = nn.Conv2d(24, 20, 3, padding=1)
        self.head = nn.Conv2d(5, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pixel_unshuffle(F.relu(self.stem(x)), 2)
        return self.head(nn.PixelShuffle(2)(F.relu(self.mid(x))))


class ManualShuffle(nn.Module):
    """Depth to space written by hand with the scale as a literal (BasicSR's helpers):
    ``view(b, c // 4, 2, 2, h, w)``. Was: kept whole, as a factor the code fixes."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Conv2d(3, 32, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        f = F.relu(self.up(x))
        b, c, h, w = f.shape
        f = f.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return self.head(f.reshape(b, c // 4, h * 2, w * 2))


class SplitAttention(nn.Module):
    """ResNeSt's SplAtConv2d as its repository writes it: both splits sized by
    ``rchannel // self.radix``, ``rchannel`` read from the features; the second splits the
    attention, whose channels are the features' only once they multiply. Was: the second
    split kept the radix conv whole."""

    def __init__(self, channels: int = 16, radix: int = 2) -> None:
        super().__init__()
        self.radix = radix
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.conv = nn.Conv2d(channels, channels * radix, 3, padding=1, groups=radix)
        self.fc1 = nn.Conv2d(channels, 8, 1)
        self.fc2 = nn.Conv2d(8, channels * radix, 1)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv(F.relu(self.stem(x))))
        batch, rchannel = x.shape[:2]
        splited = torch.split(x, rchannel // self.radix, dim=1)
        atten = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(sum(splited), 1))))
        atten = F.softmax(atten.view(batch, 1, self.radix, -1).transpose(1, 2), dim=1)
        atten = atten.reshape(batch, -1).view(batch, -1, 1, 1)
        parts = torch.split(atten, rchannel // self.radix, dim=1)
        return self.head(sum(a * s for a, s in zip(parts, splited, strict=True)))


class OptionA(nn.Module):
    """CIFAR ResNets' option-A shortcut: the wider stage adds the narrower one's channels
    between zero channels, ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4))``."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1))
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(16, 16, 3, padding=1))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.stem(x))
        h = F.relu(h + self.block(h))
        h = F.relu(self.down(h) + F.pad(h[:, :, ::2, ::2], (0, 0, 0, 0, 4, 4)))
        return self.head(h)


class DualPath(nn.Module):
    """DPN's block: the first ``out_planes`` channels are a residual path, the rest a dense
    path that grows by concatenation, cut at ``d = self.out_planes``."""

    def __init__(self) -> None:
        super().__init__()
        self.out_planes = 8
        self.stem = nn.Conv2d(3, 12, 3, padding=1)  # 8 residual + 4 dense channels
        self.conv = nn.Conv2d(12, 8 + 4, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        out, d = self.conv(x), self.out_planes
        y = torch.cat([x[:, :d] + out[:, :d], x[:, d:], out[:, d:]], 1)
        return self.head(F.relu(y))


class UnflattenDecoder(nn.Module):
    """A decoder's stem: Linear → nn.Unflatten(1, (C, 3, 3)) → ConvTranspose: channel ``c``
    of the unflattened map is the Linear's features ``9c`` to ``9c + 8``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 8 * 9)
        self.unflatten = nn.Unflatten(1, (8, 3, 3))
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.head = nn.Conv2d(6, 2, 1)

    def forward(self, z: Tensor) -> Tensor:
        return self.head(F.relu(self.up(F.relu(self.unflatten(self.fc(z))))))


FAMILIES = {
    "residual add/sub": (Residual, lambda: torch.randn(2, 3, 8, 8)),
    "concat": (Concat, lambda: torch.randn(2, 3, 8, 8)),
    "chunk/split": (ChunkSplit, lambda: torch.randn(2, 3, 8, 8)),
    "flatten into linear": (FlattenLinear, lambda: torch.randn(2, 3, 10, 10)),
    "permute/channels-last/layer-scale": (ChannelsLast, lambda: torch.randn(2, 3, 6, 6)),
    "grouped/depthwise/shuffle": (Shuffle, lambda: torch.randn(2, 3, 6, 6)),
    "conv-transpose/SE gate/slice": (TransposedAndGate, lambda: torch.randn(2, 3, 8, 8)),
    "conv1d/conv3d": (Conv1dAnd3d, lambda: torch.randn(2, 2, 5, 4, 4)),
    "pixel shuffle/unshuffle": (PixelShuffles, lambda: torch.randn(2, 3, 8, 8)),
    "pixel shuffle by hand": (ManualShuffle, lambda: torch.randn(2, 3, 6, 6)),
    "split by a width read (ResNeSt)": (SplitAttention, lambda: torch.randn(2, 3, 6, 6)),
    "linear into unflatten": (UnflattenDecoder, lambda: torch.randn(2, 5)),
    "zero-padded channel shortcut": (OptionA, lambda: torch.randn(2, 3, 8, 8)),
    "dual path (slices at an attribute)": (DualPath, lambda: torch.randn(2, 3, 8, 8)),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slices_at_an_attribute_rewrite_it(seed: int) -> None:
    """``out_planes`` becomes the count of residual channels kept (the first 8 of the stem's
    12; the add joins them with the conv's first 8). Was: every channel kept whole."""
    torch.manual_seed(0)
    model, x = DualPath().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.8, importance="random", seed=seed)
    kept = result.plan["modules"]["stem"]["keep"]["out"]
    pruned = result.model
    assert pruned.out_planes == sum(1 for c in kept if c < 8) < 8
    assert pruned.head.in_channels == len(kept) + (len(kept) - pruned.out_planes)
    assert pruned(x).shape == (2, 4, 8, 8)


def test_zero_padded_shortcut_keeps_its_zero_channels_and_loses_the_narrower_stages() -> None:
    """The wide stage is 4 + (the narrow stage's width) + 4: the zero channels stay, the
    middle ones follow the narrow stage. Was: the pad kept both stages whole."""
    torch.manual_seed(0)
    model, x = OptionA().eval(), torch.randn(2, 3, 8, 8)
    pruned = prune(model, x, ratio=0.5).model
    assert pruned.stem.out_channels == pruned.block[2].out_channels == 4
    assert pruned.down[2].out_channels == pruned.head.in_channels == 4 + 4 + 4
    assert pruned(x).shape == (2, 4, 4, 4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_op_family_equivalence(family: str) -> None:
    factory, inputs = FAMILIES[family]
    torch.manual_seed(0)
    model = factory()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.normal_()
            module.bias.data.normal_()
    _check(model, inputs())


ZOO_EQUIVALENT = [
    "lenet5", "vgg_bn", "resnet_basic", "resnet_bottleneck", "resnext", "mobilenet_v2",
    "mobilenet_v3", "densenet", "inception", "shufflenet_v2", "unet", "fpn_tuple",
    "frozen_backbone", "audio_m5", "conv3d_video",
]


@pytest.mark.parametrize("name", ZOO_EQUIVALENT)
def test_zoo_equivalence(name: str) -> None:
    entry = BY_NAME[name]
    _check(entry.build(), entry.example_inputs(), ratio=0.4)


class EinsumAttention(nn.Module):
    """Per-head attention written with einsum, then addmm into the head; ``ellipsis``: the
    same with ``...`` and an implicit result, as OWL-ViT's class head and many ports write
    their products."""

    def __init__(self, ellipsis: bool = False) -> None:
        super().__init__()
        self.ellipsis = ellipsis
        self.a = nn.Linear(6, 8)
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        q = h.view(*h.shape[:2], 2, -1)
        if not self.ellipsis:
            scores = torch.einsum("bqhd,bkhd->bhqk", q, q).softmax(-1)
            y = torch.einsum("bhqk,bkhd->bqhd", scores, q).reshape(*h.shape[:2], -1)
            return self.out(F.relu(y))
        q = q.transpose(1, 2)  # [b, heads, t, d]
        scores = torch.einsum("...qd,...kd->...qk", q, q).softmax(-1)
        # implicit result: the broadcast dims, then the letters used once, sorted ("...dq")
        y = torch.einsum("...kq,...kd", scores.transpose(-1, -2), q).transpose(-1, -2)
        return self.out(F.relu(y.transpose(1, 2).reshape(*h.shape[:2], -1)))


@pytest.mark.parametrize("ellipsis", [False, True])
def test_einsum_equivalence(ellipsis: bool) -> None:
    torch.manual_seed(0)
    model, x = EinsumAttention(ellipsis).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=2)
    assert result.model.a.out_features == 4
    _matches_a_zeroed(result, model, x)


def _matches_a_zeroed(result: PruneResult, model: nn.Module, x: Tensor) -> None:
    """The pruned model's output equals the unpruned one's with the rows of layer ``a`` that
    the plan removed zeroed (4 of its 8 outputs)."""
    drop = sorted(set(range(8)) - set(result.plan["modules"]["a"]["keep"]["out"]))
    assert len(drop) == 4
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.a.weight[drop] = 0
        zeroed.a.bias[drop] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_weight_used_directly_in_einsum_is_cut_with_its_input() -> None:
    class Direct(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.w = nn.Linear(6, 8), nn.Parameter(torch.randn(4, 8))

        def forward(self, x: Tensor) -> Tensor:
            return torch.einsum("bc,dc->bd", self.a(x), self.w)

    torch.manual_seed(0)
    model, x = Direct(), torch.randn(2, 6)
    result = prune(model, x, ratio=0.5)
    # w reads a's channels along c (cut with them); d makes the output (kept: model output)
    assert result.model.w.shape == (4, 4)
    _matches_a_zeroed(result, model, x)


class KeywordMatmuls(nn.Module):
    """``baddbmm``/``addmm`` with their operands by name (Bloom's ``alibi.baddbmm(batch1=q,
    batch2=k, beta=1.0, alpha=s)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.mix = nn.Parameter(torch.randn(5, 5))
        self.out = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        bias = torch.zeros(x.shape[0], x.shape[1], x.shape[1])
        scores = bias.baddbmm(batch1=h, batch2=h.transpose(1, 2), beta=1.0, alpha=0.5)
        y = torch.bmm(scores.softmax(-1), h)
        flat = torch.addmm(input=torch.zeros(1, y.shape[-1]), mat1=self.mix, mat2=y[0])
        return self.out(F.relu(y + flat))


def test_matmuls_with_keyword_operands_equivalence() -> None:
    torch.manual_seed(0)
    model, x = KeywordMatmuls().eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    assert result.model.out.in_features == 4
    _matches_a_zeroed(result, model, x)


class HandWrittenLinears(nn.Module):
    """Linear layers written as products with parameters: ``x @ W.t()`` (W [out, in], as
    Falcon's FalconLinear) and ``x @ V`` (V [in, out]), and a transposed weight that is
    also read elementwise (kept whole)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 6) * 0.5)
        self.b = nn.Parameter(torch.randn(8) * 0.1)
        self.v = nn.Parameter(torch.randn(8, 5) * 0.5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(x @ self.w.t() + self.b)
        return self.out(F.relu(h @ self.v))


def test_hand_written_linears_equivalence() -> None:
    torch.manual_seed(0)
    model, x = HandWrittenLinears().eval(), torch.randn(2, 4, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    assert pruned.w.shape == (4, 6) and pruned.b.shape == (4,) and pruned.v.shape == (4, 3)
    assert pruned.out.in_features == 3
    drop_h = sorted(set(range(8)) - set(result.plan["params"]["w"]["keep"]["0"]))
    drop_v = sorted(set(range(5)) - set(result.plan["params"]["v"]["keep"]["1"]))
    zeroed = HandWrittenLinears().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.w[drop_h] = 0
        zeroed.b[drop_h] = 0
        zeroed.v[:, drop_v] = 0
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_transposed_weight_also_read_elementwise_is_kept_whole() -> None:
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 6))
            self.out = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            wt = self.w.t()
            return self.out(x @ wt) + wt.sum()

    result = prune(Both(), torch.randn(3, 6), ratio=0.5)
    assert result.model.w.shape == (8, 6) and "w" in result.coverage.fixed


def test_square_weight_permuted_in_place_is_not_taken_for_its_transpose() -> None:
    class Square(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(6, 8)
            self.w = nn.Parameter(torch.randn(8, 8) * 0.5)
            self.out = nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:  # permute(0, 1) keeps W as it is
            return self.out(F.relu(F.relu(self.a(x)) @ self.w.permute(0, 1)))

    torch.manual_seed(0)
    model, x = Square().eval(), torch.randn(2, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=4)
    # W's elements are read through a view that is no transpose, element by element: its
    # rows (the contracted dim) go with a's channels, its columns stay (taken for W.t(), its
    # axes were cut the wrong way round)
    assert result.model.w.shape == (4, 8) and result.model.a.out_features == 4
    keep = result.plan["params"]["w"]["keep"]["0"]
    assert result.plan["modules"]["a"]["keep"]["out"] == keep
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.w[sorted(set(range(8)) - set(keep))] = 0
        for rows in (2, 5):
            x = torch.randn(rows, 6)
            torch.testing.assert_close(result.model(x), zeroed(x))


def test_unflatten_size_is_rewritten_and_replayed(tmp_path: Path) -> None:
    model = UnflattenDecoder().eval()
    z = torch.randn(2, 5)
    result = prune(model, z, ratio=0.5)
    assert result.model.unflatten.unflattened_size == (4, 3, 3)
    assert result.model.fc.out_features == 36 and result.model.up.in_channels == 4
    pk.save(result, tmp_path / "decoder")
    loaded = pk.load(tmp_path / "decoder", UnflattenDecoder().eval())
    assert loaded.unflatten.unflattened_size == (4, 3, 3)
    assert torch.equal(loaded(z), result.model(z))


def test_a_split_by_a_width_read_from_the_features_prunes_the_radix_conv() -> None:
    torch.manual_seed(0)
    model, x = SplitAttention().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5)
    assert result.model.conv.out_channels == result.model.fc2.out_channels == 16
    assert result.model.fc1.in_channels == result.model.head.in_channels == 8
    _check(model, x)


class Involution(nn.Module):
    """d-li14's involution: the unfolded input viewed as ``(b, self.groups,
    self.group_channels, k * k, h, w)``, a factor followed by dims without channels."""

    def __init__(self, channels: int = 32, kernel_size: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, channels, 3, padding=1)
        self.kernel_size, self.channels, self.group_channels = kernel_size, channels, 16
        self.groups = channels // self.group_channels
        self.conv1 = nn.Conv2d(channels, channels // 4, 1)
        self.conv2 = nn.Conv2d(channels // 4, kernel_size ** 2 * self.groups, 1)
        self.unfold = nn.Unfold(kernel_size, 1, (kernel_size - 1) // 2, 1)
        self.head = nn.Conv2d(channels, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.stem(x))
        weight = self.conv2(F.relu(self.conv1(x)))
        b, _, h, w = weight.shape
        weight = weight.view(b, self.groups, self.kernel_size ** 2, h, w).unsqueeze(2)
        out = self.unfold(x).view(b, self.groups, self.group_channels, self.kernel_size ** 2,
                                  h, w)
        return self.head((weight * out).sum(dim=3).view(b, self.channels, h, w))


def test_involution_rewrites_its_group_width() -> None:
    """Was: ``group_channels`` stayed 16 and the forward check failed."""
    torch.manual_seed(0)
    model, x = Involution().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert (pruned.groups, pruned.group_channels, pruned.channels) == (2, 8, 16)
    assert pruned.stem.out_channels == 16
    _check(model, x)


class BNAndPad(nn.Module):
    """DiverseBranchBlock's BNAndPadLayer: the border of the padded output holds values
    computed from the BatchNorm's own weight and bias, read directly."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = F.pad(self.bn(self.conv(x)), [1, 1, 1, 1])
        pad = self.bn.bias.detach() - self.bn.running_mean * self.bn.weight.detach() / \
            torch.sqrt(self.bn.running_var + self.bn.eps)
        pad = pad.view(1, -1, 1, 1)
        out[:, :, 0:1, :] = pad
        out[:, :, -1:, :] = pad
        out[:, :, :, 0:1] = pad
        out[:, :, :, -1:] = pad
        return self.head(out)


def test_a_norms_vector_read_directly_is_cut_with_its_channels() -> None:
    """Was: "read directly ... in a way that does not tell which axis holds its channels",
    though a vector has one axis, and the block was kept whole."""
    torch.manual_seed(0)
    model, x = BNAndPad().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        model.bn.running_mean.normal_()
        model.bn.bias.normal_()
    result = prune(model, x, ratio=0.5)
    assert result.model.bn.num_features == result.model.conv.out_channels == 8
    _check(model, x)
