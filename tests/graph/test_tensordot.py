"""``torch.tensordot`` is read as the ``einsum`` it spells: a parameter it contracts is cut
like a weight, activations contracted with each other are coupled, and a product that
keeps channels on two axes keeps one axis's channels prunable. Before, strict mode
refused the op by name."""

from __future__ import annotations

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk
from prunekit.graph.ops import OpNotMappable


class Projected(nn.Module):
    """h [B, 16] · W [16, 12] written three ways."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.inp, self.head = nn.Linear(8, 16), nn.Linear(12, 4)
        self.w = nn.Parameter(torch.randn(16, 12) / 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        if self.how == "int":
            y = torch.tensordot(h, self.w, dims=1)
        elif self.how == "lists":
            y = torch.tensordot(h, self.w, dims=([1], [0]))
        else:  # the weight first: [12] then [B]
            y = torch.tensordot(self.w, h, dims=([0], [-1])).t()
        return self.head(y.relu())


@pytest.mark.parametrize("how", ["int", "lists", "weight_first"])
def test_a_contracted_parameter_is_cut_on_both_axes(how: str) -> None:
    torch.manual_seed(0)
    model = Projected(how).eval()
    result = pk.prune(model, torch.randn(3, 8), ratio=0.5)
    pruned = result.model
    assert pruned.w.shape == (8, 6)
    assert pruned.inp.out_features == 8 and pruned.head.in_features == 6
    reference = _zero_removed_inputs(model, result.plan)
    keep = result.plan["params"]["w"]["keep"]
    with torch.no_grad():  # the pruned product sums over the kept rows only
        reference.w[sorted(set(range(16)) - set(keep["0"]))] = 0
        reference.w[:, sorted(set(range(12)) - set(keep["1"]))] = 0
        for rows in (3, 7):
            x = torch.randn(rows, 8)
            torch.testing.assert_close(pruned(x), reference(x))


class Bilinear(nn.Module):
    """Two activations contracted over their channels: the channels are coupled."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(8, 16)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tensordot(self.a(x), self.b(x), dims=([1], [1]))  # [B, B]


def test_activations_contracted_together_are_cut_alike() -> None:
    torch.manual_seed(0)
    model = Bilinear().eval()
    result = pk.prune(model, torch.randn(5, 8), ratio=0.5)
    pruned = result.model
    assert pruned.a.out_features == pruned.b.out_features == 8
    assert result.plan["modules"]["a"]["keep"]["out"] == result.plan["modules"]["b"]["keep"]["out"]
    reference = model
    keep = torch.tensor(result.plan["modules"]["a"]["keep"]["out"])
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = reference.a(x)[:, keep] @ reference.b(x)[:, keep].T
        torch.testing.assert_close(pruned(x), want)


class Outer(nn.Module):
    """An outer product [6, 5] flattened into a Linear: a's channels become blocks of 5
    features; b's channels, on the second axis, are kept whole."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 6), nn.Linear(8, 5)
        self.head = nn.Linear(30, 2)

    def forward(self, x: Tensor) -> Tensor:
        outer = torch.tensordot(self.a(x[0]), self.b(x[1]), dims=0)  # [6, 5]
        return self.head(outer.flatten())


def test_an_outer_product_cuts_the_channels_of_one_axis_only() -> None:
    torch.manual_seed(0)
    model = Outer().eval()
    result = pk.prune(model, torch.randn(2, 8), ratio=0.5)
    pruned = result.model
    assert pruned.a.out_features == 3 and pruned.b.out_features == 5
    assert pruned.head.in_features == 15
    reference = _zero_removed_inputs(model, result.plan)
    x = torch.randn(2, 8)
    torch.testing.assert_close(pruned(x), reference(x))


@pytest.mark.parametrize(("a", "b", "dims"), [
    ((2, 3, 4), (4, 5), 1), ((2, 3, 4), (3, 4, 6), 2), ((2, 3), (3, 4, 2), ([0, 1], [2, 0])),
    ((2, 3), (4, 5), 0), ((2, 3), (3, 5), torch.tensor([[1], [0]])),
    ((2, 3, 4), (4, 2), ([-1, 0], [0, 1])), ((2, 3), (3, 4), ([1], [0]))])
def test_the_spelled_equation_computes_what_tensordot_does(a: tuple, b: tuple,
                                                          dims: object) -> None:
    from prunekit.graph.ops_einsum import _tensordot_equation

    x, y = torch.randn(a), torch.randn(b)
    equation = _tensordot_equation(x.dim(), y.dim(), dims)
    torch.testing.assert_close(torch.einsum(equation, x, y), torch.tensordot(x, y, dims))


def test_unequal_dim_lists_are_not_mapped() -> None:
    from prunekit.graph.ops_einsum import _tensordot_equation

    with pytest.raises(OpNotMappable, match="unequal"):
        _tensordot_equation(2, 2, ([0, 1], [0]))
