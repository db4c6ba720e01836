"""A ``torch.compile`` wrapper is refused with the fix; ``module.compile()`` prunes as is."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import prunekit as pk
from prunekit.errors import ConfigError
from prunekit.structured.pruning import analyze
from prunekit.zoo import LeNet5


def test_compiled_wrapper_is_refused_with_the_fix() -> None:
    model, x = LeNet5().eval(), torch.randn(2, 1, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"torch.compile wrapper.*the model._orig_mod"):
        pk.prune(torch.compile(model), x, ratio=0.5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_compiled_submodule_is_named() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    model[2] = torch.compile(model[2])  # type: ignore[assignment]
    fix = r"model\.2 is a torch.compile wrapper.*model\.2\._orig_mod"
    with pytest.raises(ConfigError, match=fix):
        analyze(model, torch.randn(1, 3, 8, 8))


@pytest.mark.slow  # compiles LeNet-5 (several seconds)
def test_in_place_compiled_module_prunes() -> None:
    model, x = LeNet5().eval(), torch.randn(2, 1, 32, 32)
    plain = pk.prune(copy.deepcopy(model), x, ratio=0.5)
    model.compile()
    with pytest.warns(UserWarning, match="runs eagerly"):
        result = pk.prune(model, x, ratio=0.5)
    assert result.plan == plain.plan
    assert result.model(x).shape == (2, 10)


@torch.compile(backend="eager", dynamic=True)
def _channel_gate(h: torch.Tensor) -> torch.Tensor:
    b, c, _, _ = h.size()
    return h * torch.sigmoid(h.mean((2, 3)).view(b, c, 1, 1))


class CompiledHelper(nn.Module):
    """A forward that calls a ``torch.compile``'d function (as torchvision's roi_align
    fallback is): the trace and the forward check run it eagerly, op by op."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_channel_gate(torch.relu(self.a(x))))


def test_a_compiled_helper_function_is_traced_eagerly() -> None:
    """Was: dynamo traced the helper under prunekit's trace and failed on its shape reads."""
    model, x = CompiledHelper().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.a.out_channels == result.model.head.in_channels == 8
    with torch.no_grad():
        assert torch.equal(pk.prune(model, x, ratio=0.0).model(x), model(x))


@torch.jit.script
def _scripted_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / 1.41421))


class _ScriptedHelper(nn.Module):
    """A scripted helper the trace cannot see into: the group through it breaks the check,
    so ``strict=False`` keeps it whole and prunes the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(_scripted_gelu(self.fc1(x)))))


def test_compiled_module_checks_its_cut_copy() -> None:
    # the copies the check runs kept module.compile()'s call, bound to the unpruned module:
    # every cut passed, so the bisection found no breaking group and strict=False raised
    torch.manual_seed(0)
    model, x = _ScriptedHelper().eval(), torch.randn(4, 16)
    plain = pk.prune(copy.deepcopy(model), x, ratio=0.5, strict=False)
    model.compile(backend="eager")
    with pytest.warns(UserWarning, match=r"model ran module\.compile\(\).*runs eagerly"):
        result = pk.prune(model, x, ratio=0.5, strict=False)
    assert result.plan == plain.plan and result.model.fc1.out_features == 32
    assert result.model.fc2.out_features == 16
    assert "_compiled_call_impl" not in result.model.__dict__
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), plain.model(x))


def test_an_in_place_prune_keeps_the_compiled_call() -> None:
    # the transplant of the pruned state dropped module.compile()'s call, silently
    torch.manual_seed(0)
    model, x = _ScriptedHelper().eval(), torch.randn(4, 16)
    model.compile(backend="eager")
    compiled = model.__dict__["_compiled_call_impl"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = pk.prune(model, x, ratio=0.5, inplace=True, strict=False)
    assert not [w for w in caught if "runs eagerly" in str(w.message)]  # (only for a copy)
    assert result.model is model and model.__dict__["_compiled_call_impl"] is compiled
    assert model.fc2.out_features == 16 and model(x).shape == (4, 10)
