"""Layer adapter for ``nn.MultiheadAttention``.

The module requires query width = ``embed_dim`` = ``num_heads · head_dim`` = output width,
so its input channels, its inner q/k/v/out channels and its output channels form one
``"embed"`` dimension, coupled index by index (key and value inputs too). Inner channel
``j`` of every head leaves together, so ``num_heads`` stays and ``head_dim`` shrinks
uniformly; q, k, v and the output projection are cut consistently and ``embed_dim``,
``head_dim``, ``kdim``, ``vdim`` and ``out_proj``'s sizes are rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.graph.labels import consume, emit, rep_along
from prunekit.graph.ops import OpNotMappable, tensors_in
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    ParamSlicer,
    WeightView,
    grad_rows,
    register_adapter,
    rows,
)


class MultiheadAttentionAdapter:
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        mha = call.module
        assert isinstance(mha, nn.MultiheadAttention)
        if not mha._qkv_same_embed_dim:
            raise OpNotMappable("kdim/vdim different from embed_dim are not supported yet")
        inputs = tensors_in((call.args[:3], {k: call.kwargs[k] for k in ("query", "key", "value")
                                             if k in call.kwargs}))
        if len(inputs) < 3:
            raise OpNotMappable("query, key and value must be tensors")
        space = ctx.space
        labels = consume(space, ctx.labels(inputs[0]), -1)
        for other in inputs[1:3]:
            space.union(labels, consume(space, ctx.labels(other), -1))
        rep_along(space, space.find(labels).view(mha.num_heads, -1), (0,))
        labels = space.find(labels)
        ctx.record_dim(call.name, mha, "embed", labels)
        outputs = call.out if isinstance(call.out, tuple) else (call.out,)
        ctx.set_labels(outputs[0], emit(labels, -1, outputs[0].shape))
        for extra in outputs[1:]:
            if isinstance(extra, Tensor):
                ctx.set_labels(extra, torch.zeros(extra.shape, dtype=torch.long))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        assert isinstance(module, nn.MultiheadAttention)
        if dim != "embed":
            return []
        size = module.embed_dim
        w, g = module.in_proj_weight.detach(), module.in_proj_weight.grad
        views = [WeightView(w[i * size:(i + 1) * size], "weight", dim,
                            None if g is None else g[i * size:(i + 1) * size])
                 for i in range(3)]
        views.append(WeightView(w.t().reshape(size, -1), "weight", dim,
                                None if g is None else g.t().reshape(size, -1)))
        out = module.out_proj.weight
        views.append(WeightView(rows(out, 0), "weight", dim, grad_rows(out, 0)))
        views.append(WeightView(rows(out, 1), "weight", dim, grad_rows(out, 1)))
        return views

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        mha = module
        assert isinstance(mha, nn.MultiheadAttention)
        index = keep.get("embed")
        if index is None:
            return
        size = mha.embed_dim
        stacked = torch.cat([index + i * size for i in range(3)])
        slicer.slice(mha, "in_proj_weight", 0, stacked)
        slicer.slice(mha, "in_proj_weight", 1, index)
        slicer.slice(mha, "in_proj_bias", 0, stacked)
        slicer.slice(mha, "bias_k", 2, index)
        slicer.slice(mha, "bias_v", 2, index)
        slicer.slice(mha.out_proj, "weight", 0, index)
        slicer.slice(mha.out_proj, "weight", 1, index)
        slicer.slice(mha.out_proj, "bias", 0, index)
        new = int(index.numel())
        mha.embed_dim = mha.kdim = mha.vdim = new
        mha.head_dim = new // mha.num_heads
        mha.out_proj.in_features = mha.out_proj.out_features = new

    def sync(self, module: nn.Module) -> None:
        return None

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return None


register_adapter(nn.MultiheadAttention, MultiheadAttentionAdapter())
