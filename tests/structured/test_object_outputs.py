"""Tensors a model returns inside a ``torch.distributions`` object are outputs too: a policy
that returns ``Categorical(logits=...)`` or ``Normal(mu, log_std.exp())`` keeps its actions.
Before, only tuples, lists, dicts and dataclasses were looked into, so the action head was
cut from 5 to 3 with no error (found by the reinforcement-learning probe). Other objects
(a Hugging Face cache of keys and values) are still not outputs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Independent, Normal

import prunekit as pk
from prunekit._inputs import walk_tensors


class Result:
    def __init__(self, logits: Tensor, value: Tensor) -> None:
        self.logits, self.value = logits, value


class Policy(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.pi = nn.Linear(64, 5)
        self.v = nn.Linear(64, 1)
        self.log_std = nn.Parameter(torch.zeros(5))

    def forward(self, x: Tensor) -> Any:
        h = self.body(x)
        logits = self.pi(h)
        if self.kind == "categorical":
            return Categorical(logits=logits), self.v(h)
        return Independent(Normal(logits, self.log_std.exp()), 1), self.v(h)


@pytest.mark.parametrize("kind", ["categorical", "normal"])
def test_a_policy_returning_a_distribution_keeps_its_actions(kind: str) -> None:
    torch.manual_seed(0)
    model = Policy(kind).eval()
    x = torch.randn(4, 16)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.pi.out_features == 5 and pruned.log_std.shape == (5,)
    assert pruned.body[0].out_features == 32 and pruned.body[2].out_features == 32
    with torch.no_grad():
        out = pruned(x)
    first = out[0] if isinstance(out, tuple) else out
    tensor = first.logits if kind == "categorical" else first.base_dist.loc
    assert tensor.shape == (4, 5)


def test_walk_tensors_looks_into_distributions_not_into_other_objects() -> None:
    loc = torch.zeros(2, 3)
    dist = Independent(Normal(loc, torch.ones(2, 3)), 1)
    paths = dict(walk_tensors((dist, nn.Linear(2, 2), Result(loc, loc))))
    assert "output[0].base_dist.loc" in paths and paths["output[0].base_dist.loc"] is loc
    assert not any(path.startswith(("output[1]", "output[2]")) for path in paths)
    looped: list[Any] = [loc]
    looped.append(looped)
    assert [p for p, _ in walk_tensors(looped)] == ["output[0]"]
