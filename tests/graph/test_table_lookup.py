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
