"""Layer adapters for Linear and Bilinear (features on the last dim) and Embedding and
EmbeddingBag (vectors on the last dim)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.graph.labels import consume, varies
from prunekit.graph.ops import OpNotMappable, call_tensors
from prunekit.graph.ops_layer import keep_sample_weights
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
_BILINEAR_AXES = (
    Axis("weight", 0, "out", "weight"),
    Axis("weight", 1, "in1", "weight"),
    Axis("weight", 2, "in2", "weight"),
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


class BilinearAdapter:
    """``y[..., o] = Σ_ij x1[..., i] W[o, i, j] x2[..., j] + b[o]``: "in1" and "in2" are the
    two inputs' last dims, "out" the output's. ``bl(h, h)`` reads one channel set twice, so
    its "in1" and "in2" join."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        assert isinstance(module, nn.Bilinear)
        found = call_tensors(call.args, call.kwargs)
        if len(found) < 2:
            raise OpNotMappable("called without two tensor inputs")
        ctx.record_dim(call.name, module, "in1", ctx.consume(found[0], -1))
        ctx.record_dim(call.name, module, "in2", ctx.consume(found[1], -1))
        ids = ctx.module_ids(call.name, module, "out", module.out_features)
        ctx.set_vector(_output(call), ids, -1)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _BILINEAR_AXES)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        assert isinstance(module, nn.Bilinear)
        cut_axes(module, keep, slicer, _BILINEAR_AXES)
        for dim, attr in (("out", "out_features"), ("in1", "in1_features"),
                          ("in2", "in2_features")):
            if dim in keep:
                setattr(module, attr, int(keep[dim].numel()))

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_BILINEAR_AXES)

    def sync(self, module: nn.Module) -> None:
        assert isinstance(module, nn.Bilinear)
        out_features, in1_features, in2_features = module.weight.shape
        update_attr(module, "out_features", out_features)
        update_attr(module, "in1_features", in1_features)
        update_attr(module, "in2_features", in2_features)


class EmbeddingAdapter:
    """A lookup table: indices in, vectors of ``embedding_dim`` channels out (last dim). An
    ``nn.EmbeddingBag`` pools each bag's vectors channel by channel (sum, mean or max), so
    its output's last dim carries the same channels."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        assert isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        ids = ctx.module_ids(call.name, module, "out", module.embedding_dim)
        out = _output(call)
        ctx.set_vector(out, ids, -1)
        if isinstance(module, nn.EmbeddingBag):  # forward(input, offsets, per_sample_weights)
            weights = call.args[2] if len(call.args) > 2 else \
                call.kwargs.get("per_sample_weights")
            keep_sample_weights(ctx, weights)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _EMBEDDING_AXES)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        assert isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        cut_axes(module, keep, slicer, _EMBEDDING_AXES)
        if "out" in keep:
            module.embedding_dim = int(keep["out"].numel())

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_EMBEDDING_AXES)

    def sync(self, module: nn.Module) -> None:
        assert isinstance(module, (nn.Embedding, nn.EmbeddingBag))
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
register_adapter(nn.Bilinear, BilinearAdapter())
_EMBEDDING = EmbeddingAdapter()
register_adapter(nn.Embedding, _EMBEDDING)
register_adapter(nn.EmbeddingBag, _EMBEDDING)
