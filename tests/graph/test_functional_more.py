"""Functional calls with the model's own tensors: ``F.layer_norm`` passed a width attribute,
``F.prelu`` with a slope vector, ``F.conv_transpose2d`` with a parameter weight (also the
encoder's weight reused by a tied decoder), ``torch.sparse.mm`` by a graph's adjacency, a
rotary table made by ``torch.outer`` with an ``inv_freq`` buffer, ``index_copy_`` into a
cache along time and ``F.gumbel_softmax``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class LayerNormed(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.width, self.shape = how, 16, (16,)
        self.a = nn.Linear(6, 16)
        self.w, self.b = nn.Parameter(torch.rand(16) + 0.5), nn.Parameter(torch.randn(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))
        shape = {"tuple attribute": self.shape, "int attribute": (self.width,),
                 "shape read": h.shape[-1:], "literal": [16]}[self.how]
        return self.head(F.layer_norm(h, shape, self.w, self.b))


@pytest.mark.parametrize("how", ["tuple attribute", "int attribute", "shape read"])
def test_layer_norm_width_follows(how: str) -> None:
    torch.manual_seed(0)
    model, x = LayerNormed(how).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.a.out_features == pruned.w.numel() == pruned.head.in_features == 8
    if how == "tuple attribute":
        assert pruned.shape == (8,)
    if how == "int attribute":
        assert pruned.width == 8
    assert pruned(x).shape == (2, 5, 3)


def test_layer_norm_width_written_as_a_literal_keeps_the_channels() -> None:
    model, x = LayerNormed("literal").eval(), torch.randn(2, 5, 6)
    model.width = 15  # (an attribute of equal value would be taken for the literal)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == 16
    assert any("normalized_shape" in why for why in result.coverage.fixed.values())


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 12, 3, padding=1)
        self.slope = nn.Parameter(torch.rand(12))
        self.up = nn.Parameter(torch.randn(12, 10, 2, 2) * 0.2)  # [in, out, k, k]
        self.up_bias = nn.Parameter(torch.randn(10))
        self.head = nn.Conv2d(10, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.prelu(self.a(x), self.slope)
        return self.head(F.relu(F.conv_transpose2d(h, self.up, self.up_bias, stride=2)))


def test_prelu_and_transposed_conv_with_parameters_match_zeroed_inputs() -> None:
    torch.manual_seed(0)
    model, x = Functional().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    pruned = result.model
    assert pruned.a.out_channels == pruned.slope.numel() == pruned.up.shape[0] == 6
    assert pruned.up.shape[1] == pruned.up_bias.numel() == pruned.head.in_channels == 5
    zeroed = _zero_removed_inputs(model, result.plan)  # (the head's removed inputs)
    kept = result.plan["modules"]["a"]["keep"]["out"]
    with torch.no_grad():  # and the transposed conv's removed input rows
        zeroed.up[[c for c in range(12) if c not in kept]] = 0
        torch.testing.assert_close(pruned(x), zeroed(x))


class TiedAutoencoder(nn.Module):
    """The decoder runs the encoder's weight transposed: one tensor, two layers."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, 16, 4, stride=2, padding=1)
        self.mid = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.mid(F.relu(self.enc(x))))
        return F.conv_transpose2d(h, self.enc.weight, stride=2, padding=1)


def test_a_weight_reused_by_a_functional_layer_is_cut_once_for_both() -> None:
    """The encoder's output channels are the decoder's input channels: one group with the
    middle conv's output. Was: the decoder cut the shared weight alone and the encoder's
    bias no longer matched."""
    torch.manual_seed(0)
    model, x = TiedAutoencoder().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.enc.out_channels == pruned.enc.bias.numel() == pruned.mid.out_channels == 8
    assert pruned.enc.weight.shape == (8, 3, 4, 4)
    assert pruned(x).shape == model(x).shape


class GraphConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2, self.out = nn.Linear(8, 32), nn.Linear(32, 32), nn.Linear(32, 3)
        adjacency = (torch.rand(10, 10) > 0.7).float() + torch.eye(10)
        self.register_buffer("adj", adjacency.to_sparse())

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(torch.sparse.mm(self.adj, self.l1(x)))
        return self.out(F.relu(torch.sparse.mm(self.adj, self.l2(h))))


def test_sparse_adjacency_products_prune_the_node_features() -> None:
    torch.manual_seed(0)
    model, x = GraphConv().eval(), torch.randn(10, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=0)
    assert result.model.l1.out_features == result.model.l2.in_features == 16
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


