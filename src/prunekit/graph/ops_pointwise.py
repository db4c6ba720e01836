"""Pointwise ops: activations, dropout, casts (labels pass through) and binary arithmetic
(add/sub/mul/div/where...: operands are coupled position by position, with broadcasting).

Broadcasting rule: an operand that is broadcast along a dimension (size 1 there) does not
constrain channels that vary along that dimension — a padding mask ``[B, T, 1]`` times
``x [B, T, D]`` leaves D free; a gate ``[B, C, 1, 1]`` times ``x [B, C, H, W]`` couples C.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from prunekit.graph.labels import (
    NEUTRAL,
    LabelSpace,
    as_line,
    cut_broadcast,
    fixed_shape,
    rep_along,
    varies,
    varying,
)
from prunekit.graph.ops import (
    LIKE,
    OpCall,
    OpNotMappable,
    call_tensors,
    on_cpu,
    register_op,
    tensors_in,
)
from prunekit.graph.ops_reduce import by_value
from prunekit.graph.ops_slice import judge_selection
from prunekit.graph.sizes import SizeInt, note_number
from prunekit.graph.trace import TraceContext

UNARY = (
    "relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid",
    "hardtanh", "leaky_relu", "elu", "selu", "celu", "mish", "softplus", "softsign",
    "tanhshrink", "threshold", "logsigmoid", "log_sigmoid",
    "normalize",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
    "abs", "neg", "exp", "log", "log1p", "sqrt", "rsqrt", "square", "sin", "cos", "erf",
    "reciprocal", "sign", "floor", "ceil", "round", "trunc", "nan_to_num", "logical_not",
    "bitwise_not", "isnan", "isinf", "isfinite", "pos", "invert", "not",
    "to", "float", "double", "half", "bfloat16", "int", "long", "bool", "type", "type_as",
    "byte", "char", "short",
    "cpu", "cuda", "detach", "clone", "contiguous", "requires_grad", "data",
    "zero", "fill", "uniform", "normal", "bernoulli",
    "positive", "float_power", "bucketize",  # (bucketize: each value's bucket)
    # mix along a dim, each element staying where it is (as softmax does): per-slice
    # renormalisation, AlexNet's cross-channel local response norm
    "renorm", "local_response_norm",
    # elementwise math and torch's alias names for the ops above
    "hardshrink", "softshrink", "rrelu", "negative", "absolute", "fix", "expm1", "exp2",
    "log2", "log10", "tan", "sinh", "cosh", "asin", "acos", "atan", "asinh", "acosh", "atanh",
    "arcsin", "arccos", "arctan", "arcsinh", "arccosh", "arctanh", "erfc", "erfinv", "logit",
    "sgn", "frac", "deg2rad", "rad2deg", "sinc", "special_expit", "special_erf",
    "special_erfc", "special_logit", "special_expm1", "special_exp2", "special_sinc",
    # special functions (a Beta or Gamma policy's log-density: lgamma, digamma)
    "lgamma", "digamma", "special_gammaln", "special_digamma", "special_psi", "i0",
    "special_i0", "special_i0e", "special_i1", "special_i1e", "special_ndtr", "special_ndtri",
    "special_log_ndtr", "special_entr", "special_erfcx",
)

FIXED_OPERAND = ("meets a tensor the code makes at a fixed size along these channels "
                 "(torch.arange(n), torch.zeros(T, dim)), which would not shrink with them; "
                 "size it from a tensor's shape (x.shape[-1]) or keep it as a "
                 "floating-point buffer to prune them (int and bool buffers are read as "
                 "indices, which keep their size)")

BINARY = (
    "add", "sub", "mul", "div", "truediv", "floordiv", "true_divide", "floor_divide",
    "remainder", "fmod", "mod", "pow", "maximum", "minimum", "fmax", "fmin", "atan2",
    "masked_fill", "lerp", "addcmul", "addcdiv", "rsub", "copy", "xlogy",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor",
    "and", "or", "xor", "bitwise_and", "bitwise_or", "bitwise_xor", "hypot",
    "multiply", "subtract", "divide", "greater", "greater_equal", "less", "less_equal",
    "not_equal", "copysign", "logaddexp", "logaddexp2", "polar", "complex",
)


def _unary(ctx: TraceContext, call: OpCall) -> None:
    first, out = call.args[0] if call.args else None, call.out
    # (the common call, one tensor in and out, without walking args and result)
    inputs = [first] if isinstance(first, Tensor) else (
        tensors_in(call.args[:1]) or tensors_in(call.kwargs.get("input")))
    outputs = [out] if isinstance(out, Tensor) else tensors_in(out)
    if not inputs:
        raise OpNotMappable("no tensor input")
    if out is inputs[0]:  # w.type(torch.float32) of a float32 w, x.relu_(): labels stay
        return
    if (call.name in _CASTS or call.name in _ELEMENTWISE) and \
            _defer_cast(ctx, inputs[0], outputs):
        return
    vector = ctx.vector_of(inputs[0])
    if vector is not None and all(t.shape == inputs[0].shape for t in outputs):
        for tensor in outputs:  # the same labels, still in vector form
            ctx.set_vector(tensor, vector[1], vector[0])
        return
    source = ctx.labels(inputs[0])
    for tensor in outputs:
        if tensor.shape != source.shape:
            try:
                labels = source.expand(tensor.shape)
            except RuntimeError as exc:
                raise OpNotMappable(f"output shape {tuple(tensor.shape)} differs") from exc
        else:
            labels = source
        ctx.set_labels(tensor, labels)


_CASTS = frozenset(("to", "float", "double", "half", "bfloat16", "type", "type_as",
                    "data", "detach"))  # (the same elements too)
# a function of each element alone: cut as the parameter it is computed from (Mamba's
# ``A = -torch.exp(self.A_log.float())`` read by an einsum as a weight; BinaryConnect's
# ``self.weight.sign()``, a clipped ``self.weight.clamp(-c, c)``, a rounded one)
_ELEMENTWISE = frozenset(("exp", "neg", "negative", "sigmoid", "softplus", "abs", "log",
                          "sqrt", "square", "tanh", "reciprocal", "expm1", "log1p",
                          "sign", "sgn", "round", "floor", "ceil", "trunc", "relu",
                          "clamp", "clip", "clamp_min", "clamp_max", "hardtanh"))

# softmax and its kin: (position of ``dim`` among the arguments, its default)
_NORMALISING = {"softmax": (1, None), "log_softmax": (1, None), "softmin": (1, None),
                "gumbel_softmax": (4, -1)}


# running scans: each output is a function of the elements before it along ``dim``
_SCANS = ("cumsum", "cumprod", "logcumsumexp")


def _normalising(ctx: TraceContext, call: OpCall) -> None:
    """``softmax(x, dim)`` and kin keep each element where it is (labels as :func:`_unary`),
    but each output is normalised over ``dim``: where channels vary along it (C51's atoms,
    DINO's prototypes, a classifier's classes in a distillation loss) removing some would
    renormalise the rest, and the values the kept ones take would change, so the channels
    of every line along ``dim`` that holds several of them are kept whole. A running scan
    (``cumsum``, ``cumprod``, ``logcumsumexp``) along channels is kept whole alike: a kept
    channel's running total holds the removed channels before it (a monotone scale
    ``torch.cumsum(F.softplus(self.steps), 0)``); along time it prunes as :func:`_unary`."""
    x = call.args[0] if call.args else call.kwargs.get("input", call.kwargs.get("logits"))
    scan = call.name in _SCANS
    position, default = (1, None) if scan else _NORMALISING[call.name]
    dim = call.arg(position, "dim", default)
    if scan and not isinstance(dim, int):
        raise OpNotMappable(f"dim={dim!r} is not an int")
    why = "accumulates over these channels" if scan else "normalises over these channels"
    if isinstance(x, Tensor) and x.dim() and (dim is None or isinstance(dim, int)):
        if dim is None:  # torch's implicit choice for softmax without dim
            dim = 0 if x.dim() in (0, 1, 3) else 1
        dim %= x.dim()
        vector = ctx.vector_of(x)
        if vector is not None:
            found = ctx.space.find(vector[1])
            if vector[0] % x.dim() == dim and bool((found != found[0]).any()):
                ctx.block(found, f"{call.display} {why}")
        else:
            canon = ctx.space.find(ctx.labels(x))
            if varies(canon, dim):
                lines = _compact_except(canon, dim).movedim(dim, -1)
                lines = lines.reshape(-1, lines.shape[-1])
                held = (lines != lines[:, :1]).any(1)
                ctx.block(lines[held].reshape(-1), f"{call.display} {why}")
    _unary(ctx, call)


def _compact_except(labels: Tensor, keep: int) -> Tensor:
    """``labels`` with every broadcast dim but ``keep`` narrowed to one position."""
    for d in range(labels.dim()):
        if d != keep and labels.shape[d] > 1 and labels.stride(d) == 0:
            labels = labels.narrow(d, 0, 1)
    return labels


def _defer_cast(ctx: TraceContext, source: Tensor, outputs: list[Tensor]) -> bool:
    """A parameter cast to another dtype (``F.linear(x.float(), self.weight.float())`` in a
    bfloat16 model's MoE router), its ``.data`` or ``.detach()``, or a function of each of
    its elements (``-torch.exp(self.A_log)``): its elements one for
    one, left for a layer to take as the parameter (kind ``"same"`` of
    :mod:`prunekit.graph.param_views`); labelled as the parameter if anything else reads it.
    False (nothing done) for any other cast."""
    root = ctx.same_as_param(source)
    if root is None or len(outputs) != 1 or outputs[0].shape != root.shape:
        return False
    out = outputs[0]
    ctx.param_views.defer(out, root, "same",
                          lambda partial: ctx.set_labels(out, ctx.labels(source)))
    return True


def _defer_mask(ctx: TraceContext, call: OpCall, operands: list[Tensor],
                outputs: list[Tensor]) -> bool:
    """``self.weight * self.mask``, a parameter times a float buffer or parameter of its
    very shape (PixelCNN's masked convolution, MADE's masked linear, a hand-kept pruning
    mask), or of its shape but for dims of size 1 it is broadcast along (efficient-kan's
    ``spline_weight * spline_scaler.unsqueeze(-1)``): the weight, element for element, left
    for a layer to take as its weight (kind ``"same"``), and the mask is then cut as the
    weight is, along the dims it has; labelled as the product if anything else reads it.
    False (nothing done) for any other call."""
    if len(operands) != 2 or len(outputs) != 1 or outputs[0] is operands[0]:
        return False
    out = outputs[0]
    first, second = ctx.same_as_param(operands[0]), ctx.same_as_param(operands[1])
    if first is None or second is None or out.dim() < 2:
        return False
    roots = [first, second]
    full = [k for k in (0, 1) if operands[k].shape == out.shape == roots[k].shape]
    if len(full) == 2:
        swap = isinstance(roots[1], torch.nn.Parameter) and \
            not isinstance(roots[0], torch.nn.Parameter)
        weight, mask = (roots[1], roots[0]) if swap else (roots[0], roots[1])
        axes: tuple[int | None, ...] | None = None
        label = functools.partial(_label_product, ctx, call)
    elif len(full) == 1:
        weight, mask = roots[full[0]], roots[1 - full[0]]
        axes = _broadcast_axes(operands[1 - full[0]], mask, out)
        if axes is None:
            return False
        label = functools.partial(_label_scaled, ctx, out, operands[full[0]],
                                  operands[1 - full[0]])
    else:
        return False
    ctx.param_views.defer(out, weight, "same", lambda partial: label())
    ctx.param_views.companions[id(out)] = ((mask, axes),)
    return True


def _mask_in_place(ctx: TraceContext, operands: list[Tensor], outputs: list[Tensor]) -> bool:
    """``self.weight.data *= self.mask`` before the layer's own forward (PixelCNN's masked
    convolution as jzbontar's pixelcnn-pytorch writes it): the weight's elements stay where
    they are, so it is no elementwise read; the mask, of the weight's shape, is cut as the
    weight is when a layer takes it. False (nothing done) for any other call."""
    if len(operands) != 2 or len(outputs) != 1 or outputs[0] is not operands[0] or \
            operands[0].shape != operands[1].shape:
        return False
    weight, mask = ctx.same_as_param(operands[0]), ctx.same_as_param(operands[1])
    if weight is None or mask is None or weight is mask or weight.shape != operands[0].shape:
        return False
    ctx.at_end.append(lambda: ctx._cut_alike(weight, ((mask, None),)))
    return True


def _defer_scale(ctx: TraceContext, call: OpCall, operands: list[Tensor],
                 outputs: list[Tensor]) -> bool:
    """``self.weight * self.scale`` or ``self.weight / c``, a parameter times or over a
    Python number or a 0-d tensor (the equalized learning rate of ProGAN's and StyleGAN's
    EqualLinear and EqualConv2d): the weight, element for element, left for a layer to take
    as its weight (kind ``"same"``); labelled as the product if anything else reads it.
    False (nothing done) for any other call."""
    if len(outputs) != 1 or len(call.args) != 2 or outputs[0] is call.args[0]:
        return False
    out = outputs[0]
    # W * s or W / s; s * W
    orders = [call.args] if call.name == "div" else [call.args, call.args[::-1]]
    weight = next((w for w, s in orders if isinstance(w, Tensor) and w.dim() and
                   w.shape == out.shape and _is_scalar(s)), None)
    if weight is None:
        return False
    root = ctx.same_as_param(weight)
    if root is None or root.shape != out.shape:
        return False
    ctx.param_views.defer(out, root, "same", lambda partial: _label_product(ctx, call))
    return True


def _is_scalar(value: object) -> bool:
    """A Python number (not a bool) or a 0-d tensor."""
    if isinstance(value, Tensor):
        return value.dim() == 0
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _label_scaled(ctx: TraceContext, out: Tensor, weight: Tensor, mask: Tensor) -> None:
    """Labels of a deferred ``W * s`` with ``s`` broadcast along some of ``W``'s dims, read
    as a tensor after all (efficient-kan's scaled spline weight, reshaped before its
    ``F.linear``): ``W``'s elements, each joined with the element of ``s`` that scales it.
    Both are parameters, so their channel axes are found from their elements when the trace
    ends: ``s`` then follows the axes of ``W`` it is not broadcast along."""
    labels = ctx.space.find(ctx.labels(weight))
    ctx.space.union(labels, ctx.space.find(ctx.labels(mask)).expand(out.shape))
    ctx.set_labels(out, ctx.space.find(labels))


def _built_scaled(ctx: TraceContext, operands: list[Tensor], shape: torch.Size,
                  outputs: list[Tensor]) -> bool:
    """``A * dt[:, None]`` of two tensors built from parameters alone, one of the result's
    shape and the other broadcast along some of its dims (S4D's ``A * torch.exp(log_dt)
    .unsqueeze(-1)``, ``v.reshape(-1, 1) * A``): labelled as :func:`_label_scaled` labels a
    deferred ``W * s``, each element of ``A`` joined with the element that scales it; both
    are parameters' elements, whose channel axes are found when the trace ends. (Read as
    activations, ``dt`` broadcast against ``A``'s varying labels was kept whole, while
    ``A``'s rows were cut with the channels they later meet, and the check failed.) False
    (nothing done) for any other call."""
    if len(operands) != 2 or any(t.shape != shape for t in outputs) or \
            not all(ctx.is_param_built(t) for t in operands):
        return False
    for full, scale in (operands, operands[::-1]):
        if full.shape != shape or scale.dim() > full.dim() or scale.shape == shape or \
                full.dim() < 2:
            continue
        for tensor in outputs:
            _label_scaled(ctx, tensor, full, scale)
        return True
    return False


def _broadcast_axes(operand: Tensor, root: Tensor, out: Tensor) -> tuple[int | None, ...] | None:
    """For a mask ``operand`` (``root`` itself, or ``root`` with dims of size 1 added) that
    broadcasts to ``out`` along its size-1 dims: the axis of ``root`` for each dim of
    ``out`` (None where the mask is broadcast); None if it is no such mask."""
    if operand.dim() != out.dim():
        return None
    kept = [d for d in range(out.dim()) if operand.shape[d] != 1]
    if any(operand.shape[d] != out.shape[d] for d in kept):
        return None
    if root.shape == operand.shape:  # a parameter with dims of size 1 of its own
        return tuple(d if d in kept else None for d in range(out.dim()))
    if tuple(root.shape) != tuple(out.shape[d] for d in kept):
        return None
    return tuple(kept.index(d) if d in kept else None for d in range(out.dim()))


def _defer_sum(ctx: TraceContext, call: OpCall, operands: list[Tensor],
               outputs: list[Tensor]) -> bool:
    """``mu + sigma * eps`` (NoisyNet's weight, whose eval branch reads ``mu`` alone), a
    parameter plus (or minus) another of its very shape or a deferred ``W * mask``: left, as
    :func:`_defer_mask` leaves a product, for a layer to take as the first parameter's
    weight, the others cut as it is. False (nothing done) for any other call."""
    if len(operands) != 2 or len(outputs) != 1 or outputs[0] is operands[0]:
        return False
    out = outputs[0]
    if not (out.dim() >= 2 and operands[0].shape == operands[1].shape == out.shape):
        return False
    views = ctx.param_views
    roots = [ctx.same_as_param(operand) for operand in operands]
    if roots[0] is None or roots[1] is None or roots[0].shape != out.shape or \
            roots[1].shape != out.shape:
        return False
    companions = ((roots[1], None), *views.companions.get(id(operands[1]), ()),
                  *views.companions.get(id(operands[0]), ()))

    def label(partial: bool) -> None:
        for operand in operands:  # a deferred operand is read as a tensor after all
            views.read(operand, partial)
        _label_product(ctx, call)

    views.defer(out, roots[0], "same", label)
    views.companions[id(out)] = companions
    return True


def _label_product(ctx: TraceContext, call: OpCall) -> None:
    operands = call_tensors(call.args, call.kwargs)
    out = call.out
    ctx.set_labels(out, combine(ctx, [ctx.labels(t) for t in operands], out.shape))


def _binary(ctx: TraceContext, call: OpCall) -> None:
    for arg in call.args[:2]:  # a width as a scalar operand (z / z.shape[-1]): a number
        if type(arg) is SizeInt:
            note_number(arg)
    outputs = [call.out] if isinstance(call.out, Tensor) else tensors_in(call.out)
    target = outputs[0] if outputs else call.args[0]
    shape = target.shape
    operands = call_tensors(call.args, call.kwargs)
    results = outputs or [target]
    if call.name == "mul" and _mask_in_place(ctx, operands, outputs):
        return
    if call.name in ("mul", "div") and _defer_scale(ctx, call, operands, outputs):
        return
    if call.name == "mul" and _defer_mask(ctx, call, operands, outputs):
        return
    if call.name in ("add", "sub") and _defer_sum(ctx, call, operands, outputs):
        return
    _join_param_rows(ctx, operands, shape)
    _params_meet_fixed(ctx, operands, shape)
    if _built_scaled(ctx, operands, shape, results):
        return
    if any(fast(ctx, operands, shape, results)
           for fast in (_vector_operands, _vector_and_passive, _vector_and_full)):
        return
    labels = combine(ctx, [ctx.labels(t) for t in operands], shape)
    # (x + pos_embedding after a class token: x's roots again, but by value only)
    line = as_line(labels) if labels.dim() > 1 and any(
        ctx.param_record(t) is not None for t in operands) else None
    for tensor in results:
        if line is not None:  # the same values, kept in vector form for the next ops
            ctx.set_vector(tensor, line[1], line[0])
        else:
            ctx.set_labels(tensor, labels)


def _vector_operands(ctx: TraceContext, operands: list[Tensor], shape: torch.Size,
                     outputs: list[Tensor]) -> bool:
    """``combine`` for one or two operands whose labels are vectors along the same dim, of
    the result's full size there (``x + y``, an SE gate ``x * s[B, C, 1, 1]``): neither
    varies along a dim the other is broadcast on, so combine joins the two vectors' roots
    and keeps the root of their maximum. False (nothing done) for any other call."""
    if not 1 <= len(operands) <= 2 or any(t.shape != shape for t in outputs):
        return False
    vectors = [ctx.vector_of(t) for t in operands]
    first = vectors[0]
    if first is None:
        return False
    dim = first[0]
    if any(v is None or v[0] != dim or t.dim() != len(shape) or t.shape[dim] != shape[dim]
           for v, t in zip(vectors, operands, strict=True)):
        return False
    space = ctx.space
    roots = [space.find(v[1]) for v in vectors]  # type: ignore[index]
    if len(roots) == 2:
        space.union(roots[0], roots[1])
        roots[0] = space.find(_broadcast_max(roots[0], roots[1]))
    for tensor in outputs:
        ctx.set_vector(tensor, roots[0], dim)
    return True


def _vector_and_passive(ctx: TraceContext, operands: list[Tensor], shape: torch.Size,
                        outputs: list[Tensor]) -> bool:
    """``combine`` of an operand whose labels are a vector along dim d (of the result's full
    size there) with one that carries no channels against it: an untracked tensor (NEUTRAL,
    never joined, never varies) or a single label (a one-label vector or a broadcast
    constant) broadcast along d while the vector varies (combine's broadcasting rule drops
    it, and blocks nothing: it varies nowhere). The result keeps the vector's roots.
    False (nothing done) for any other call."""
    if len(operands) != 2 or any(t.shape != shape for t in outputs):
        return False
    for main, other in (operands, operands[::-1]):
        vector = ctx.vector_of(main)
        if vector is None or main.dim() != len(shape) or main.shape[vector[0]] != shape[
                vector[0]]:
            continue
        dim, roots = vector[0], ctx.space.find(vector[1])
        if not ctx.is_tracked(other) and _spans(other, dim, len(shape)):
            continue  # a constant of the channels' full width: combine blocks them
        if ctx.is_tracked(other):
            side = ctx.vector_of(other)
            if side is not None:
                if side[0] != dim or other.dim() != len(shape) or (
                        other.shape[dim] != 1 or not varies(roots, 0)):
                    continue
            elif not _one_label_along(ctx.labels(other), dim, len(shape)) or not varies(
                    roots, 0):
                continue
        for tensor in outputs:
            ctx.set_vector(tensor, roots, dim)
        return True
    return False


def _spans(tensor: Tensor, dim: int, ndim: int) -> bool:
    """True if ``tensor``, an operand of a result with ``ndim`` dims, is not broadcast
    along ``dim`` of the result (it has a dim of size > 1 there)."""
    pad = ndim - tensor.dim()
    return pad <= dim and tensor.shape[dim - pad] > 1


def _one_label_along(labels: Tensor, dim: int, ndim: int) -> bool:
    """True if ``labels`` (of an operand of a result with ``ndim`` dims) hold one label,
    broadcast (every dim of size > 1 has stride 0), and the operand is broadcast along
    ``dim`` of the result (``rsqrt(x.pow(2).mean(-1, keepdim=True))``, a scalar param)."""
    pad = ndim - labels.dim()
    return pad >= 0 and (pad > dim or labels.shape[dim - pad] == 1) and all(
        n <= 1 or s == 0 for n, s in zip(labels.shape, labels.stride(), strict=True))


def _vector_and_full(ctx: TraceContext, operands: list[Tensor], shape: torch.Size,
                     outputs: list[Tensor]) -> bool:
    """``combine`` of an operand of the result's shape whose labels are a vector of
    non-NEUTRAL roots along dim d with any tracked operand that is not broadcast along d
    (``x + pos_embedding``, ``x * scale``): x is broadcast nowhere and varies only along d,
    so combine joins every label of the other with x's label at that index along d, and
    the result's root there is x's root: a vector again. False (nothing done) otherwise."""
    if len(operands) != 2 or any(t.shape != shape for t in outputs):
        return False
    for main, other in (operands, operands[::-1]):
        vector = ctx.vector_of(main)
        if vector is None or main.shape != shape or not ctx.is_tracked(other):
            continue
        dim, pad = vector[0], len(shape) - other.dim()
        if pad < 0 or dim < pad or other.shape[dim - pad] != shape[dim]:
            continue
        roots = ctx.space.find(vector[1])
        if roots.numel() and int(roots.min()) == NEUTRAL:
            continue
        labels = ctx.labels(other)
        if labels.numel() and int(labels.max()) == NEUTRAL:
            continue  # a constant of the channels' full width (a plain tensor attribute
            # cast by type_as(x)): combine keeps those channels whole
        view = [1] * other.dim()
        view[dim - pad] = roots.numel()
        ctx.space.union(roots.view(view), labels)
        roots = ctx.space.find(roots)
        for tensor in outputs:
            ctx.set_vector(tensor, roots, dim)
        return True
    return False


def combine(ctx: TraceContext, operands: list[Tensor], shape: torch.Size) -> Tensor:
    """Couple ``operands`` (label tensors broadcastable to ``shape``) and return the result's
    labels, following the broadcasting rule of the module docstring."""
    space = ctx.space
    acc: Tensor | None = None
    acc_bcast: set[int] = set()
    fixed: set[int] = set()  # dims that an operand carrying no channels spans
    for lab in operands:
        try:
            full = space.find(lab).expand(shape) if lab.dim() <= len(shape) else None
        except RuntimeError:
            full = None
        if full is None:
            raise OpNotMappable(f"operand of shape {tuple(lab.shape)} does not broadcast")
        pad = len(shape) - lab.dim()
        bcast = _broadcast_dims(lab.shape, shape)
        if lab.numel() and int(lab.max()) == NEUTRAL:
            fixed.update(d for d in range(pad, len(shape)) if shape[d] > 1 and d not in bcast)
        if acc is None:
            acc, acc_bcast = full, bcast
            continue
        acc_dims, full_dims = varying(acc), varying(full)
        acc_over = not acc_dims.isdisjoint(bcast)
        new_over = not full_dims.isdisjoint(acc_bcast)
        if not acc_over and not new_over:
            space.union(acc, full)
            # the root (after the join) of either side: a channel's class, however it
            # was reached (so ``x + pos_embedding`` is again a vector of x's roots)
            acc = space.find(_broadcast_max(acc, full))
            acc_bcast &= bcast
        elif acc_over and not new_over:
            # ``full`` is broadcast along acc's channels, so it cannot follow them; its own
            # channels (along dims where acc is constant) cannot shrink either
            if full_dims:
                space.block(full, "broadcast against channels on another axis")
        elif new_over and not acc_over:
            if acc_dims:
                space.block(acc, "broadcast against channels on another axis")
            acc, acc_bcast = full, bcast
        else:  # an outer product of two channel sets: it can follow one of them
            acc, acc_bcast = _outer_product(space, acc, acc_bcast, full, bcast, shape)
    if acc is None:
        return torch.full(tuple(shape), NEUTRAL, dtype=torch.long)
    if fixed and not fixed.isdisjoint(varying(acc)):
        space.block(acc, FIXED_OPERAND)
    return acc


def _params_meet_fixed(ctx: TraceContext, operands: list[Tensor], shape: torch.Size) -> None:
    """A parameter used directly times (or plus) a tensor whose labels are one class kept
    whole, such as a model input, along dims that both span (rtdl's periodic embedding
    ``self.freq * x[..., None]``: ``freq``'s rows meet the input's features): those axes of
    the parameter cannot be its channel axis, which :mod:`prunekit.graph.dependency` finds
    when the trace ends (a hand-written linear ``(x[..., None] * W).sum(1)`` cuts ``W``'s
    other axis). Before, ``freq``'s rows were cut and the forward check failed."""
    if len(operands) != 2:
        return
    for built, other in (operands, operands[::-1]):
        if not ctx.is_param(built) or ctx.is_param_built(other) or not ctx.is_tracked(other):
            continue
        labels = ctx.labels(other)
        if not labels.numel() or int(labels.max()) != int(labels.min()) or \
                not ctx.space.one_blocked_class(labels):
            continue
        pad_other, pad_built = len(shape) - other.dim(), len(shape) - built.dim()
        spans = {d + pad_other for d in range(other.dim()) if other.shape[d] > 1}
        mine = {d + pad_built for d in varying(ctx.space.find(ctx.labels(built)))}
        record = ctx.param_record(built)
        if spans & mine and record is not None:
            record.fixed_axes.update(d - pad_built for d in spans & mine)


def _join_param_rows(ctx: TraceContext, operands: list[Tensor], shape: torch.Size) -> None:
    """An operand computed from parameters alone shares a channel dim with another operand
    and varies, by its elements' own ids, along dims where that operand is broadcast
    (Mamba's ``A[None, :, None, :] * dt[:, :, :, None]``: channel ``c`` of ``dt`` scales the
    whole row ``A[c, :]``). Its elements along those dims go with that operand's channels,
    so they are joined there (else the channels would be kept whole as broadcast against
    channels)."""
    built = [i for i, t in enumerate(operands) if ctx.is_param_built(t)]
    if len(operands) < 2 or not built or len(built) == len(operands):
        return
    pads = [len(shape) - t.dim() for t in operands]
    spans = [_broadcast_dims(t.shape, shape) for t in operands]
    vary: dict[int, set[int]] = {}

    def varying_of(j: int) -> set[int]:  # dims (of the result) along which operand j varies
        if j not in vary:
            vary[j] = {d + pads[j] for d in varying(ctx.space.find(ctx.labels(operands[j])))}
        return vary[j]

    for i in built:
        others = [j for j in range(len(operands)) if j not in built]
        wide = {d + pads[i] for d in range(operands[i].dim()) if operands[i].shape[d] > 1}
        if not wide & set().union(*(spans[j] for j in others)):
            continue
        mine = varying_of(i)
        dims = {d for j in others if varying_of(j) & mine for d in spans[j] & mine}
        if dims:
            labels = ctx.space.find(ctx.labels(operands[i]))
            rep_along(ctx.space, labels, tuple(d - pads[i] for d in sorted(dims)))


OUTER = "outer-product broadcasting mixes channels"


def _outer_product(space: LabelSpace, acc: Tensor, acc_bcast: set[int], full: Tensor,
                   bcast: set[int], shape: torch.Size) -> tuple[Tensor, set[int]]:
    """The labels of an outer product of two operands whose channels lie along dims where
    the other is broadcast: it follows the side with more channels, the other keeps its
    width (Mamba's ``dt[..., None] * B[:, None]``: inner channels times state channels, so
    the state stays whole); with as many on both sides, neither shrinks."""
    wide_acc, wide_full = space.roots(acc).numel(), space.roots(full).numel()
    if wide_acc > wide_full:
        space.block(full, f"{OUTER}; the other side (more channels) shrinks")
        return acc, acc_bcast
    if wide_full > wide_acc:
        space.block(acc, f"{OUTER}; the other side (more channels) shrinks")
        return full, bcast
    space.block(full, OUTER)
    space.block(acc, OUTER)
    return torch.full(tuple(shape), space.block_id(OUTER), dtype=torch.long), acc_bcast


def _broadcast_dims(operand: torch.Size, shape: torch.Size) -> set[int]:
    """The dims of the result ``shape`` (wider than 1) along which an operand of shape
    ``operand`` is broadcast."""
    pad = len(shape) - len(operand)
    return {d for d in range(len(shape)) if shape[d] > 1 and (d < pad or operand[d - pad] == 1)}


def _broadcast_max(a: Tensor, b: Tensor) -> Tensor:
    """``maximum(a, b)`` computed once per position that is not broadcast in both."""
    if a is b:
        return a
    small_a, small_b = cut_broadcast(a, b)
    if small_a is a:
        return torch.maximum(a, b)
    return torch.maximum(small_a, small_b).expand(a.shape)


def _setitem(ctx: TraceContext, call: OpCall) -> None:
    """``x[index] = value``: the value's labels join those of the positions written. Where
    ``index`` is a mask of ``x``'s shape (``x[x < 0] = 0``) the write is elementwise, as
    ``torch.where(mask, value, x)``, and the mask joins ``x``; other indices are judged as
    the getitem that reads the same positions (``x[:, 2:4] = 0`` writes to channels the
    code names, which are kept whole; ``x[:, :self.k] = y`` rewrites ``self.k``)."""
    target, index = call.args[0], call.args[1]
    value = call.args[2] if len(call.args) > 2 else None
    if isinstance(index, Tensor) and index.dtype == torch.bool and index.shape == target.shape:
        labels = combine(ctx, [ctx.labels(target), ctx.labels(index)], target.shape)
    else:
        judge_selection(ctx, call, target)
        labels = ctx.labels(target)
    labels = ctx.space.find(labels).clone()
    index = on_cpu(index)  # labels live on the CPU
    region = labels[index]
    if isinstance(value, Tensor):
        incoming = combine(ctx, [region, ctx.labels(value)], region.shape)
        labels[index] = incoming
    ctx.set_labels(target, labels)


def _index_put(ctx: TraceContext, call: OpCall) -> None:
    """``target.index_put_(indices, values, accumulate)`` is ``target[indices] = values``
    (or ``+=``: a GNN's scatter-sum over nodes), judged as that setitem; the result, a new
    tensor for ``index_put``, takes the target's labels."""
    target, indices = call.arg(0, "input"), call.arg(1, "indices")
    values = call.arg(2, "values")
    if not isinstance(target, Tensor) or not isinstance(indices, (tuple, list)):
        raise OpNotMappable("expected a tensor and a tuple of index tensors")
    index = tuple(indices)
    _setitem(ctx, OpCall(call.func, "setitem", call.display, (target, index, values), {},
                         None))
    for out in tensors_in(call.out):
        if out is not target:
            ctx.set_labels(out, ctx.labels(target))


def _index_add(ctx: TraceContext, call: OpCall) -> None:
    """``target.index_add(dim, index, source)`` (Transformers' eager experts add each
    expert's rows into the tokens' output) and ``index_copy`` (Transformers' static cache
    writes the new keys at their positions): slice ``i`` of ``source`` goes to slice
    ``index[i]`` of ``target``, so their labels are joined position by position, as
    ``target[index] += source`` along ``dim``. Along a dim that carries channels the
    literal positions in ``index`` would go stale, so that is refused."""
    args = (*call.args, *(call.kwargs[k] for k in ("dim", "index", "source")
                          if k in call.kwargs))
    target, dim, index, source = args[:4]
    if not isinstance(source, Tensor) or not isinstance(index, Tensor):
        raise OpNotMappable("index and source must be tensors")
    labels = ctx.space.find(ctx.labels(target))
    incoming = ctx.labels(source)
    if varies(labels, dim) or varies(ctx.space.find(incoming), dim):
        raise OpNotMappable(f"it adds along dim {dim}, which carries channels")
    index = on_cpu(index)  # labels live on the CPU
    labels = labels.clone()
    labels.index_copy_(dim, index, combine(ctx, [labels.index_select(dim, index), incoming],
                                           incoming.shape))
    ctx.set_labels(tensors_in(call.out)[0], labels)


def _like(ctx: TraceContext, call: OpCall) -> None:
    """``torch.ones_like(x)`` and kin: a tensor of ``x``'s shape, whose width follows ``x``'s
    (labels as :func:`_unary`). Of a tensor whose values are not yet judged read (a part of
    a channel dim picked at fixed positions, torchdiffeq's ``torch.ones_like(x[:, :1]) * t``:
    :func:`~prunekit.graph.ops_slice.judge_selection`), only the shape is read: the result
    is fixed at that shape, and the channels it was picked from stay free."""
    source = call.args[0] if call.args else call.kwargs.get("input")
    out = call.out
    watched = ctx.watched.get(id(source)) if isinstance(source, Tensor) else None
    if watched is not None and watched[0] is source and isinstance(out, Tensor):
        ctx.set_labels(out, fixed_shape(ctx.space, tuple(out.shape),
                                        f"{call.display} of a fixed part of a channel dim"))
        return
    _unary(ctx, call)


register_op(UNARY, _unary)
register_op(LIKE, _like)
register_op((*_NORMALISING, *_SCANS), _normalising)
register_op(BINARY, _binary)


def _where(ctx: TraceContext, call: OpCall) -> None:
    """``torch.where(c, a, b)`` is elementwise; ``torch.where(c)`` gives positions."""
    if len(call.args) + len(call.kwargs) == 1:
        by_value(ctx, call)
    else:
        _binary(ctx, call)


register_op(("where",), _where)


def _clamp(ctx: TraceContext, call: OpCall) -> None:
    """``clamp(x, min, max)``: bounds that are tensors meet ``x`` position by position, as
    in ``torch.maximum``; number bounds leave it a unary op."""
    if len(call_tensors(call.args, call.kwargs)) > 1:
        _binary(ctx, call)
    else:
        _unary(ctx, call)


register_op(("clamp", "clip", "clamp_min", "clamp_max"), _clamp)
register_op(("setitem",), _setitem)
register_op(("index_add", "index_copy"), _index_add)
register_op(("index_put",), _index_put)


def _outer(ctx: TraceContext, call: OpCall) -> None:
    """``torch.outer(a, b)`` is ``a[:, None] * b[None, :]`` (a rotary table: positions times
    the ``inv_freq`` buffer, whose entries go with the head dims they rotate)."""
    a, b = call_tensors(call.args, call.kwargs)[:2]
    out = tensors_in(call.out)[0]
    rows, cols = ctx.labels(a).reshape(-1, 1), ctx.labels(b).reshape(1, -1)
    ctx.set_labels(out, combine(ctx, [rows, cols], out.shape))


register_op(("outer", "ger"), _outer)
