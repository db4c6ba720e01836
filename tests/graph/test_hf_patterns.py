"""Code patterns from Hugging Face models that the trace maps (or keeps whole, with the
reason) instead of refusing or failing the forward check, written without transformers:
ConvBERT's ``torch.multiply``, ConvNeXt V2's GRN (``torch.linalg.vector_norm``), Funnel's
head split sized from its config, WavLM's ``F.multi_head_attention_forward`` and its gate
``view(... + (2, 4))`` next to ``self.num_heads = 4``; the empty pass-through half
``q[..., rotary_dim:]`` of a partial rotary embedding that covers the whole head
(MiniMax-M2 with ``partial_rotary_factor=1``); Qwen3-Next's and Qwen3.5's gated attention
heads, split by ``view(*shape, -1, self.head_dim * 2)`` into query and gate; Qwen3.5's
``torch.linalg.solve_triangular`` (the UT transform of its gated DeltaNet); GPT-OSS's
gate and up interleaved in one projection (``gate_up[..., ::2]``, ``gate_up[..., 1::2]``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class MultiplyGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.key, self.query, self.out = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.multiply(self.key(x), self.query(x))
        return self.out(torch.subtract(gate, torch.negative(gate).sigmoid()))


def test_torch_alias_names_map_like_the_ops_they_name() -> None:
    torch.manual_seed(0)
    model, x = MultiplyGate().eval(), torch.randn(2, 5, 8)
    result = prune(model, x, ratio=0.5)
    assert result.model.key.out_features == 8 == result.model.query.out_features
    assert result.model.out.in_features == 8 and result.model(x).shape == (2, 5, 4)


class GRNBlock(nn.Module):
    """ConvNeXt V2: global response normalisation over the spatial dims, channels last."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma, self.beta = nn.Parameter(torch.rand(4 * dim)), nn.Parameter(torch.rand(4 * dim))
        self.stem, self.head = nn.Conv2d(3, dim, 1), nn.Linear(dim, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        h = F.gelu(self.up(self.dw(x).permute(0, 2, 3, 1)))
        g = torch.linalg.vector_norm(h, ord=2, dim=(1, 2), keepdim=True)
        h = self.gamma * (h * (g / (g.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + h
        x = x + self.down(h).permute(0, 3, 1, 2)
        return self.head(x.mean((2, 3)))


def test_a_spatial_vector_norm_keeps_per_channel_labels() -> None:
    torch.manual_seed(0)
    model, x = GRNBlock().eval(), torch.randn(2, 3, 6, 6)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.up.out_features == 32 == pruned.gamma.numel() == pruned.down.in_features
    assert pruned(x).shape == (2, 5)
    assert torch.equal(prune(model, x, ratio=0.0).model(x), model(x))


class ConfigHeads(nn.Module):
    """Funnel: the head count and size are read from a config into locals."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(n_head=2, d_head=6)
        self.q, self.k, self.v, self.o = (nn.Linear(12, 12) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 12))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        n_head, d_head = self.config.n_head, self.config.d_head
        q, k, v = (p(x).view(b, t, n_head, d_head).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(y)
        return x + self.mlp(x)


def test_a_head_size_written_as_a_plain_int_keeps_the_heads_whole() -> None:
    torch.manual_seed(0)
    model, x = ConfigHeads().eval(), torch.randn(2, 5, 12)
    result = prune(model, x, ratio=0.5)  # strict: the rest prunes, nothing fails
    assert result.model.v.out_features == 12 and result.model.mlp[0].out_features == 16
    assert "fixes in its code" in result.coverage.fixed["v.weight"]
    assert result.model(x).shape == (2, 5, 12)


class FunctionalAttention(nn.Module):
    """WavLM: separate projection weights handed to ``F.multi_head_attention_forward``, and
    a gate split by a literal equal to the head count."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.num_heads = 4
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, dim) for _ in range(3))
        self.out_proj = nn.Linear(dim, dim)
        self.gru_rel_pos_linear = nn.Linear(dim // self.num_heads, 8)
        self.mlp = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        heads = x.view(b, t, self.num_heads, -1).permute(0, 2, 1, 3)
        gate = self.gru_rel_pos_linear(heads).view((*heads.shape[:-1], 2, 4)).sum(-1).sigmoid()
        mask = gate[..., :1].mean(2, keepdim=True).expand(b, self.num_heads, t, t)
        y, _ = F.multi_head_attention_forward(
            x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), x.shape[-1],
            self.num_heads, torch.empty([0]),
            torch.cat((self.q_proj.bias, self.k_proj.bias, self.v_proj.bias)), None, None,
            False, 0.0, self.out_proj.weight, self.out_proj.bias, training=False,
            need_weights=False, attn_mask=mask.reshape(b * self.num_heads, t, t),
            use_separate_proj_weight=True, q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight, v_proj_weight=self.v_proj.weight)
        x = x + y.transpose(0, 1)
        return x + self.mlp(x)


def test_functional_attention_keeps_its_widths_and_a_literal_binds_no_attribute() -> None:
    torch.manual_seed(0)
    model, x = FunctionalAttention().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.num_heads == 4 and pruned.q_proj.out_features == 16
    assert pruned.gru_rel_pos_linear.out_features == 8  # the (2, 4) literal split stays
    assert pruned.mlp[0].out_features == 16
    assert "multi_head_attention_forward" in result.coverage.fixed["q_proj.weight"]
    assert "fixes in its code" in result.coverage.fixed["gru_rel_pos_linear.weight"]
    assert result.plan["attrs"] == {}
    assert pruned(x).shape == (2, 5, 16)


class TableBias(nn.Module):
    """BEiT's relative position bias: a table of (positions, heads) gathered and viewed as
    ``(L, L, -1)`` with ``L = ws * ws + 1`` a plain int. The split is of table rows, not of
    the heads, so the heads stay free to go."""

    def __init__(self, heads: int = 4, ws: int = 2) -> None:
        super().__init__()
        self.num_heads, self.ws = heads, ws
        n = ws * ws + 1
        self.table = nn.Parameter(torch.randn(3 * n, heads))
        self.register_buffer("index", torch.randint(0, 3 * n, (n * n,)))
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        n = self.ws * self.ws + 1
        bias = self.table[self.index].view(n, n, -1).permute(2, 0, 1)
        q, k, v = self.qkv(x).reshape(b, t, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return x + self.proj(y.transpose(1, 2).reshape(b, t, -1))


def test_a_plain_int_splitting_table_rows_leaves_the_heads_free() -> None:
    torch.manual_seed(0)
    model, x = TableBias().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5)
    assert result.model.num_heads == 2 and result.model.table.shape == (15, 2)
    assert result.model(x).shape == (2, 5, 16)


class PartialRotary(nn.Module):
    """Heads rotated over their first ``rotary_dim`` channels, the rest passed through: with
    ``rotary_dim`` the whole head, the pass-through half is an empty tensor."""

    def __init__(self, rotary_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.rotary_dim = 2, 4, rotary_dim
        self.q, self.out = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        q = self.q(x).view(*x.shape[:-1], self.num_heads, self.head_dim)
        rot, rest = q[..., :self.rotary_dim], q[..., self.rotary_dim:]
        rot = torch.cat([-rot[..., self.rotary_dim // 2:], rot[..., :self.rotary_dim // 2]], -1)
        q = torch.cat([rot, rest], dim=-1)
        return self.out(q.reshape(*x.shape[:-1], self.num_heads * self.head_dim))


def test_an_empty_pass_through_half_of_a_rotary_embedding_maps() -> None:
    torch.manual_seed(0)
    for rotary_dim in (4, 2):
        model, x = PartialRotary(rotary_dim).eval(), torch.randn(2, 5, 8)
        result = prune(model, x, ratio=0.5)
        assert result.model.num_heads == 1 and result.model.out.in_features == 4
        with torch.no_grad():
            assert result.model(x).shape == model(x).shape


class GatedHeads(nn.Module):
    """Each head's query and output gate side by side in one projection, split by a per-head
    size written as ``self.head_dim * 2`` (a size no pruning changes)."""

    def __init__(self, unpacked: bool) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.unpacked = 4, 2, unpacked
        self.q_proj, self.k_proj = nn.Linear(8, 4 * 2 * 2), nn.Linear(8, 8)
        self.v_proj, self.o_proj = nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        shape, (b, n, _) = x.shape[:-1], x.shape
        if self.unpacked:  # as Transformers writes it
            both = self.q_proj(x).view(*shape, -1, self.head_dim * 2)
        else:
            both = self.q_proj(x).view(b, n, -1, self.head_dim * 2)
        query, gate = torch.chunk(both, 2, dim=-1)
        key, value = (p(x).view(*shape, -1, self.head_dim).transpose(1, 2)
                      for p in (self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key, value)
        out = out.transpose(1, 2).reshape(*shape, -1) * gate.reshape(*shape, -1).sigmoid()
        return self.o_proj(out)


@pytest.mark.parametrize("unpacked", [True, False])
def test_heads_split_into_query_and_gate_by_an_attribute_times_two_prune(
        unpacked: bool) -> None:
    torch.manual_seed(0)
    model, x = GatedHeads(unpacked).eval(), torch.randn(2, 5, 8)
    result = prune(model, x, ratios={"q_proj": 0.5}, importance="random", seed=0)
    assert result.model.q_proj.out_features == 8 and result.model.o_proj.in_features == 4
    assert result.model.k_proj.out_features == 4 and result.model.head_dim == 2
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


class TriangularMix(nn.Module):
    """Values mixed across tokens by a unit lower-triangular system made from keys, solved
    with ``torch.linalg.solve_triangular`` (the UT transform of gated DeltaNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.k, self.v, self.out = nn.Linear(8, 4), nn.Linear(8, 6), nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        k = F.normalize(self.k(x), dim=-1)
        system = torch.tril(k @ k.transpose(-1, -2), diagonal=-1) * 0.5
        values = torch.linalg.solve_triangular(system, self.v(x), upper=False,
                                               unitriangular=True)
        return self.out(values)


def test_a_triangular_solve_carries_the_right_sides_channels() -> None:
    torch.manual_seed(0)
    model, x = TriangularMix().eval(), torch.randn(2, 5, 8)
    result = prune(model, x, ratios={"v": 0.5}, importance="random", seed=0)
    assert result.model.v.out_features == result.model.out.in_features == 3
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


class Interleaved(nn.Module):
    """``parts`` projections interleaved channel by channel in one layer, picked by
    ``h[..., r::parts]`` and multiplied together."""

    def __init__(self, parts: int) -> None:
        super().__init__()
        self.parts = parts
        self.up, self.down = nn.Linear(8, 4 * parts), nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up(x)
        out = h[..., ::self.parts].sigmoid()
        for r in range(1, self.parts):
            out = out * h[..., r::self.parts]
        return self.down(out)


@pytest.mark.parametrize("parts", [2, 3])
def test_interleaved_parts_lose_whole_runs(parts: int) -> None:
    torch.manual_seed(0)
    model, x = Interleaved(parts).eval(), torch.randn(2, 5, 8)
    result = prune(model, x, ratios={"up": 0.5}, importance="random", seed=0)
    assert result.model.up.out_features == 2 * parts and result.model.down.in_features == 2
    keep = result.plan["modules"]["up"]["keep"]["out"]
    assert keep == [parts * run + r for run in sorted({i // parts for i in keep})
                    for r in range(parts)]
    removed = [run for run in range(4) if parts * run not in keep]
    zeroed = Interleaved(parts).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.down.weight[:, removed] = 0
        torch.testing.assert_close(result.model(x), zeroed(x))
