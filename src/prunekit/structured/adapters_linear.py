"""Layer adapters for Linear (features on the last dim) and Embedding (vectors on the last dim)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.graph.labels import consume, varies
from prunekit.graph.ops import OpNotMappable, call_tensors
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    Axis,
    ParamSlicer,
    WeightView,
    axes_list,
    cut_axes,
    register_adapter,
    update_attr,
    views_from_axes,
)

_LINEAR_AXES = (
    Axis("weight", 0, "out", "weight"),
    Axis("weight", 1, "in", "weight"),
    Axis("bias", 0, "out", "bias"),
)
_EMBEDDING_AXES = (Axis("weight", 1, "out", "weight"),)


class LinearAdapter:
    """``y[..., o] = Σ_i W[o, i] x[..., i] + b[o]``: "in" is the input's last dim, "out" the
    output's."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        assert isinstance(module, nn.Linear)
        x = _first(call)
        out = _output(call)
        vector = ctx.vector_of(x)
        # labels that are a vector along the last dim vary along no other dim: the layer
        # reads them as its input features, without building the full label tensor
        along_last = vector is not None and vector[0] == x.dim() - 1
        labels = None if along_last else ctx.space.find(ctx.labels(x))
        ids = ctx.module_ids(call.name, module, "out", module.out_features)
        if labels is not None and x.dim() > 1 and not varies(labels, -1) and any(
                varies(labels, d) for d in range(x.dim() - 1)):
            # applied along an axis that is not a channel axis (MLP-Mixer token mixing):
            # the channels of the other axes pass through; this layer's width stays
            ctx.record_dim(call.name, module, "in", torch.zeros(module.in_features,
                                                                dtype=torch.long))
            ctx.block(ids, f"layer {call.name!r} mixes along a non-channel axis")
            ctx.set_labels(out, labels.amax(dim=-1, keepdim=True).expand(out.shape))
            return
        ctx.record_dim(call.name, module, "in",
                       ctx.consume(x, -1) if labels is None else consume(ctx.space, labels, -1))
        ctx.set_vector(out, ids, -1)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _LINEAR_AXES)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        assert isinstance(module, nn.Linear)
        cut_axes(module, keep, slicer, _LINEAR_AXES)
        if "out" in keep:
            module.out_features = int(keep["out"].numel())
        if "in" in keep:
            module.in_features = int(keep["in"].numel())

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_LINEAR_AXES)

    def sync(self, module: nn.Module) -> None:
        assert isinstance(module, nn.Linear)
        out_features, in_features = module.weight.shape
        update_attr(module, "out_features", out_features)
        update_attr(module, "in_features", in_features)


class EmbeddingAdapter:
    """A lookup table: indices in, vectors of ``embedding_dim`` channels out (last dim)."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        assert isinstance(module, nn.Embedding)
        ids = ctx.module_ids(call.name, module, "out", module.embedding_dim)
        out = _output(call)
        ctx.set_vector(out, ids, -1)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _EMBEDDING_AXES)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        assert isinstance(module, nn.Embedding)
        cut_axes(module, keep, slicer, _EMBEDDING_AXES)
        if "out" in keep:
            module.embedding_dim = int(keep["out"].numel())

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_EMBEDDING_AXES)

    def sync(self, module: nn.Module) -> None:
        assert isinstance(module, nn.Embedding)
        update_attr(module, "embedding_dim", module.weight.shape[1])


def _first(call: ModuleCall) -> Tensor:
    if call.args and isinstance(call.args[0], Tensor):  # what call_tensors would find first
        return call.args[0]
    found = call_tensors(call.args, call.kwargs)
    if not found:
        raise OpNotMappable("called without a tensor input")
    return found[0]


def _output(call: ModuleCall) -> Tensor:
    if not isinstance(call.out, Tensor):
        raise OpNotMappable("its output is not a single tensor")
    return call.out


register_adapter(nn.Linear, LinearAdapter())
register_adapter(nn.Embedding, EmbeddingAdapter())
