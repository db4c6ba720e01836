"""Code that names channel positions: writes into a fixed part of a channel dim, indices
along one (``argmax``, ``max(x, dim).indices``), ``torch.arange`` sized by a width, and
``clamp`` with tensor bounds. Each of these pruned before and gave a model that differs
from the unpruned one with the removed inputs zeroed; now the positions the code names are
kept whole (or, for bounds, joined), and pruning stays exact."""

from __future__ import annotations

import math

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class Written(nn.Module):
    """``a`` (8 channels) → a write or a position-valued op along them → ``b``."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.other, self.b = nn.Linear(6, 8), nn.Linear(6, 2), nn.Linear(8, 3)
        self.table = nn.Embedding(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        if self.how == "slice_zero":
            y[:, 2:4] = 0.0
        elif self.how == "index_one":
            y[:, 3] = 1.0
        elif self.how == "slice_value":
            y[:, 2:4] = self.other(x)
        elif self.how == "arange":
            y = y * torch.arange(y.shape[1])
        elif self.how == "frequencies":  # sinusoidal features over the channel positions
            y = y + torch.sin(torch.arange(y.shape[-1]) / 8 * math.pi)
        elif self.how == "argmax":
            return self.b(self.table(y.argmax(1)))
        elif self.how == "max_indices":
            return self.b(self.table(torch.max(y, dim=1).indices))
        return self.b(torch.relu(y))


@pytest.mark.parametrize("how", ["slice_zero", "index_one", "slice_value", "arange",
                                 "frequencies", "argmax", "max_indices"])
def test_named_positions_keep_their_channels(how: str) -> None:
    torch.manual_seed(0)
    model, x = Written(how).eval(), torch.randn(3, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    assert result.model.a.out_features == 8
    assert "a.weight" in result.coverage.fixed
    with torch.no_grad():  # (argmax: the table's own width still prunes)
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


class MaxValues(nn.Module):
    """CBAM's spatial attention reads the channel max's values only: still prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.spatial = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.a(x))
        peak = torch.max(y, dim=1, keepdim=True)[0]
        return self.b(y * torch.sigmoid(self.spatial(peak)))


