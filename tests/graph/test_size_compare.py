"""A channel width read from a shape and compared with an int (graph/sizes.py): HF PVT's
``if num_channels != self.num_channels: raise`` in a later stage's patch embedding must
hold after pruning. Compared with one int attribute of the module holding it, the
attribute is rewritten with the channels kept; with a literal (or several attributes
holding it) the channels are kept whole, with the reason. Comparisons of batch or spatial
sizes, and those made by torch's or prunekit's own code, change nothing."""

from __future__ import annotations

import os

import pytest
import torch
from torch import Tensor, nn

import prunekit
from prunekit.structured import prune
from prunekit.structured.pruning import analyze


class PatchEmbed(nn.Module):
    """PVT's patch embedding: checks the width of its input, then a strided conv."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.num_channels = self.in_dim = in_dim
        self.height = 8  # of stage 2's input
        self.proj = nn.Conv2d(in_dim, dim, 2, stride=2)
        self.norm = nn.LayerNorm(dim)

    def mismatch(self, b: int, c: int, h: int) -> bool:
        return c != self.num_channels

    def forward(self, pixels: Tensor) -> tuple[Tensor, int, int]:
        b, c, h, _ = pixels.shape
        if self.mismatch(b, c, h):
            raise ValueError("the channel dimension does not match the configuration")
        x = self.proj(pixels)
        _, _, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class Unchecked(PatchEmbed):
    def mismatch(self, b: int, c: int, h: int) -> bool:
        return False


class LiteralCheck(PatchEmbed):
    def mismatch(self, b: int, c: int, h: int) -> bool:
        return c != 16


class TwoAttributeCheck(PatchEmbed):
    def mismatch(self, b: int, c: int, h: int) -> bool:
        return c != max(self.num_channels, self.in_dim)


class SpatialCheck(PatchEmbed):
    def mismatch(self, b: int, c: int, h: int) -> bool:
        return h != self.height or b == 3 or (b, h) != (2, 8)


class Stage(nn.Module):
    def __init__(self, embed: PatchEmbed, dim: int) -> None:
        super().__init__()
        self.embed = embed
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        x, height, width = self.embed(x)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2)


class TwoStages(nn.Module):
    """Stage 2 receives stage 1's width (16) and checks it with ``embed``'s ``mismatch``;
    stage 1 checks the model input's 3 channels, which no pruning changes."""

    def __init__(self, embed: type[PatchEmbed]) -> None:
        super().__init__()
        self.stage1 = Stage(PatchEmbed(3, 16), 16)
        self.stage2 = Stage(embed(16, 24), 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stage2(self.stage1(x)).mean((2, 3)))


def _model(embed: type[PatchEmbed]) -> TwoStages:
    torch.manual_seed(0)
    return TwoStages(embed).eval()


def _inputs() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _reasons(model: TwoStages) -> list[str]:
    graph = analyze(model, _inputs(), ignore=[model.head]).graph
    return [r for r in graph.blocked.values() if "compares a channel width" in r]


def test_a_width_compared_with_its_attribute_rewrites_it() -> None:
    model, x = _model(PatchEmbed), _inputs()
    with torch.no_grad():
        expected = model(x)
        same = prune(model, x, ratio=0.0, ignore=[model.head], strict=True).model
        assert torch.equal(same(x), expected)
    result = prune(model, x, ratio=0.5, ignore=[model.head], strict=True)
    pruned = result.model
    kept = pruned.stage1.embed.proj.out_channels
    assert kept < 16
    assert pruned.stage2.embed.num_channels == pruned.stage2.embed.proj.in_channels == kept
    assert pruned.stage2.embed.in_dim == 16  # read by nothing: left alone
    assert result.plan["attrs"] == {"stage2.embed": {"num_channels": kept}}
    assert pruned.stage1.embed.num_channels == 3
    assert model.stage2.embed.num_channels == 16  # the user's model is untouched
    with torch.no_grad():
        assert pruned(x).shape == expected.shape
    assert not _reasons(model)


