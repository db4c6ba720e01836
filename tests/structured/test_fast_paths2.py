"""Fast paths of apply_plan and _shallow_clone give exactly what the general paths give."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from tests.structured.zoo import ZOO
from torch import nn

from prunekit.graph.dependency import build_groups
from prunekit.graph.trace import trace
from prunekit.structured.adapters import ParamSlicer, find_adapter
from prunekit.structured.mha import PrunedMultiheadAttention
from prunekit.structured.plan import plan_with_indices
from prunekit.structured.pruning import _axes_of, _shallow_clone


@pytest.mark.parametrize("grad_mode", [True, False])
def test_slice_without_grad_mode_equals_detached_slice(grad_mode: bool) -> None:
    conv = nn.Conv2d(4, 8, 3)
    weight = conv.weight
    index = torch.tensor([0, 2, 5])
    slicer = ParamSlicer()
    with torch.set_grad_enabled(grad_mode):
        slicer.slice(conv, "weight", 0, index)
        slicer.slice(conv, "weight", 1, torch.tensor([1, 3]))
    slicer.finish()
    expected = weight.detach().index_select(0, index).index_select(1, torch.tensor([1, 3]))
    assert type(conv.weight) is nn.Parameter and conv.weight.requires_grad
    assert conv.weight.grad_fn is None and conv.weight.is_leaf
    assert torch.equal(conv.weight, expected)


def test_shallow_clone_copies_empty_containers() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    model.extra = {}  # type: ignore[assignment]
    model.tags = set()  # type: ignore[assignment]
    model.table = OrderedDict(conv=model[0])  # type: ignore[assignment]
    clones: list[nn.Module] = []
    copy = _shallow_clone(model, clones)
    assert len(clones) == 3
    for name in ("extra", "tags", "_forward_hooks", "_non_persistent_buffers_set"):
        got, original = getattr(copy, name), getattr(model, name)
        assert got == original and got is not original and type(got) is type(original)
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
    x = torch.randn(5, 2, 16) if not options.get("batch_first") else torch.randn(2, 5, 16)
    kv = x if "kdim" not in options else None
    if kv is not None:
        assert torch.equal(fast(x, x, x)[0], source(x, x, x)[0])


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
