"""A part of a channel dim picked at fixed positions keeps those channels whole once its
values are read (pruning would renumber them); read only for its shape (torchdiffeq's
``tt = torch.ones_like(x[:, :1, :, :]) * t``), it fixes nothing, and the ``ones_like`` is a
fixed channel of its own. Before, every channel of the ODE net was kept whole."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


class ConcatConv2d(nn.Module):
    """torchdiffeq's ``ConcatConv2d``: the time as one more input channel."""

    def __init__(self, dim_in: int, dim_out: int, how: str) -> None:
        super().__init__()
        self.how = how
        self._layer = nn.Conv2d(dim_in + 1, dim_out, 3, 1, 1)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        part = x[:, :1, :, :]
        # as torchdiffeq writes it, or reading the values of the picked channel
        tt = (torch.ones_like(part) if self.how == "ones_like" else part) * t
        return self._layer(torch.cat([tt, x], 1))


class ODENet(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.down, self.fc = nn.Conv2d(3, 16, 3, 1, 1), nn.Linear(16, 10)
        self.conv1, self.conv2 = ConcatConv2d(16, 16, how), ConcatConv2d(16, 16, how)

    def forward(self, x: Tensor) -> Tensor:
        z = self.down(x)
        for step in range(3):  # Euler steps of dz/dt = f(t, z)
            t = torch.tensor(step / 3)
            z = z + self.conv2(t, F.relu(self.conv1(t, F.relu(z)))) / 3
        return self.fc(z.mean((2, 3)))


def test_a_part_read_only_for_its_shape_fixes_nothing() -> None:
    torch.manual_seed(0)
    model, x = ODENet("ones_like").eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.down.out_channels == 8 and pruned.conv1._layer.in_channels == 9
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 3, 10, 10)):
            torch.testing.assert_close(pruned(inputs), zeroed(inputs))


def test_a_part_whose_values_are_read_keeps_its_channels() -> None:
    torch.manual_seed(0)
    model, x = ODENet("values").eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    reason = {e.name: e.reason for e in result.coverage.entries}["down.weight"]
    assert "selects a fixed part of a channel dimension" in reason
    assert result.model.down.out_channels == 16


class ReturnsAPart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.a(x)
        return self.b(torch.relu(h)), h[:, 5:8]


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_a_part_returned_as_an_output_is_read(ratio: float) -> None:
    # (channels before it removed would shift the part it returns)
    torch.manual_seed(0)
    model, x = ReturnsAPart().eval(), torch.randn(2, 4)
    result = prune(model, x, ratio=ratio)
    assert result.model.a.out_features == 16
    torch.testing.assert_close(result.model(x)[1], model(x)[1])
