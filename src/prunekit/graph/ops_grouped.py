"""Grouped matrix products (``torch._grouped_mm``; ``F.grouped_mm`` calls it): the experts of
a mixture-of-experts layer, as Transformers 5 runs them by default.

``out[s, m] = a[s, k] @ b[g, k, m]``, row ``s`` in group ``g`` by ``offs``. A 3-D parameter
``b`` (or its ``transpose(-2, -1)``: experts stored ``[E, out, in]``) is a stack of layer
weights, one per expert: its k axis reads a's channels, its m axis makes fresh channels,
and its expert axis is kept whole. Index ``j`` of k or m is cut in every expert alike, so
the stack stays rectangular and the pruned product equals the unpruned one with those
channels zeroed. A computed ``b`` is a plain contraction (:func:`ops_matmul.contract`)
where its channels are the same in every group, and refused otherwise.

Grouped-product kernels want strides that are multiples of 16 bytes, so both cut axes keep
a multiple of 4 float32 channels (8 bfloat16: :func:`ops_matmul.align_experts`, a group's
``step``), as do the eager and batched experts' (so that a model pruned under one runs
under all).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from prunekit.graph.labels import varies
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_matmul import contract, param_weight, weight_axes
from prunekit.graph.trace import TraceContext


def _operand(call: OpCall, position: int, names: tuple[str, ...]) -> Any:
    if len(call.args) > position:
        return call.args[position]
    return next((call.kwargs[n] for n in names if n in call.kwargs), None)


def _grouped_mm(ctx: TraceContext, call: OpCall) -> None:
    a = _operand(call, 0, ("self", "mat_a", "input"))
    b = _operand(call, 1, ("mat2", "mat_b"))
    out = tensors_in(call.out)[0]
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise OpNotMappable("both operands must be tensors")
    if isinstance(_operand(call, 3, ("bias",)), Tensor):
        raise OpNotMappable("a bias passed to the call is not supported; add it to the "
                            "product instead")
    if b.dim() != 3 or a.dim() not in (2, 3):
        raise OpNotMappable(f"only a 2-D or 3-D mat_a times a 3-D mat_b is supported (got "
                            f"{a.dim()}-D by {b.dim()}-D: groups along k or m)")
    stacked = param_weight(ctx, b, (1, 2))  # [E, in, out], or [E, out, in] read as .mT
    if stacked is not None:
        record, in_axis, out_axis = stacked
        ctx.set_vector(out, weight_axes(ctx, record, in_axis, out_axis, ctx.consume(a, -1),
                                        experts=True), -1)
        return
    b_labels = ctx.labels(b)
    if a.dim() == 3:  # one group per batch index: a batched product
        ctx.set_labels(out, contract(ctx, ctx.labels(a), b_labels, tuple(out.shape)))
        return
    if varies(ctx.space.find(b_labels), 0):
        raise OpNotMappable("mat_b is computed and its channels differ between groups")
    ctx.set_labels(out, contract(ctx, ctx.labels(a), b_labels[0], tuple(out.shape)))


register_op(("_grouped_mm", "grouped_mm"), _grouped_mm)
