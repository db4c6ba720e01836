"""Layer adapters for Hugging Face ``transformers`` layers, registered by class name so
that ``transformers`` is never imported here.

``Conv1D`` (GPT-2, GPT): a Linear with a transposed weight ``[nx, nf]``, whose forward
reads ``self.nf`` to shape its output, so ``nf`` and ``nx`` are rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from prunekit.graph.labels import consume, emit
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    Axis,
    ParamSlicer,
    WeightView,
    axes_list,
    cut_axes,
    register_adapter_by_name,
    views_from_axes,
)
from prunekit.structured.adapters_linear import _first, _output

_AXES = (
    Axis("weight", 1, "out", "weight"),
    Axis("weight", 0, "in", "weight"),
    Axis("bias", 0, "out", "bias"),
)


class TransposedLinearAdapter:
    """``y = x @ W + b`` with ``W [in, out]``; sizes in the ``nx``/``nf`` attributes."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        x = _first(call)
        ctx.record_dim(call.name, module, "in", consume(ctx.space, ctx.labels(x), -1))
        weight = getattr(module, "weight")  # noqa: B009
        ids = ctx.module_ids(call.name, module, "out", int(weight.shape[1]))
        out = _output(call)
        ctx.set_labels(out, emit(ids, -1, out.shape))

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _AXES)

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        cut_axes(module, keep, slicer, _AXES)
        if "out" in keep:
            setattr(module, "nf", int(keep["out"].numel()))  # noqa: B010 (untyped class)
        if "in" in keep:
            setattr(module, "nx", int(keep["in"].numel()))  # noqa: B010

    def sync(self, module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            setattr(module, "nx", int(weight.shape[0]))  # noqa: B010
            setattr(module, "nf", int(weight.shape[1]))  # noqa: B010

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_AXES)


register_adapter_by_name("transformers.pytorch_utils.Conv1D", TransposedLinearAdapter())
