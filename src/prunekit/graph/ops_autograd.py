"""``torch.autograd.grad`` inside a forward (a physics-informed network's PDE residual, a
Hamiltonian network's ``dH/dx``), and the ``.grad`` of a tensor.

``torch.autograd.grad(outputs, inputs, ...)`` returns one gradient per input, of the input's
shape: the derivative with respect to channel ``i`` of an input belongs to channel ``i``, so
each gradient takes its input's labels. Nothing else couples: ``outputs`` are contracted
away (a channel removed from them would have been constant, with zero derivative), and the
backward ops run in autograd's engine, which the trace does not see and need not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.graph.ops import OpCall, OpNotMappable, register_op
from prunekit.graph.trace import TraceContext


def _grad(ctx: TraceContext, call: OpCall) -> None:
    if call.func is not torch.autograd.grad:  # the ``.grad`` property: the tensor's shape
        source, out = (call.args[0] if call.args else None), call.out
        if isinstance(out, Tensor) and isinstance(source, Tensor) and out.shape == source.shape:
            ctx.set_labels(out, ctx.labels(source))
        return
    inputs = call.arg(1, "inputs")
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs or ())
    grads = call.out if isinstance(call.out, (tuple, list)) else (call.out,)
    if len(grads) != len(inputs):
        raise OpNotMappable(f"{len(grads)} gradients for {len(inputs)} inputs")
    for source, grad in zip(inputs, grads, strict=True):
        if isinstance(grad, Tensor):
            if not isinstance(source, Tensor) or grad.shape != source.shape:
                raise OpNotMappable("a gradient whose shape is not its input's "
                                    "(is_grads_batched?)")
            ctx.set_labels(grad, ctx.labels(source))


register_op(("grad",), _grad)