class RotaryOuter(nn.Module):
    """Rotary embedding whose table is ``torch.outer(positions, self.inv_freq)``."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        half = d // heads
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, half, 2) / half))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        freqs = torch.outer(torch.arange(t, dtype=x.dtype), self.inv_freq)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()

        def rotate(u: Tensor) -> Tensor:
            u1, u2 = u.chunk(2, -1)
            return u * cos + torch.cat([-u2, u1], -1) * sin

        q, k, v = (proj(x).view(b, t, self.heads, -1).transpose(1, 2)
                   for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(rotate(q), rotate(k), v, scale=0.25)
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


def test_rotary_table_from_outer_lets_the_heads_prune() -> None:
    """Was: no handler for torch.outer, an error. Now the table carries the ``inv_freq``
    buffer's entries along the head dims; whole heads go, and the head dims, which the
    table meets broadcast against the heads, stay (as for Llama's rotary table)."""
    torch.manual_seed(0)
    model, x = RotaryOuter().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    assert pruned.heads == 1 and pruned.q.out_features == pruned.o.in_features == 8
    assert torch.equal(pruned.inv_freq, model.inv_freq)
    head = result.plan["modules"]["q"]["keep"]["out"][0] // 8
    zeroed = RotaryOuter().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():  # the other head's columns of the output projection
        zeroed.o.weight[:, (1 - head) * 8:(2 - head) * 8] = 0
        torch.testing.assert_close(pruned(x), zeroed(x))


def test_index_copy_along_time_joins_source_and_cache() -> None:
    class Cached(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.k, self.o, self.max_len = nn.Linear(8, 8), nn.Linear(8, 3), 6

        def forward(self, x: Tensor) -> Tensor:
            k = self.k(x)
            cache = k.new_zeros(k.shape[0], self.max_len, k.shape[2])
            cache.index_copy_(1, torch.arange(k.shape[1]), k)
            return self.o(cache)

    torch.manual_seed(0)
    model, x = Cached().eval(), torch.randn(2, 4, 8)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    assert result.model.k.out_features == 4
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


def test_gumbel_softmax_over_channels_is_a_softmax() -> None:
    """A one-hot pick over 8 channels: cutting some would change which one is picked, so,
    as for softmax, the channels it normalises over are kept whole; the rest prunes."""

    class Gumbel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h, self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.b(F.gumbel_softmax(self.a(self.h(x).relu()), tau=0.5, hard=True))

    result = prune(Gumbel().eval(), torch.randn(3, 6), ratio=0.5)
    assert result.model.a.out_features == 8 and result.model.h.out_features == 8
    assert "gumbel_softmax normalises over these channels" in str(result.coverage)


def test_a_single_prelu_slope_is_reported_as_read() -> None:
    """Was: a shared slope (nn.PReLU(), F.prelu with one weight) was listed as never read."""

    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act, self.b = nn.Conv2d(3, 8, 3), nn.PReLU(), nn.Conv2d(8, 4, 1)
            self.slope = nn.Parameter(torch.tensor([0.2]))

        def forward(self, x: Tensor) -> Tensor:
            return self.b(F.prelu(self.act(self.a(x)), self.slope))

    result = prune(Shared().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.model.a.out_channels == 4
    status = {e.name: (e.status, e.reason) for e in result.coverage.entries}
    for name in ("act.weight", "slope"):
        assert status[name][0] == "fixed" and "single PReLU slope" in status[name][1]


@pytest.mark.parametrize("inplace", [True, False])
def test_index_put_accumulating_over_nodes_prunes_the_features(inplace: bool) -> None:
    """Was: no handler for index_put. A GNN's scatter-sum over nodes,
    ``agg.index_put_((dst,), messages, accumulate=True)``, is ``agg[dst] += messages``."""

    class Aggregate(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
            h = self.lin(x)
            agg = torch.zeros(x.shape[0], h.shape[1])
            if inplace:
                agg.index_put_((dst,), h[src], accumulate=True)
            else:
                agg = agg.index_put((dst,), h[src], accumulate=True)
            return self.out(torch.relu(agg + h))

    torch.manual_seed(0)
    model = Aggregate().eval()
    inputs = (torch.randn(5, 6), torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 1]))
    result = prune(model, inputs, ratio=0.5, importance="random", seed=3)
    assert result.model.lin.out_features == 4
    with torch.no_grad():
        torch.testing.assert_close(result.model(*inputs),
                                   _zero_removed_inputs(model, result.plan)(*inputs))


def test_index_put_into_named_channels_keeps_them_whole() -> None:
    class Named(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin, self.out = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            h = self.lin(x)
            rows = torch.arange(x.shape[0])
            h.index_put_((rows, torch.full_like(rows, 2)), torch.tensor(0.0))
            return self.out(h)

    result = prune(Named().eval(), torch.randn(5, 6), ratio=0.5)
    assert result.model.lin.out_features == 8
    assert "index_put_ writes to a fixed part" in result.coverage.fixed["lin.weight"]


def test_a_running_scan_over_channels_keeps_them_whole() -> None:
    """``torch.cumsum(F.softplus(self.steps), 0)``, ordered per-channel scales: a kept
    channel's scale is a running total over the channels before it, so cutting some would
    change the kept ones' values (a max diff of 2.9 before); a scan along time prunes."""

    class Ordered(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 10)
            self.steps = nn.Parameter(torch.randn(32))
            self.a, self.b = nn.Linear(16, 12), nn.Linear(12, 10)

        def forward(self, x: Tensor) -> Tensor:
            scaled = self.fc2(F.relu(self.fc1(x[:, -1])) * torch.cumsum(F.softplus(self.steps), 0))
            over_time = self.a(x).cumsum(1).logcumsumexp(dim=1).cumprod(1)[:, -1]
            return scaled + self.b(over_time)

    torch.manual_seed(0)
    model, x = Ordered().eval(), torch.randn(3, 5, 16)
    result = prune(model, x, ratio=0.5)
    assert result.model.fc1.out_features == 32 and result.model.steps.shape == (32,)
    assert "cumsum accumulates over these channels" in str(result.coverage)
    assert result.model.a.out_features == 6
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zero_removed_inputs(model, result.plan)(x))


class FunctionOfWeight(nn.Module):
    """A layer run with a function of its weight: BinaryConnect's ``sign``, a clipped or a
    rounded weight (a straight-through quantiser's forward)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        w = self.b.weight
        w = {"sign": w.sign, "clamp": lambda: w.clamp(-0.05, 0.05),
             "round": lambda: w + ((w * 8).round() / 8 - w).detach()}[self.how]()
        return self.c(F.relu(F.linear(F.relu(self.a(x)), w, self.b.bias)))


@pytest.mark.parametrize("how", ["sign", "clamp", "round"])
def test_a_layer_run_with_a_function_of_its_weight_prunes(how: str) -> None:
    # sign, clamp and round kept b's outputs whole ("a matrix product contracts all its
    # channels"); abs and exp already pruned
    torch.manual_seed(0)
    model, x = FunctionOfWeight(how).eval(), torch.randn(4, 16)
    result = prune(model, x, ratio=0.5)
    assert result.model.b.weight.shape == (16, 16) and result.model.c.in_features == 16
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        zeroed.b.weight[:, [i for i in range(32)
                            if i not in result.plan["params"]["b.weight"]["keep"]["1"]]] = 0
        for inputs in (x, torch.randn(7, 16)):
            torch.testing.assert_close(result.model(inputs), zeroed(inputs))


class HaltingLoop(nn.Module):
    """A Universal Transformer's adaptive computation: a loop while a halting mask, cast
    with ``.byte()``, has any step left."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.halt = nn.Embedding(50, 32), nn.Linear(32, 1)
        self.ff = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32))
        self.out = nn.Linear(32, 5)

    def forward(self, ids: Tensor) -> Tensor:
        x, halted, steps = self.emb(ids), torch.zeros(ids.shape), torch.zeros(ids.shape)
        while ((halted < 0.9) & (steps < 4)).byte().any():
            halted = halted + torch.sigmoid(self.halt(x)).squeeze(-1) * 0.3
            steps = steps + 1
            x = x + self.ff(x)
        return self.out(x.mean(1))


def test_byte_char_and_short_casts_are_elementwise() -> None:
    # .byte() had no handler: UnsupportedOpError
    torch.manual_seed(0)
    model, ids = HaltingLoop().eval(), torch.randint(0, 50, (2, 7))
    result = prune(model, ids, ratio=0.5)
    assert result.model.ff[0].out_features == 32
    torch.testing.assert_close(result.model(ids), _zero_removed_inputs(model, result.plan)(ids))
