"""A 2-D parameter or buffer indexed by a tensor of ids (``V[ids]``, ``table.index_select(0,
ids)``: a hand-written embedding table, a sinusoidal position table looked up by position
ids) is read as ``F.embedding`` reads its weight: the columns are channels, the rows stay.
Before, the result was labelled element by element, so whether the table pruned depended on
which rows the example happened to read (a flattened ``V[ids]`` kept 1.00 with 32 rows of
ids into 10,000, 0.50 with 2,048)."""

from __future__ import annotations

import math

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk


class FieldTable(nn.Module):
    def __init__(self, how: str, rows: int = 1000) -> None:
        super().__init__()
        self.how = how
        self.v = nn.Parameter(torch.randn(rows, 16))
        self.out = nn.Linear(6 * 16, 1)

    def forward(self, ids: Tensor) -> Tensor:
        if self.how == "getitem":
            e = self.v[ids]
        else:
            e = self.v.index_select(0, ids.reshape(-1)).view(*ids.shape, -1)
        return self.out(e.flatten(1))


@pytest.mark.parametrize("how", ["getitem", "index_select"])
@pytest.mark.parametrize("batch", [4, 512])
def test_a_table_prunes_whatever_rows_the_example_reads(how: str, batch: int) -> None:
    torch.manual_seed(0)
    model = FieldTable(how).eval()
    result = pk.prune(model, torch.randint(0, 1000, (batch, 6)), ratio=0.5)
    assert result.model.v.shape == (1000, 8) and result.model.out.in_features == 48
    ids = torch.randint(0, 1000, (3, 6))
    torch.testing.assert_close(result.model(ids),
                               _zero_removed_inputs(model, result.plan)(ids))


def _sinusoids(positions: int, width: int) -> Tensor:
    half = width // 2
    freq = torch.exp(torch.arange(half).float() * -(math.log(10000) / (half - 1)))
    angles = torch.arange(positions).float()[:, None] * freq[None]
    return torch.cat([angles.sin(), angles.cos()], 1)


class PositionTable(nn.Module):
    """SpeechT5's positional encoding: a buffer looked up by ids made in forward, viewed
    back with sizes read from those ids."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(10, 32), nn.Linear(32, 32), nn.Linear(32, 4)
        self.register_buffer("weights", _sinusoids(50, 32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        ids = torch.zeros(h.shape[:2], dtype=torch.long)
        batch, length = ids.size()
        positions = torch.cumsum(ids.ne(1).int(), dim=1).long()
        table = self.weights.index_select(0, positions.view(-1)).view(batch, length, -1)
        return self.out(torch.relu(self.mid(h + table)))


def test_a_position_table_is_cut_with_the_hidden_width() -> None:
    # before, the view of the looked-up rows kept the hidden width whole
    torch.manual_seed(0)
    model = PositionTable().eval()
    result = pk.prune(model, torch.randn(2, 7, 10), ratio=0.5)
    pruned = result.model
    assert pruned.inp.out_features == pruned.mid.in_features == 16
    assert pruned.weights.shape == (50, 16)
    keep = result.plan["modules"]["inp"]["keep"]["out"]
    torch.testing.assert_close(pruned.weights, model.weights[:, keep])
    x = torch.randn(3, 9, 10)
    torch.testing.assert_close(pruned(x), _zero_removed_inputs(model, result.plan)(x))


class GatheredBias(nn.Module):
    """CoAtNet's relative attention (chinhsuanwu/coatnet-pytorch): a bias table ``[positions,
    heads]`` gathered along positions by an index repeated to the head count."""

    def __init__(self, how: str, dim: int = 32, heads: int = 4, size: int = 4) -> None:
        super().__init__()
        self.how, self.heads, self.n = how, heads, size * size
        self.relative_bias_table = nn.Parameter(torch.randn((2 * size - 1) ** 2, heads))
        grid = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size),
                                          indexing="ij")).flatten(1)
        rel = (grid[:, :, None] - grid[:, None, :]).permute(1, 2, 0) + size - 1
        index = rel[..., 0] * (2 * size - 1) + rel[..., 1]
        self.register_buffer("relative_index", index.flatten().unsqueeze(1))
        self.to_qkv, self.to_out = nn.Linear(dim, dim * 3, bias=False), nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        if self.how == "gather":
            bias = self.relative_bias_table.gather(
                0, self.relative_index.repeat(1, self.heads))
        else:
            bias = self.relative_bias_table[self.relative_index.view(-1)]
        bias = bias.reshape(self.n, self.n, -1).permute(2, 0, 1).unsqueeze(0)
        attn = (q @ k.transpose(-1, -2) * 8 ** -0.5 + bias).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("how", ["gather", "index"])
def test_a_table_gathered_along_its_rows_prunes_its_columns(how: str) -> None:
    # gather(0, idx) kept every head whole ("picks positions along a channel dimension")
    torch.manual_seed(0)
    model, x = GatheredBias(how).eval(), torch.randn(2, 16, 32)
    result = pk.prune(model, x, ratio=0.5, ignore=[model.to_out])
    pruned = result.model
    assert pruned.heads == 2 and pruned.relative_bias_table.shape == (49, 2)
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 16, 32)):
            torch.testing.assert_close(pruned(inputs), zeroed(inputs))
