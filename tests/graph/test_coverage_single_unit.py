"""A dependency group of one unit is kept by every prune (each group keeps at least one), so
the coverage report lists its parameters as kept whole, with the group. Before, they were
counted as prunable while nothing could remove them (a Conv2d sliding over a Conv1d's
channels ties those channels into one unit)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import analyze, prune


class SpectrogramConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(40, 64, 3, padding=1), nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 64, 10)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.c2(F.relu(self.c1(x)).unsqueeze(1)))  # [B, 8, 64, T]
        b, c, f, t = h.shape
        return self.fc(h.permute(0, 3, 1, 2).reshape(b, t, c * f))


def test_parameters_of_a_one_unit_group_are_reported_kept_whole() -> None:
    model, x = SpectrogramConv().eval(), torch.randn(2, 40, 20)
    groups = analyze(model, x).graph.groups
    assert [g.size for g in groups] == [1, 8]
    result = prune(model, x, ratio=0.5)
    assert result.model.c1.out_channels == 64 and result.model.c2.out_channels == 4
    fixed = result.coverage.fixed
    assert "form a single unit" in fixed["c1.bias"] and "c2.weight" not in fixed
