"""``nn.LSTMCell`` / ``nn.GRUCell`` / ``nn.RNNCell`` stepped through a loop: hidden units
(all gates), the input width, and the state the loop makes from an attribute."""

from __future__ import annotations

import copy
import tempfile

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.structured import prune

CELLS = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}


class Stepped(nn.Module):
    def __init__(self, kind: str, bias: bool = True) -> None:
        super().__init__()
        self.kind, self.hidden = kind, 8
        self.embed = nn.Linear(5, 6)
        self.cell = CELLS[kind](6, self.hidden, bias=bias)
        self.head = nn.Linear(self.hidden, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = x.new_zeros(x.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for t in range(x.shape[1]):
            step = torch.relu(self.embed(x[:, t]))
            if self.kind == "lstm":
                h, c = self.cell(step, (h, c))
            else:
                h = self.cell(step, h)
        return self.head(h)


def _zeroed(model: Stepped, plan: dict) -> Stepped:
    """The unpruned model with the removed hidden units never read (their ``weight_hh``
    columns and the head's input columns zeroed) and the removed inputs ignored."""
    keep = plan["modules"]["cell"]["keep"]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        gone = sorted(set(range(8)) - set(keep["hidden"]))
        zeroed.cell.weight_hh[:, gone] = 0
        zeroed.head.weight[:, gone] = 0
        zeroed.cell.weight_ih[:, sorted(set(range(6)) - set(keep["in"]))] = 0
    return zeroed


@pytest.mark.parametrize("kind", sorted(CELLS))
@pytest.mark.parametrize("bias", [True, False])
def test_cells_prune_hidden_units_exactly(kind: str, bias: bool) -> None:
    torch.manual_seed(0)
    model, x = Stepped(kind, bias).eval(), torch.randn(2, 4, 5)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[kind]
    assert pruned.cell.hidden_size == pruned.hidden == 4 and pruned.cell.input_size == 3
    assert tuple(pruned.cell.weight_ih.shape) == (gates * 4, 3)
    assert tuple(pruned.cell.weight_hh.shape) == (gates * 4, 4)
    assert pruned.head.in_features == 4 and pruned.embed.out_features == 3
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), _zeroed(model, result.plan)(x))


@pytest.mark.parametrize("kind", sorted(CELLS))
def test_cells_at_ratio_zero_and_after_reload(kind: str) -> None:
    torch.manual_seed(0)
    model, x = Stepped(kind).eval(), torch.randn(2, 4, 5)
    with torch.no_grad():
        expected = model(x)
    same = prune(model, x, ratio=0.0).model
    result = prune(model, x, ratio=0.5)
    with tempfile.TemporaryDirectory() as tmp:
        pk.save(result, tmp)
        loaded = pk.load(tmp, Stepped(kind).eval())
    with torch.no_grad():
        torch.testing.assert_close(same(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(loaded(x), result.model(x), rtol=0, atol=0)
    assert loaded.cell.hidden_size == 4


def test_cell_gate_rows_go_together() -> None:
    """Unit ``j`` is rows ``g·H + j`` of every gate: the kept rows of each gate block are
    the same units."""
    torch.manual_seed(0)
    model, x = Stepped("lstm").eval(), torch.randn(2, 4, 5)
    result = prune(model, x, ratio=0.5, importance="random", seed=5)
    kept = torch.tensor(result.plan["modules"]["cell"]["keep"]["hidden"])
    original, pruned = model.cell.weight_hh, result.model.cell.weight_hh
    for gate in range(4):
        torch.testing.assert_close(pruned[gate * 4:(gate + 1) * 4],
                                   original[gate * 8 + kept][:, kept])
