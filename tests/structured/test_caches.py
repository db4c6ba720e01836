"""Tensors a model caches in dict attributes (timm's LeViT / EfficientFormer / TinyViT
``attention_bias_cache``): the trace recomputes them from their parameters, the pruned
model starts without the stale ones, and the user's model keeps its own."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit._caches import copy_model, recomputed_caches
from prunekit.io.checkpoint import load, save
from prunekit.structured import prune


def _bias_table(module: nn.Module, heads: int, res: int, *, persistent: bool) -> None:
    """LeViT's attention biases: one per head and distinct offset on a ``res`` × ``res``
    grid, and the index of each pair of points' offset."""
    points = list(itertools.product(range(res), range(res)))
    offsets: dict[tuple[int, int], int] = {}
    idxs = [offsets.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(offsets))
            for a in points for b in points]
    module.attention_biases = nn.Parameter(torch.randn(heads, len(offsets)))
    module.register_buffer("attention_bias_idxs",
                           torch.tensor(idxs).view(len(points), len(points)),
                           persistent=persistent)


class BiasCacheAttention(nn.Module):
    """LeViT's attention: per-head biases over relative offsets, gathered once per device
    in eval mode and kept in ``attention_bias_cache``; heads merged into ``val_attn_dim``."""

    def __init__(self, dim: int = 24, heads: int = 4, key_dim: int = 6, res: int = 3) -> None:
        super().__init__()
        self.num_heads, self.key_dim = heads, key_dim
        self.val_attn_dim = heads * key_dim
        self.qkv = nn.Linear(dim, heads * key_dim * 3)
        self.proj = nn.Linear(heads * key_dim, dim)
        _bias_table(self, heads, res, persistent=False)
        self.attention_bias_cache: dict[str, Tensor] = {}

    def biases(self, device: torch.device) -> Tensor:
        if self.training:
            return self.attention_biases[:, self.attention_bias_idxs]
        key = str(device)
        if key not in self.attention_bias_cache:
            self.attention_bias_cache[key] = self.attention_biases[:, self.attention_bias_idxs]
        return self.attention_bias_cache[key]

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, self.num_heads, -1).split([self.key_dim] * 3, dim=3)
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        attn = (q @ k.transpose(-2, -1) + self.biases(x.device)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, self.val_attn_dim))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = BiasCacheAttention()
        self.head = nn.Linear(24, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head((x + self.attn(x)).mean(1))


def _net_and_input() -> tuple[Net, Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 9, 24)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("filled", ["fresh", "no_grad", "grad"])
def test_cached_biases_are_cut_with_their_heads(filled: str, inplace: bool) -> None:
    model, x = _net_and_input()
    if filled == "no_grad":
        with torch.no_grad():
            model(x)
    elif filled == "grad":
        model(x)  # the cache holds a tensor autograd recorded: not a graph leaf
    with torch.no_grad():
        expected = model(x) if filled != "fresh" else None
    cached = dict(model.attn.attention_bias_cache)
    biases = model.attn.attention_biases.detach().clone()
    result = prune(model, x, ratio=0.5, ignore=[model.head], inplace=inplace)
    pruned = result.model.attn
    assert pruned.num_heads == 2 and pruned.val_attn_dim == 12
    kept = result.plan["params"]["attn.attention_biases"]["keep"]["0"]
    assert torch.equal(pruned.attention_biases, biases[kept])
    with torch.no_grad():
        assert result.model(x).shape == (2, 5)
    # the validation forward cached the pruned biases, not the old ones
    assert all(t.shape[0] == 2 for t in pruned.attention_bias_cache.values())
    if not inplace:  # the user's model, its cache included, is as it was
        assert model.attn.attention_bias_cache.keys() == cached.keys()
        assert all(model.attn.attention_bias_cache[k] is v for k, v in cached.items())
        if expected is not None:
            with torch.no_grad():
                assert torch.equal(model(x), expected)


def test_cached_model_at_ratio_zero_and_reloaded(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, x = _net_and_input()
    with torch.no_grad():
        model(x)
        expected = model(x)
    same = prune(model, x, ratio=0.0, ignore=[model.head])
    with torch.no_grad():
        assert torch.equal(same.model(x), expected)
    result = prune(model, x, ratio=0.5, ignore=[model.head])
    save(result, tmp_path / "p")
    fresh, _ = _net_and_input()
    with torch.no_grad():
        fresh(x)  # a base model that cached its full-width biases before the replay
    loaded = load(tmp_path / "p", fresh)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


class Recorder(nn.Module):
    """Writes into a dict attribute that is not a cache: the trace's entries are removed
    again; what was there before stays."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.seen: dict[tuple[int, ...], Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        self.seen[tuple(x.shape)] = y.mean()
        return y.mean((2, 3))


def test_dict_entries_the_trace_adds_are_removed() -> None:
    model = Recorder()
    earlier = torch.tensor(1.0)
    model.seen[(1,)] = earlier
    with recomputed_caches(model.modules()):
        model(torch.randn(1, 3, 8, 8))
        assert len(model.seen) == 2
    assert model.seen == {(1,): earlier}


class Stateful(nn.Module):
    """Keeps state between calls in plain attributes: a cache that starts as None (PyG's
    ``GCNConv(cached=True)``), an attribute its forward adds, and a counter."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self._cached_norm: Tensor | None = None
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        if self._cached_norm is None:
            self._cached_norm = x.norm(dim=1, keepdim=True)
        h = self.a(x / self._cached_norm).relu()
        self.last_activation = h.mean()
        return self.b(h)


def test_prune_leaves_the_models_plain_attributes_as_they_were() -> None:
    torch.manual_seed(0)
    model = Stateful().eval()
    result = prune(model, torch.randn(5, 8), ratio=0.5)
    assert model._cached_norm is None and not hasattr(model, "last_activation")
    assert result.model.a.out_features == 8
    x = torch.randn(3, 8)  # another batch: no norm cached from the example's 5 rows
    with torch.no_grad():
        assert result.model(x).shape == (3, 4)


def test_copy_model_detaches_non_leaf_tensors_and_empties_caches() -> None:
    model, x = _net_and_input()
    model(x)
    model.attn.extra = {"sum": model.attn.attention_biases.sum() * 2}  # not a graph leaf
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    copied = copy_model(model)
    assert copied.attn.attention_bias_cache == {} and len(model.attn.attention_bias_cache) == 1
    assert copied.attn.extra["sum"].is_leaf
    assert torch.equal(copied.attn.extra["sum"], model.attn.extra["sum"].detach())
    assert copied.attn.attention_biases is not model.attn.attention_biases


class _StaticCacheAttention(nn.Module):
    """Meta llama's static KV cache: float buffers written at ``[:bsz, start:start + T]``."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.n_local_heads, self.head_dim = heads, dim // heads
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.register_buffer("cache_k", torch.zeros(4, 32, heads, self.head_dim),
                             persistent=False)
        self.register_buffer("cache_v", torch.zeros(4, 32, heads, self.head_dim),
                             persistent=False)

    def forward(self, x: torch.Tensor, start_pos: int) -> torch.Tensor:
        bsz, seqlen, _ = x.shape
        xq, xk, xv = (w(x).view(bsz, seqlen, self.n_local_heads, self.head_dim)
                      for w in (self.wq, self.wk, self.wv))
        self.cache_k[:bsz, start_pos:start_pos + seqlen] = xk
        self.cache_v[:bsz, start_pos:start_pos + seqlen] = xv
        keys = self.cache_k[:bsz, :start_pos + seqlen].transpose(1, 2)
        values = self.cache_v[:bsz, :start_pos + seqlen].transpose(1, 2)
        out = F.scaled_dot_product_attention(xq.transpose(1, 2), keys, values)
        return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))


def test_a_static_cache_keeps_heads_with_the_reason_that_holds() -> None:
    # the coverage also said the cache "is sliced along its channel axis by sizes written in
    # the code": it is sliced along batch and time only
    torch.manual_seed(0)
    model = _StaticCacheAttention().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (nothing prunable: "removed nothing")
        result = prune(model, (torch.randn(2, 5, 32), 0), ratio=0.5)
    assert result.model.n_local_heads == 4
    reasons = str(result.coverage)
    assert "__setitem__ writes to" in reasons and "sliced along its channel axis" not in reasons


class AttributeCacheAttention(nn.Module):
    """The official EfficientFormer / LeViT attention: in eval mode the bias table is cached
    in a plain attribute, ``self.ab = self.attention_biases[:, self.attention_bias_idxs]``,
    which ``train()`` deletes and rebuilds (before: every head kept whole, "would make it
    again at its unpruned width"; it is rebuilt from the cut table)."""

    def __init__(self, dim: int = 32, key_dim: int = 8, heads: int = 4, res: int = 4) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.d = heads, key_dim, 2 * key_dim
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + self.d))
        self.proj = nn.Linear(heads * self.d, dim)
        _bias_table(self, heads, res, persistent=True)

    @torch.no_grad()
    def train(self, mode: bool = True) -> AttributeCacheAttention:
        super().train(mode)
        if mode and hasattr(self, "ab"):
            del self.ab
        else:
            self.ab = self.attention_biases[:, self.attention_bias_idxs]
        return self

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, self.num_heads, -1).permute(0, 2, 1, 3).split(
            [self.key_dim, self.key_dim, self.d], dim=3)
        bias = self.attention_biases[:, self.attention_bias_idxs] if self.training else self.ab
        attn = (q @ k.transpose(-2, -1) * self.key_dim ** -0.5 + bias).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


def test_a_cache_rebuilt_from_the_cut_table_lets_heads_go(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = AttributeCacheAttention().eval(), torch.randn(2, 16, 32)
    result = prune(model, x, ratio=0.5, ignore=[model.proj])
    pruned = result.model
    assert pruned.num_heads == 2 and pruned.ab.shape == (2, 16, 16)
    removed = [i for i in range(64) if i not in result.plan["modules"]["proj"]["keep"]["in"]]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.proj.weight[:, removed] = 0
        expected = zeroed(x)
        torch.testing.assert_close(pruned(x), expected)
        pruned.train()
        pruned.eval()  # the cache rebuilt from the cut table
        torch.testing.assert_close(pruned(x), expected)
        save(result, tmp_path / "p")
        torch.manual_seed(0)
        torch.testing.assert_close(load(tmp_path / "p", AttributeCacheAttention().eval())(x),
                                   expected)