@pytest.mark.parametrize("embed, names", [
    (LiteralCheck, "with a literal or an int from elsewhere"),
    (TwoAttributeCheck, "int attributes 'in_dim', 'num_channels', which all hold it"),
])
def test_a_width_compared_with_another_int_keeps_its_channels(embed: type[PatchEmbed],
                                                              names: str) -> None:
    model, x = _model(embed), _inputs()
    reasons = _reasons(model)
    assert len(reasons) == 1
    assert names in reasons[0] and "module 'stage2.embed'" in reasons[0]
    assert "(16)" in reasons[0] and "c != self.num_channels" in reasons[0]  # the fix
    result = prune(model, x, ratio=0.5, ignore=[model.head], strict=True)
    pruned = result.model
    assert pruned.stage1.embed.proj.out_channels == 16  # kept whole: the check holds
    assert pruned.stage1.fc1.out_features < 32 and pruned.stage2.embed.proj.out_channels < 24
    assert "stage2.embed" not in result.plan.get("attrs", {})
    with torch.no_grad():
        assert pruned(x).shape == (2, 5)


def test_comparing_batch_or_spatial_sizes_changes_nothing() -> None:
    x = _inputs()
    model, plain = _model(SpatialCheck), _model(Unchecked)
    assert not _reasons(model)
    result = prune(model, x, ratio=0.5, ignore=[model.head], strict=True)
    reference = prune(plain, x, ratio=0.5, ignore=[plain.head], strict=True)
    assert result.plan == reference.plan
    assert result.model.stage2.embed.height == 8
    with torch.no_grad():
        assert torch.equal(result.model(x), reference.model(x))


class Looked(nn.Module):
    """A width looked up in a dict, tested with ``in`` and sorted, and compared with a
    literal by code that runs from torch's and prunekit's folders: none of it is a
    comparison of the model's code, so the conv is pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.fc = nn.Linear(8, 4)
        self.library = [compile("c != 8", os.path.join(os.path.dirname(package.__file__),
                                                       "_compare.py"), "eval")
                        for package in (torch, prunekit)]
        self.seen: list[object] = []

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        c = y.shape[1]
        self.seen = [{8: "eight"}.get(c), c in (8, 16), sorted([c, 9]),
                     [eval(code, {}, {"c": c}) for code in self.library]]
        return self.fc(y.mean((2, 3)))


def test_lookups_and_library_comparisons_change_nothing() -> None:
    torch.manual_seed(0)
    model, x = Looked().eval(), torch.randn(2, 3, 5, 5)
    result = prune(model, x, ratio=0.5, ignore=[model.fc], strict=True)
    assert model.seen == ["eight", True, [8, 9], [False, False]]
    assert result.model.conv.out_channels == 4
    with torch.no_grad():
        assert result.model(x).shape == (2, 4)


class SelectiveKernel(nn.Module):
    """timm's SelectiveKernel: two branches stacked along a paths dim whose size is checked
    against ``self.num_paths``; a later sum over the paths joins their channels, so the
    paths dim carries none and the comparison stays true."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.num_paths = 2
        self.stem = nn.Conv2d(3, c, 1)
        self.paths = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2) for k in (1, 3))
        self.head = nn.Linear(c, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        stacked = torch.stack([p(x) for p in self.paths], dim=1)
        if stacked.shape[1] != self.num_paths:
            raise ValueError("expected one map per path")
        return self.head(stacked.sum(1).mean((2, 3)))


def test_a_stack_dim_that_ends_up_carrying_no_channels_binds_nothing() -> None:
    torch.manual_seed(0)
    model, x = SelectiveKernel().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5)
    assert result.model.paths[0].out_channels == 4 == result.model.paths[1].out_channels
    assert result.model.num_paths == 2 and result.plan["attrs"] == {}
    assert result.model(x).shape == (2, 4)
