"""Layer adapter for ``nn.MultiheadAttention``: whole heads and the embedding width.

Dimensions:

* ``"embed"`` — the query's channels and the output's (``out_proj`` rows), index by index;
  with one packed ``in_proj_weight`` the key's and value's channels too;
* ``"kdim"`` / ``"vdim"`` — the key's / value's channels when they have their own
  projection (``kdim``/``vdim`` given);
* ``"heads"`` — whole heads (fresh units): a head's q, k and v rows, its ``in_proj_bias``
  and ``bias_k``/``bias_v`` entries and its ``out_proj`` columns leave together.

torch's module cannot hold ``num_heads · head_dim != embed_dim``, so the plan swaps any
``nn.MultiheadAttention`` it cuts for :class:`PrunedMultiheadAttention` (same parameters,
names and outputs; ``swap``), which is then cut here. A subclass of
``nn.MultiheadAttention`` is not swapped (it would lose what it adds): its heads are kept
whole. Plans written before heads were prunable cut ``"embed"`` of a plain
``nn.MultiheadAttention`` together with channel ``j`` of every head (``head_dim`` shrinks);
that path is kept so their checkpoints still load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from prunekit.graph.labels import emit, rep_along
from prunekit.graph.ops import OpNotMappable
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    ParamSlicer,
    ViewKind,
    WeightView,
    register_adapter,
    update_attr,
)
from prunekit.structured.mha import PrunedMultiheadAttention

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _view(tensor: Tensor | None, kind: ViewKind, dim: str,
          shape: Callable[[Tensor], Tensor]) -> list[WeightView]:
    """``shape(tensor)`` and ``shape(tensor.grad)`` as one view (none if no tensor)."""
    if tensor is None:
        return []
    grad = tensor.grad
    return [WeightView(shape(tensor.detach()), kind, dim,
                       None if grad is None else shape(grad))]


class MultiheadAttentionAdapter:
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        mha = call.module
        assert isinstance(mha, nn.MultiheadAttention)
        try:
            bound = _SIGNATURE.bind(mha, *call.args, **call.kwargs)
        except TypeError as exc:
            raise OpNotMappable(f"called with arguments it does not take ({exc})") from exc
        args = bound.arguments
        query, key, value = (args.get(n) for n in ("query", "key", "value"))
        if not all(isinstance(t, Tensor) for t in (query, key, value)):
            raise OpNotMappable("query, key and value must be tensors")
        assert isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)
        if query.is_nested or key.is_nested or value.is_nested:
            raise OpNotMappable("NestedTensor inputs cannot be traced")
        space = ctx.space
        embed = ctx.consume(query, -1)  # (a vector along the last dim: no label tensor)
        keys = ctx.consume(key, -1)
        values = ctx.consume(value, -1)
        if mha.in_proj_weight is not None:  # one packed weight reads all three inputs
            space.union(embed, keys)
            space.union(embed, values)
            embed = space.find(embed)
        else:
            ctx.record_dim(call.name, mha, "kdim", keys)
            ctx.record_dim(call.name, mha, "vdim", values)
        heads = ctx.module_ids(call.name, mha, "heads", mha.num_heads, width=mha.head_dim)
        if not _swappable(mha):  # cut as torch's module allows: channel j of every head
            if mha.in_proj_weight is None:
                raise OpNotMappable("a subclass with kdim/vdim different from embed_dim")
            rep_along(space, embed.view(mha.num_heads, -1), (0,))
            embed = space.find(embed)
            ctx.block(heads, f"{type(mha).__name__} at {call.name!r} subclasses "
                             f"nn.MultiheadAttention, which ties heads to its width")
        elif not call.name:
            ctx.block(heads, "the model itself is an nn.MultiheadAttention: removing heads "
                             "replaces the module, which needs a parent module")
        ctx.record_dim(call.name, mha, "embed", embed)
        outputs = call.out if isinstance(call.out, tuple) else (call.out,)
        ctx.set_vector(outputs[0], space.find(embed), -1)
        weights = outputs[1] if len(outputs) > 1 else None
        if isinstance(weights, Tensor):
            if args.get("average_attn_weights", True):
                ctx.set_labels(weights, torch.zeros(weights.shape, dtype=torch.long))
            else:  # per-head weights [(N,) heads, L, S]
                ctx.set_labels(weights, emit(heads, -3, weights.shape))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        mha = module
        assert isinstance(mha, nn.MultiheadAttention)
        heads = mha.num_heads
        inner = heads * mha.head_dim
        out = mha.out_proj
        if dim == "embed":
            views = _view(mha.in_proj_weight, "weight", dim, lambda t: t.t())
            views += _view(mha.q_proj_weight, "weight", dim, lambda t: t.t())
            views += _view(out.weight, "weight", dim, lambda t: t)
            return views + _view(out.bias, "bias", dim, lambda t: t.reshape(-1, 1))
        if dim in ("kdim", "vdim"):
            weight = mha.k_proj_weight if dim == "kdim" else mha.v_proj_weight
            return _view(weight, "weight", dim, lambda t: t.t())
        if dim != "heads":
            return []
        views = []
        for part in range(3):
            views += _view(mha.in_proj_weight, "weight", dim, _head_rows(part, inner, heads))
            views += _view(mha.in_proj_bias, "bias", dim, _head_rows(part, inner, heads))
        for weight in (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight):
            views += _view(weight, "weight", dim, lambda t: t.reshape(heads, -1))
        for extra in (mha.bias_k, mha.bias_v):
            views += _view(extra, "bias", dim, lambda t: t.reshape(heads, -1))
        views += _view(out.weight, "weight", dim,
                       lambda t: t.reshape(t.shape[0], heads, -1).transpose(0, 1)
                       .reshape(heads, -1))
        return views

    def swap_type(self, module: nn.Module,
                  keep: Mapping[str, Tensor]) -> type[PrunedMultiheadAttention] | None:
        """torch's own module cannot hold fewer heads: any cut swaps it for the drop-in."""
        return PrunedMultiheadAttention if keep and type(module) is nn.MultiheadAttention \
            else None

    def swap(self, module: nn.Module, keep: Mapping[str, Tensor]) -> nn.Module | None:
        """The module to cut instead of ``module`` (see ``swap_type``)."""
        kind = self.swap_type(module, keep)
        if kind is None:
            return None
        assert isinstance(module, nn.MultiheadAttention)
        return kind.from_module(module)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        assert isinstance(module, nn.MultiheadAttention)
        if not isinstance(module, PrunedMultiheadAttention):
            _prune_tied(module, keep, slicer)
            return
        mha = module
        inner = mha.num_heads * mha.head_dim
        heads = keep.get("heads")
        if heads is not None:
            rows = (heads[:, None] * mha.head_dim + torch.arange(mha.head_dim)).reshape(-1)
            stacked = torch.cat([rows + i * inner for i in range(3)])
            slicer.slice(mha, "in_proj_weight", 0, stacked)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                slicer.slice(mha, name, 0, rows)
            slicer.slice(mha, "in_proj_bias", 0, stacked)
            slicer.slice(mha, "bias_k", 2, rows)
            slicer.slice(mha, "bias_v", 2, rows)
            slicer.slice(mha.out_proj, "weight", 1, rows)
            before, origin = mha.num_heads, mha.head_origin
            kept = tuple(int(h) for h in heads.tolist())
            mha.head_origin = (before, kept) if origin is None else \
                (origin[0], tuple(origin[1][h] for h in kept))
            mha.num_heads = len(kept)
            mha.out_proj.in_features = mha.num_heads * mha.head_dim
        embed = keep.get("embed")
        if embed is not None:
            slicer.slice(mha, "in_proj_weight", 1, embed)
            slicer.slice(mha, "q_proj_weight", 1, embed)
            slicer.slice(mha.out_proj, "weight", 0, embed)
            slicer.slice(mha.out_proj, "bias", 0, embed)
            mha.embed_dim = mha.out_proj.out_features = int(embed.numel())
        for dim, name in (("kdim", "k_proj_weight"), ("vdim", "v_proj_weight")):
            index = keep.get(dim)
            if index is not None:
                slicer.slice(mha, name, 1, index)
                setattr(mha, dim, int(index.numel()))
        if mha.in_proj_weight is not None:
            mha.kdim = mha.vdim = mha.embed_dim

    def sync(self, module: nn.Module) -> None:
        if not isinstance(module, PrunedMultiheadAttention):
            return
        out = module.out_proj
        embed, inner = out.weight.shape
        update_attr(module, "embed_dim", embed)
        update_attr(module, "num_heads", inner // module.head_dim)
        update_attr(out, "out_features", embed)
        update_attr(out, "in_features", inner)
        if module.in_proj_weight is not None:
            update_attr(module, "kdim", embed)
            update_attr(module, "vdim", embed)
        else:
            update_attr(module, "kdim", module.k_proj_weight.shape[1])
            update_attr(module, "vdim", module.v_proj_weight.shape[1])

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return None


def _head_rows(part: int, inner: int, heads: int) -> Callable[[Tensor], Tensor]:
    """Rows of q (part 0), k (1) or v (2) of a packed projection, one row per head."""
    return lambda t: t[part * inner:(part + 1) * inner].reshape(heads, -1)


def _swappable(mha: nn.MultiheadAttention) -> bool:
    return type(mha) in (nn.MultiheadAttention, PrunedMultiheadAttention)


def _prune_tied(mha: nn.MultiheadAttention, keep: Mapping[str, Tensor],
                slicer: ParamSlicer) -> None:
    """torch's own module: ``"embed"`` cuts channel ``j`` of every head with embed channel
    ``j`` (plans written before heads were prunable, and subclasses)."""
    if set(keep) - {"embed"}:
        raise ValueError(f"{type(mha).__name__} cannot drop {sorted(set(keep) - {'embed'})} "
                         f"itself; the plan must swap it for PrunedMultiheadAttention")
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


register_adapter(nn.MultiheadAttention, MultiheadAttentionAdapter())
register_adapter(PrunedMultiheadAttention, MultiheadAttentionAdapter())
