"""Modules the code picks among by the data (mixture-of-experts routing, a head chosen by
an input): those the example inputs never reach read widths the trace cannot see, so prune
refuses with the fix instead of returning a model that breaks once a token reaches them;
with inputs that reach all of them, every expert is pruned and the model is exact on other
inputs too."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.structured import prune


class FFN(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoE(nn.Module):
    def __init__(self, d: int = 16, h: int = 32, experts: int = 6, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(FFN(d, h) for _ in range(experts))

    def forward(self, x: Tensor) -> Tensor:
        w, idx = self.gate(x).softmax(-1).topk(self.k, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * w[rows, slot, None])
        return out


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.moe, self.out = nn.Linear(8, 16), MoE(), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h + self.moe(h))


class TaskHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.heads = nn.ModuleList(nn.Linear(16, 3) for _ in range(3))

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](F.relu(self.body(x)))


def test_experts_the_example_never_reaches_are_refused_with_the_fix() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    with pytest.raises(ConfigError, match=r"moe\.experts\.\d.* never ran on the example "
                                          r"inputs.*reach every one"):
        prune(model, torch.randn(1, 8), ratio=0.5)


def test_a_head_chosen_by_an_input_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"heads\.1, heads\.2 never ran"):
        prune(TaskHeads().eval(), (torch.randn(2, 8), 0), ratio=0.5)


def test_with_every_expert_reached_the_pruned_model_is_exact_on_other_inputs() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    result = prune(model, torch.randn(64, 8), ratio=0.5, importance="random")
    assert all(e.fc1.out_features == 16 for e in result.model.moe.experts)
    assert result.model.moe.gate.out_features == 6  # the router's experts are not channels
    reference = _zero_removed_inputs(model, result.plan)
    for rows in (1, 3, 200):
        x = torch.randn(rows, 8)
        with torch.no_grad():
            torch.testing.assert_close(result.model(x), reference(x), rtol=1e-5, atol=1e-6)


class EveryExpertMoE(MoE):
    """Calls every expert, on the rows routed to it, however many: often none."""

    def forward(self, x: Tensor) -> Tensor:
        w, idx = self.gate(x).softmax(-1).topk(self.k, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            out = out.index_add(0, rows, expert(x[rows]) * w[rows, slot, None])
        return out


class EveryExpertNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.moe = EveryExpertMoE()


def test_an_expert_run_on_no_rows_counts_as_not_reached() -> None:
    torch.manual_seed(0)
    model = EveryExpertNet().eval()
    with pytest.raises(ConfigError, match=r"moe\.experts\.\d.* never ran on the example"):
        prune(model, torch.randn(1, 8), ratio=0.5)
    result = prune(model, torch.randn(64, 8), ratio=0.5, importance="random")
    reference = _zero_removed_inputs(model, result.plan)
    x = torch.randn(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reference(x), rtol=1e-5, atol=1e-6)
