"""Widths read from a tensor's shape (graph/sizes.py): ``B, N, C = x.shape`` gives ints that
remember the channels they count, so a ``reshape(B, C, -1)`` of another tensor couples its
channels with ``x``'s, and a width derived from one (``C // heads``) keeps what it sizes
whole instead of going stale."""

from __future__ import annotations

import copy
import pickle

import torch
from torch import Tensor, nn

from prunekit.io.checkpoint import load, save
from prunekit.structured import prune
from prunekit.structured.pruning import analyze


class SRAttention(nn.Module):
    """PVT-v2's spatial-reduction attention: the ``sr`` conv's output is sized by ``C``,
    the residual width read from ``x.shape``."""

    def __init__(self, dim: int, heads: int = 4, sr: int = 2, norm: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, stride=sr)
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()

    def forward(self, x: Tensor, hw: tuple[int, int]) -> Tensor:
        B, N, C = x.shape
        H, W = hw
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        x_ = x.permute(0, 2, 1).reshape(B, C, H, W)
        x_ = self.norm(self.sr(x_).reshape(B, C, -1).permute(0, 2, 1))
        k = self.k(x_).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x_).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class PVTLike(nn.Module):
    def __init__(self, dim: int = 16, norm: bool = True) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 2, stride=2)
        self.attn = SRAttention(dim, norm=norm)
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        _, _, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = x + self.attn(x, (H, W))
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


def _inputs() -> Tensor:
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _model(**kwargs: bool) -> nn.Module:
    torch.manual_seed(0)
    return PVTLike(**kwargs).eval()


def test_spatial_reduction_couples_sr_with_the_residual() -> None:
    model, x = _model(), _inputs()
    graph = analyze(model, x, ignore=[model.head]).graph
    residual = [g for g in graph.groups if any(m.name == "embed" for m in g.members)]
    assert len(residual) == 1
    names = {m.name for m in residual[0].members if m.root}
    assert {"embed", "attn.sr"} <= names  # sr's output follows C, the residual width
    # (at 0.4 the sr group, cut on its own, would keep 10 of 16 channels and the residual
    # 12: reshape(B, C, -1) then fails; coupled, whole heads of both go)
    result = prune(model, x, ratio=0.4, ignore=[model.head])
    pruned = result.model
    assert pruned.embed.out_channels == 12 and pruned.attn.num_heads == 3
    assert pruned.attn.sr.out_channels == pruned.embed.out_channels
    assert pruned(x).shape == (2, 5)


def test_pruning_equals_zeroing_the_removed_channels() -> None:
    # without the LayerNorm over channels, cutting equals zeroing what reads the cut channels
    model, x = _model(norm=False), _inputs()
    result = prune(model, x, ratio=0.4, importance="random", seed=3, ignore=[model.head])
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for name, entry in result.plan["modules"].items():
            keep = entry["keep"].get("in")
            module = zeroed.get_submodule(name)
            if keep is None:
                continue
            removed = torch.ones(module.weight.shape[1], dtype=torch.bool)
            removed[torch.tensor(keep)] = False
            module.weight[:, removed] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
    assert result.model.embed.out_channels < 16


def test_ratio_zero_is_identical_and_save_load_round_trips(tmp_path: object) -> None:
    model, x = _model(), _inputs()
    with torch.no_grad():
        expected = model(x)
    same = prune(model, x, ratio=0.0, ignore=[model.head])
    with torch.no_grad():
        assert torch.equal(same.model(x), expected)
    result = prune(model, x, ratio=0.4, ignore=[model.head])
    path = f"{tmp_path}/pvt"
    save(result, path)
    loaded = load(path, _model())
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


class DerivedHeadSize(nn.Module):
    """EdgeNeXt-style: the per-head size ``C // self.num_heads`` is computed from the input
    width read from the shape, so the heads stay and every head shrinks with that width."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.inp = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.inp(x)
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        y = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.out(x + self.proj(y))


def test_per_head_size_derived_from_the_input_width_shrinks_it_per_head() -> None:
    torch.manual_seed(0)
    model, x = DerivedHeadSize().eval(), torch.randn(2, 5, 8)
    graph = analyze(model, x, ignore=[model.out]).graph
    assert not any("C // self.n_head" in r or "computed from a width read from a tensor's "
                   "shape" in r for r in graph.blocked.values())
    result = prune(model, x, ratio=0.5, ignore=[model.out])
    width = result.model.inp.out_features
    assert width == 8 and result.model.num_heads == 2
    assert result.model.qkv.weight.shape == (3 * width, width)
    assert result.model.proj.weight.shape == (width, width)
    assert result.model(x).shape == (2, 5, 4)


class TokenSizes(nn.Module):
    """Ints from dims that carry no channels (batch, tokens, spatial): as before."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 6)
        self.seen: dict[object, int] = {}

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        B, C, H, W = y.shape
        tokens = y.reshape(B, C, H * W).transpose(1, 2)
        self.feat_size = (H, W)  # a model that stores sizes: plain ints after the trace
        pos = y.new_zeros(B, H * W, 1)
        return self.fc(tokens + pos).reshape(B, H, W, -1).mean((1, 2))