def test_channel_max_values_alone_still_prune() -> None:
    result = prune(MaxValues().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.model.a.out_channels == 4


class HalfWritten(nn.Module):
    """``out[:, :n // 2] = 0`` with ``n`` the own width: the halves shrink alike."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        y[:, : y.shape[1] // 2] = 0.0
        return self.b(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_half_written_by_own_width_prunes_exactly(seed: int) -> None:
    torch.manual_seed(0)
    model, x = HalfWritten().eval(), torch.randn(3, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=seed)
    keep = result.plan["modules"]["a"]["keep"]["out"]
    assert len(keep) == 4 and sum(k < 4 for k in keep) == 2
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


class Joined(nn.Module):
    """``a`` and ``c`` (8 channels each) meet position by position, then ``b``: a write
    through a mask of ``c``'s sign (``y[z < 0] = 0``, as ``torch.where``), or ``clamp``
    with ``c``'s output as a bound (was: a unary op, so ``c`` was cut on its own)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.c, self.b = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        y, z = self.a(x), self.c(x)
        if self.how == "mask":
            y[z < 0] = 0.0
        elif self.how == "clamp_min":
            y = y.clamp(min=z)
        elif self.how == "clamp_position":
            y = torch.clamp(y, z)
        else:
            y = y.clip(max=z)
        return self.b(y)


@pytest.mark.parametrize("how", ["mask", "clamp_min", "clamp_position", "clip_max"])
def test_tensors_meeting_elementwise_are_cut_alike(how: str) -> None:
    torch.manual_seed(0)
    model, x = Joined(how).eval(), torch.randn(3, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    plan = result.plan["modules"]
    assert plan["a"]["keep"]["out"] == plan["c"]["keep"]["out"]
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


def test_clamp_with_numbers_stays_pointwise() -> None:
    class Numbers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(self.a(x).clamp(-1, 1))

    result = prune(Numbers().eval(), torch.randn(3, 6), ratio=0.5)
    assert result.model.a.out_features == 4


class XLAttention(nn.Module):
    """Transformer-XL names the per-head width ``d_head``: a size, not a head count."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.n_head, self.d_head = heads, d // heads
        self.qkv, self.o = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q, k, v = (part.view(b, t, self.n_head, self.d_head).transpose(1, 2)
                   for part in self.qkv(x).chunk(3, -1))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.o(y.transpose(1, 2).reshape(b, t, self.n_head * self.d_head))


def test_d_head_is_a_per_head_width() -> None:
    """Was: ``d_head`` counted as a head count, and the heads were kept whole."""
    torch.manual_seed(0)
    model, x = XLAttention().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    assert pruned.qkv.out_features == 24 and pruned.n_head == 1 and pruned.d_head == 8
    dropped = sorted(set(range(16)) - set(result.plan["modules"]["o"]["keep"]["in"]))
    zeroed = XLAttention().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.o.weight[:, dropped] = 0
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)


class SegNet(nn.Module):
    """SegNet's decoder unpools with the encoder's pooling indices, channel by channel."""

    def __init__(self, functional: bool) -> None:
        super().__init__()
        self.functional = functional
        self.e1, self.e2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.d2, self.d1 = nn.Conv2d(16, 8, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1)
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.functional:
            return torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        return self.pool(x)

    def _unpool(self, x: Tensor, indices: Tensor) -> Tensor:
        if self.functional:
            return torch.nn.functional.max_unpool2d(x, indices, 2)
        return self.unpool(x, indices)

    def forward(self, x: Tensor) -> Tensor:
        p1, i1 = self._pool(torch.relu(self.e1(x)))
        p2, i2 = self._pool(torch.relu(self.e2(p1)))
        g2 = torch.relu(self.d2(self._unpool(p2, i2)))
        return self.d1(self._unpool(g2, i1))


@pytest.mark.parametrize("functional", [True, False])
def test_unpooling_joins_values_and_indices_channel_by_channel(functional: bool) -> None:
    """Was: no handler for max_unpool2d. The decoder's channels after ``d2`` are unpooled
    with the indices of ``e1``'s channels, so ``d2``'s outputs and ``e1``'s go together."""
    torch.manual_seed(0)
    model, x = SegNet(functional).eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    plan = result.plan["modules"]
    assert plan["d2"]["keep"]["out"] == plan["e1"]["keep"]["out"]
    assert result.model.e2.out_channels == 8
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


class Ordered(nn.Module):
    """Order statistics over the channels: the values alone, or the indices read too."""

    def __init__(self, op: str, indices: bool) -> None:
        super().__init__()
        self.op, self.indices = op, indices
        self.a, self.b, self.c = nn.Linear(6, 8), nn.Linear(8, 3), nn.Linear(1, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.a(x)
        values, positions = getattr(torch, self.op)(y, dim=1, keepdim=True)
        extra = positions.float() if self.indices else values
        return self.b(y) + self.c(extra)


@pytest.mark.parametrize("op", ["nanmedian", "mode"])
@pytest.mark.parametrize("indices", [True, False])
def test_nanmedian_and_mode_over_channels(op: str, indices: bool) -> None:
    """Was: no handler. The values alone leave the channels free (as median's); the
    indices, once read, keep them whole."""
    model, x = Ordered(op, indices).eval(), torch.randn(3, 6)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == (8 if indices else 4)


def test_bucketize_passes_the_channels_through() -> None:
    class Bucketed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.table, self.b = nn.Linear(6, 8), nn.Embedding(5, 4), nn.Linear(4, 3)
            self.register_buffer("edges", torch.tensor([-1.0, 0.0, 1.0, 2.0]))

        def forward(self, x: Tensor) -> Tensor:
            ids = torch.bucketize(self.a(x), self.edges)
            return self.b(self.table(ids)).sum(1)

    result = prune(Bucketed().eval(), torch.randn(3, 6), ratio=0.5)
    assert result.model.a.out_features == 4 and result.model.table.embedding_dim == 2


class PaddedCopy(nn.Module):
    """A copy of ``h`` padded to a length an attribute holds (``out[:, :, :L] = h``), and a
    static key/value cache sized from ``k.shape`` and an attribute's maximum length."""

    def __init__(self, cache: bool) -> None:
        super().__init__()
        self.cache, self.max_len, self.heads = cache, 10, 2
        self.c1, self.c2 = nn.Conv1d(3, 8, 3, padding=1), nn.Conv1d(8, 4, 3, padding=1)
        self.q, self.k, self.v, self.o = (nn.Linear(8, 8) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        if not self.cache:
            h = torch.relu(self.c1(x))
            out = h.new_zeros(h.shape[0], h.shape[1], self.max_len)
            out[:, :, : h.shape[2]] = h
            return self.c2(out)
        b, t, _ = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        keys = k.new_zeros(b, k.shape[1], self.max_len, k.shape[3])
        values = torch.zeros_like(keys)
        keys[:, :, 2:2 + t], values[:, :, 2:2 + t] = k, v
        scores = (q @ keys.transpose(-1, -2) * 0.3).softmax(-1)
        return self.o((scores @ values).transpose(1, 2).reshape(b, t, -1))


def test_a_copy_padded_to_an_attribute_length_prunes() -> None:
    """Was: the length attribute labelled the buffer's time dim, its channel width read
    from ``h.shape`` could not follow, and every channel stayed whole."""
    torch.manual_seed(0)
    model, x = PaddedCopy(cache=False).eval(), torch.randn(2, 3, 7)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    assert result.model.c1.out_channels == 4 and result.model.max_len == 10
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


def test_a_static_cache_sized_from_the_keys_prunes_the_head_dims() -> None:
    torch.manual_seed(0)
    model, x = PaddedCopy(cache=True).eval(), torch.randn(2, 3, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    keep = torch.tensor(result.plan["modules"]["q"]["keep"]["out"])
    assert result.model.q.out_features == result.model.o.in_features == 4
    gone = sorted(set(range(8)) - set(keep.tolist()))
    zeroed = PaddedCopy(cache=True).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():  # the removed dims of every head: rows of q, k, v, columns of o
        for proj in (zeroed.q, zeroed.k, zeroed.v):
            proj.weight[gone], proj.bias[gone] = 0, 0
        torch.testing.assert_close(result.model(x), zeroed(x))
