"""Seeded random networks: the fast-path trace equals the general path, and prune is clean.

Each seed draws a recipe of building blocks (convs of every grouping, norms, gates,
residuals, cats, splits, shuffles, permutes, views, slices, in-place ops, broadcast
parameters, token blocks with attention) whose shapes are valid by construction, and checks
that (a) switching the vector-form fast paths off changes nothing in the trace and (b)
``prune(model, x, ratio=0.5)`` returns a model whose forward runs with the same output
shapes (a prunekit error that refuses up front fails a seed too: every seed prunes now). A
failing seed is rebuilt by ``_build(seed)``; ``_RandomNet.recipe`` names its blocks. About
one seed in eight used to raise PruneValidationError (the pruned model's own check); the
minimised causes are the regressions at the end and in tests/graph/test_fuzz_regressions.py.
Now all of seeds 0-3999 prune, and a PruneValidationError fails a seed (seed 12, a gate
times a group sum over a cat of a depthwise output with itself, was the last below 1000: the
sum's fixed width had NEUTRAL labels, which let the gate's channels shrink; seeds 1541, 1574
and 2159 bound ``self.groups`` to the wrong factor of a group view).
"""

from __future__ import annotations

import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from tests.graph.fuzz_blocks import (
    Shape,
    _Block,
    _CatChannels,
    _CatOther,
    _Conv,
    _GroupView,
    _Norm,
    _Permute,
    _Residual,
    _Shuffle,
    _Slice,
    _SplitChannels,
    _SplitSpatial,
    _SqueezeExcite,
    _width,
)
from tests.graph.fuzz_more_blocks import (
    _Attention,
    _Broadcast,
    _InPlace,
    _Mutate,
    _Pool,
    _Reduce,
    _TokenLinear,
    _TokenMisc,
    _TokenMlp,
    _ToTokens,
    _Unsqueeze,
)
from tests.graph.test_trace_fast_paths import _general_only, _summary, count_vector_hits
from torch import Tensor, nn

import prunekit
from prunekit.errors import PrunekitError, PruneValidationError
from prunekit.graph.labels import varies
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter

SEEDS = range(300)
SLOW_SEEDS = range(300, 2300)

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
    error that refuses up front; anything else fails, PruneValidationError included (the
    pruned model's own forward check failing means the dependency graph was wrong)."""
    with torch.no_grad():
        reference = model(x).shape
    try:
        result = prunekit.prune(model, x, ratio=0.5)
    except PruneValidationError:
        raise
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
    assert _prunes_cleanly(model, x), "prune refused"


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_random_net_sweep(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    model, x = _build(seed)
    _traces_agree(model, x, monkeypatch)
    assert _prunes_cleanly(model, x), "prune refused"


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
    assert hits[0] >= 250  # 287 when written: a fast path that stops matching fails this


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
    ``self.groups`` = 4 groups (half of seed 12): the labels vary along the group factor
    only."""

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


class _GatedGroupSum(_SumOfGroups):
    """Seed 12, minimised: the group sum above, times a squeeze-excite gate. The sum has
    ``c // self.groups`` = 2 channels whatever is pruned (the group count shrinks with the
    channels), so the gate's 2 channels, which meet them position by position, stay too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(2, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dw(self.stem(x))
        x = torch.cat([x, x], 1)
        b, c, h, w = x.shape
        y = x.view(b, self.groups, c // self.groups, h, w).sum(1)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.head(y * gate)


def test_gate_on_a_group_sum_keeps_its_width() -> None:
    torch.manual_seed(0)
    model = _GatedGroupSum().eval()
    before = sum(p.numel() for p in model.parameters())
    pruned = _prune_keeps_shapes(model, torch.randn(2, 3, 4, 4)).model
    assert isinstance(pruned, _GatedGroupSum)
    assert (pruned.fc2.out_channels, pruned.head.in_channels) == (2, 2)
    assert (pruned.stem.out_channels, pruned.dw.out_channels, pruned.groups) == (1, 2, 2)
    assert pruned.fc1.out_channels == 2
    assert sum(p.numel() for p in pruned.parameters()) < before


class _GatedContraction(nn.Module):
    """A gate over tokens times a [B, T, T] tensor that sums q·k over all their channels (by
    matmul, einsum or a mean over the channel dim): no pruning resizes that tensor, so the
    gate's T outputs stay, while q and k shrink together."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.q, self.k = nn.Linear(8, 6), nn.Linear(8, 6)
        self.gate, self.head = nn.Linear(8, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        q, k = self.q(x), self.k(x)
        if self.kind == "matmul":
            scores = q @ k.transpose(1, 2)
        elif self.kind == "einsum":
            scores = torch.einsum("btc,bsc->bts", q, k)
        else:
            scores = (q.unsqueeze(2) * k.unsqueeze(1)).mean(-1)
        return self.head(scores * torch.sigmoid(self.gate(x)))


@pytest.mark.parametrize("kind", ["matmul", "einsum", "mean"])
def test_gate_on_a_contraction_keeps_its_width(kind: str) -> None:
    torch.manual_seed(0)
    model = _GatedContraction(kind).eval()
    pruned = _prune_keeps_shapes(model, torch.randn(2, 5, 8)).model
    assert isinstance(pruned, _GatedContraction)
    assert pruned.gate.out_features == 5
    assert pruned.q.out_features == pruned.k.out_features == 3


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
    pruned = _prune_keeps_shapes(model, torch.randn(2, 3, 4, 4)).model
    # the 7-unit group keeps 4: a keeps its best channel (not none), the residual stream 3
    assert (pruned.a.out_channels, pruned.stem.out_channels, pruned.head.in_channels) == (1, 3, 4)