def test_ints_from_dims_without_channels_change_nothing() -> None:
    torch.manual_seed(0)
    model, x = TokenSizes().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5, ignore=[model.fc])
    assert result.model.conv.out_channels == 4
    # the attribute the traced and checked forwards set is gone again, as before prune
    assert not hasattr(model, "feat_size") and not hasattr(result.model, "feat_size")
    assert result.model(x).shape == (2, 6)
    assert type(result.model.feat_size[0]) is int


class IntUser(nn.Module):
    """Uses a shape's ints the way user code does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.report: list[object] = []

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        B, C, H, W = y.shape
        c = y.size(1)
        d = y.size()[-1]
        cache = {C: "c", (H, W): "hw"}
        self.report = [
            type(C) is not int, C + 1, C * 2, C // 3, C - 1, 2 ** C, C % 3, -C, C / 2,
            C == 8, hash(C) == hash(8), cache[8], cache[(6, 6)], f"{C}:{H:03d}", str(C),
            list(range(C))[-1], torch.Size([B, C]) == (2, 8), c == C, d == W,
            sorted([C, H, 1]), max(C, H), int(C), float(C), bool(C), pickle.loads(
                pickle.dumps(C)), copy.deepcopy((C, H)), type(pickle.loads(pickle.dumps(C))),
        ]
        return y.reshape(B, C, H * W).mean(-1)


def test_shape_ints_behave_like_ints() -> None:
    model, x = IntUser().eval(), torch.randn(2, 3, 6, 6)
    analyze(model, x)
    traced = list(model.report)
    assert traced[0] is True  # the trace hands out SizeInts...
    with torch.no_grad():
        model(x)
    plain = model.report
    assert plain[0] is False
    assert traced[1:] == plain[1:]  # ... that behave exactly like the plain ints


def test_size_int_arithmetic_keeps_provenance() -> None:
    from prunekit.graph.sizes import SizeInt, SizeTracker

    tracker = SizeTracker()
    labels = torch.arange(24).reshape(2, 3, 4)
    B, H, D = tracker.read(labels, None, (labels,), {}, torch.Size([2, 3, 4]))
    assert isinstance(H * D, SizeInt) and (H * D)._exact and (H * D)._parts[0][1] == (1, 2)
    assert isinstance(D // 2, SizeInt) and not (D // 2)._exact
    assert isinstance(2 * B, SizeInt) and not (2 * B)._exact
    assert type(H * 0.5) is float and (H * torch.ones(1)).dtype == torch.float32
    assert H * "x" == "xxx" and [0] * H == [0, 0, 0] and (H, D) * B == (3, 4, 3, 4)
    tracker.close([])
    assert H._parts[0][0].labels is None  # the trace's labels are dropped
    assert type(copy.copy(H)) is int and type(pickle.loads(pickle.dumps(H))) is int


class _OneHeadAttention(nn.Module):
    """MaxViT's ``qkv(x).view(B, -1, self.num_heads, self.dim_head * 3)``: with one head the
    channels vary along the last factor only, whose size is computed from an attribute (not
    read from a shape), so it cannot follow a cut: the head's channels are kept whole."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.dim_head = 1, dim
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        q, k, v = self.qkv(x).view(b, -1, self.num_heads, self.dim_head * 3).transpose(
            1, 2).chunk(3, dim=3)
        attn = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, -1, self.dim_head))


def test_a_trailing_size_computed_from_attributes_keeps_its_channels() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), _OneHeadAttention(), nn.Linear(16, 4)).eval()
    x = torch.randn(2, 5, 8)
    result = prune(model, x, ratio=0.5, ignore=[model[2]])
    attn = result.model[1]
    assert attn.qkv.out_features == 48 and attn.dim_head == 16  # the head is kept whole
    assert result.model[0].out_features == 8  # the rest is pruned
    assert any("fixes in its code" in e.reason for e in result.coverage.entries)
    with torch.no_grad():
        assert result.model(x).shape == (2, 5, 4)
