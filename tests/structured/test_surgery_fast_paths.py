"""Fast paths of planning, cloning, cutting and checking a pruned model give exactly what
the general paths give."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from tests.structured.zoo import ZOO
from torch import nn
from torch.nn.utils import parametrize

from prunekit.graph.dependency import (
    build_groups,
)
from prunekit.graph.trace import trace
from prunekit.structured.adapters import find_adapter
from prunekit.structured.mha import PrunedMultiheadAttention
from prunekit.structured.plan import is_parametrized, plan_with_indices
from prunekit.structured.pruning import _axes_of, _shallow_clone, prune


def test_is_parametrized_equals_torch() -> None:
    masked = nn.Linear(3, 4)
    parametrize.register_parametrization(masked, "weight", _Identity())
    emptied = nn.Linear(3, 4)
    parametrize.register_parametrization(emptied, "weight", _Identity())
    parametrize.remove_parametrizations(emptied, "weight")
    modules = [masked, emptied, nn.Linear(3, 4), nn.Sequential(masked)]
    modules += [m for e in ZOO for m in e.build().modules()]
    for module in modules:
        assert is_parametrized(module) == parametrize.is_parametrized(module)


class _Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("training", [False, True])
def test_validation_forward_runs_in_eval_mode_either_way(training: bool) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model.train(training)
    with torch.no_grad():
        model[1].running_mean.uniform_()
    stats = model[1].running_mean.clone()
    result = prune(model, torch.randn(2, 3, 8, 8), ratio=0.5, inplace=True)
    assert result.model is model and all(m.training == training for m in model.modules())
    kept = result.plan["modules"]["1"]["keep"]["channels"]
    torch.testing.assert_close(model[1].running_mean, stats[kept], rtol=0, atol=0)


def test_shallow_clone_copies_empty_containers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model.extra = {}  # type: ignore[assignment]
    model.tags = set()  # type: ignore[assignment]
    model.table = OrderedDict(conv=model[0])  # type: ignore[assignment]
    clones: list[nn.Module] = []
    copy = _shallow_clone(model, clones)
    assert len(clones) == 3
    for name in ("extra", "tags", "_non_persistent_buffers_set"):
        got, original = getattr(copy, name), getattr(model, name)
        assert got == original and got is not original and type(got) is type(original)
    assert copy._forward_hooks is model._forward_hooks  # a user's handle must reach it
    assert type(copy.table) is OrderedDict and copy.table["conv"] is copy[0]
    assert copy[0].weight is model[0].weight and copy[0] is not model[0]


class _SubAttention(PrunedMultiheadAttention):
    """Its __init__ is PrunedMultiheadAttention's, but from_module takes the general path."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{}, {"bias": False}, {"add_bias_kv": True},
                                     {"kdim": 8, "vdim": 12}, {"batch_first": True}])
def test_mha_from_module_equals_the_general_path(options: dict[str, object]) -> None:
    source = nn.MultiheadAttention(16, 4, **options)  # type: ignore[arg-type]
    source.eval()
    fast = PrunedMultiheadAttention.from_module(source)
    general = _SubAttention.from_module(source)
    assert type(general) is _SubAttention
    assert list(fast.__dict__) == list(general.__dict__)
    for key, value in fast.__dict__.items():
        other = general.__dict__[key]
        if isinstance(value, dict):
            assert list(value) == list(other) and all(
                value[k] is other[k] for k in value), key
        elif not isinstance(value, set):
            assert value == other, key
    assert fast.out_proj is source.out_proj and not fast.training
    shape = (2, 5) if options.get("batch_first") else (5, 2)
    x = torch.randn(*shape, 16)
    kdim, vdim = options.get("kdim", 16), options.get("vdim", 16)
    assert isinstance(kdim, int) and isinstance(vdim, int)
    k, v = torch.randn(*shape, kdim), torch.randn(*shape, vdim)
    assert torch.equal(fast(x, k, v)[0], source(x, k, v)[0])


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "vit", "split_glu"])
def test_plan_keep_lists_equal_per_member_lookup(name: str) -> None:
    entry = next(e for e in ZOO if e.name == name)
    model = entry.build().eval()
    graph = build_groups(model, trace(model, entry.example_inputs(), find_adapter),
                         axes_of=_axes_of)
    generator = torch.Generator().manual_seed(0)
    masks = [torch.rand(g.size, generator=generator) < 0.6 for g in graph.groups]
    _, indices = plan_with_indices(model, graph, masks)
    gone_id = np.zeros(max(graph.trace.space.size, 1), dtype=bool)
    for group, mask in zip(graph.groups, masks, strict=True):
        gone_id[group.units.numpy()[~mask.numpy()]] = True
    expected = {}
    for member in graph.members:
        gone = gone_id[member.units.numpy().reshape(-1)]
        if member.kind != "attr" and gone.any():
            key = ("modules", member.name, member.dim) if member.kind == "module" else (
                "params", member.name, str(member.axis))
            expected[key] = np.flatnonzero(~gone)
    assert list(indices) == list(expected)
    for key, keep in indices.items():
        assert keep.dtype == torch.int64 and np.array_equal(keep.numpy(), expected[key]), key
