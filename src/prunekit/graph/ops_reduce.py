"""Reductions (mean/sum/max over dims) and spatial ops (pooling, interpolation, padding).

A reduction over dims R keeps the label of the kept positions when channels do not vary
along R (spatial mean keeps channel c); when channels vary only along R, a block id (a mean
over channels no longer depends on which channels exist, but no pruning changes its shape,
so what meets it position by position keeps its width: :func:`labels.fixed_shape`); when
channels vary both along R and elsewhere, the positions reduced together are joined
(conservative). Spatial ops act on the trailing dims, which must not carry channels: the
channels of the leading dims pass through, and everything pooled into one output position
is joined; padding only touches the dims it pads by a non-zero amount.

Losses computed in forward (``mse_loss``, ``cross_entropy``, ...) couple their inputs as a
pointwise op does, then reduce over everything; determinants keep the channels of their
matrices whole.

``cosine_similarity``/``pairwise_distance`` couple their two inputs as a pointwise op does,
then reduce over one dim by the rule above; ``cdist`` pairs rows over the last dim as a
matrix product does (:mod:`prunekit.graph.ops_matmul`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prunekit.graph.labels import NEUTRAL, fixed_shape, rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.sizes import SizeInt
from prunekit.graph.trace import TraceContext

REDUCE = (
    "mean", "sum", "nansum", "nanmean", "amax", "amin", "max", "min", "std", "var", "prod",
    "norm", "logsumexp", "argmax", "argmin", "all", "any", "median", "std_mean", "var_mean",
    "count_nonzero", "aminmax", "linalg_vector_norm", "vector_norm", "linalg_norm",
    "linalg_matrix_norm", "matrix_norm", "nanmedian", "mode",
    "_is_all_true", "_is_any_true",  # (torch.distributions' argument checks)
)
_ARG_REDUCE = ("argmax", "argmin")
_WITH_INDICES = ("max", "min", "median", "nanmedian", "mode")  # (values, indices) given a dim
# norms that take (input, ord, dim): their dims come third; matrix norms default to the last two
_ORD_FIRST = ("norm", "linalg_vector_norm", "vector_norm", "linalg_norm", "linalg_matrix_norm",
              "matrix_norm")
_MATRIX_NORMS = ("linalg_matrix_norm", "matrix_norm")
SPATIAL = {
    "max_pool1d": 1, "max_pool2d": 2, "max_pool3d": 3, "avg_pool1d": 1, "avg_pool2d": 2,
    "avg_pool3d": 3, "adaptive_avg_pool1d": 1, "adaptive_avg_pool2d": 2,
    "adaptive_avg_pool3d": 3, "adaptive_max_pool1d": 1, "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3, "lp_pool1d": 1, "lp_pool2d": 2, "lp_pool3d": 3,
    "max_pool1d_with_indices": 1, "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3, "adaptive_max_pool1d_with_indices": 1,
    "adaptive_max_pool2d_with_indices": 2, "adaptive_max_pool3d_with_indices": 3,
    "fractional_max_pool2d": 2, "fractional_max_pool3d": 3,
    "max_unpool1d": 1, "max_unpool2d": 2, "max_unpool3d": 3,
    "interpolate": -1, "upsample": -1, "upsample_nearest": -1, "upsample_bilinear": -1,
    "grid_sample": -1,
}


def _dims(call: OpCall, ndim: int) -> tuple[int, ...] | None:
    position = 2 if call.name in _ORD_FIRST else 1
    dim: Any = call.kwargs.get("dim", call.kwargs.get("axis"))
    if dim is None and len(call.args) > position and not isinstance(call.args[position], Tensor):
        candidate = call.args[position]
        if isinstance(candidate, (int, tuple, list)) and not isinstance(candidate, bool):
            dim = candidate
    if dim is None and call.name in _MATRIX_NORMS:
        dim = (-2, -1)
    if dim is None:
        return None
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted(d % ndim for d in dims)) if ndim else ()


def _reduce(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1])[0]
    if len(call.args) > 1 and isinstance(call.args[1], Tensor):  # torch.max(a, b): pointwise
        from prunekit.graph.ops_pointwise import combine

        out = tensors_in(call.out)[0]
        ctx.set_labels(out, combine(ctx, [ctx.labels(t) for t in tensors_in(call.args)],
                                    out.shape))
        return
    ndim = source.dim()
    dims = _dims(call, ndim)
    reduced = tuple(range(ndim)) if dims is None else dims
    vector = ctx.vector_of(source)
    if vector is not None and _reduce_vector(ctx, call, source, vector, reduced):
        return
    if vector is not None and vector[0] in reduced and varies(ctx.space.find(vector[1]), 0):
        # (RMSNorm's x.pow(2).mean(-1)) labels that vary along the reduced channel dim
        # only: the branch below that needs no label tensor
        canon, bearing, shape = vector[1], {vector[0]}, source.shape
    else:
        canon = ctx.space.find(ctx.labels(source))
        bearing, shape = varying(canon), canon.shape
    rep = _collapse(ctx, canon, bearing, shape, reduced, call.display)
    outputs = tensors_in(call.out)
    for out in outputs:
        ctx.set_labels(out, _fit(rep, reduced, tuple(out.shape)))
    if not bearing.isdisjoint(reduced):
        _positions_of_channels(ctx, call, canon, outputs)


def _positions_of_channels(ctx: TraceContext, call: OpCall, canon: Tensor,
                           outputs: list[Tensor]) -> None:
    """A reduction over a channel dim whose result names positions: ``argmax``'s, and the
    indices ``max(x, dim)`` returns beside its values. Pruning would renumber them, so the
    channels are kept whole, for ``max`` only once something reads the indices (CBAM's
    ``torch.max(x, 1)[0]`` keeps the values alone)."""
    why = f"{call.display} gives positions along a channel dimension, which pruning renumbers"
    if call.name in _ARG_REDUCE:
        ctx.block(canon, why)
    elif call.name in _WITH_INDICES and len(outputs) == 2 and not \
            outputs[1].is_floating_point():
        ctx.watch(outputs[1], lambda: ctx.block(canon, why))


def _collapse(ctx: TraceContext, canon: Tensor, bearing: set[int], shape: torch.Size,
              reduced: tuple[int, ...], display: str) -> Tensor:
    """The labels of a reduction of ``canon`` (labels of ``shape`` that vary along the dims
    ``bearing``) over ``reduced``, those dims kept with size 1 (see the module docstring)."""
    kept = [d for d in range(len(shape)) if d not in reduced]
    if bearing.isdisjoint(reduced):
        return canon.amax(dim=reduced, keepdim=True) if reduced else canon
    if bearing.isdisjoint(kept):  # (``x.view(b, g, c // g, h, w).sum(1) * gate``: c // g stays)
        return fixed_shape(ctx.space, [1 if d in reduced else n for d, n in enumerate(shape)],
                           f"{display} reduces over all its channels, so its result has a "
                           f"shape no pruning changes")
    return rep_along(ctx.space, canon, reduced)


def _reduce_vector(ctx: TraceContext, call: OpCall, source: Tensor,
                   vector: tuple[int, Tensor], reduced: tuple[int, ...]) -> bool:
    """``_reduce`` for labels in vector form whose channel dim is kept (a spatial mean):
    nothing varies along the reduced dims, so every output keeps the vector's roots, on
    the channel dim as renumbered without the reduced dims (``vector``: ``ctx.vector_of``
    of ``source``). False for any other call."""
    if vector[0] in reduced:
        return False
    dim, shape = vector[0], tuple(source.shape)
    keepdim = tuple(1 if d in reduced else n for d, n in enumerate(shape))
    squeezed = tuple(n for d, n in enumerate(shape) if d not in reduced)
    plan = []
    for out in tensors_in(call.out):
        if tuple(out.shape) == keepdim:
            plan.append((out, dim))
        elif tuple(out.shape) == squeezed and squeezed:
            plan.append((out, dim - sum(1 for d in reduced if d < dim)))
        else:
            return False
    roots = ctx.space.find(vector[1])
    for out, out_dim in plan:
        ctx.set_vector(out, roots, out_dim)
    return True


def _fit(rep: Tensor, reduced: tuple[int, ...], shape: tuple[int, ...]) -> Tensor:
    """``rep`` (reduced dims kept as size 1) shaped like an output with or without keepdim."""
    if rep.dim() == len(shape):
        return rep.expand(shape)
    squeezed = rep
    for d in sorted(reduced, reverse=True):
        squeezed = squeezed.squeeze(d)
    if squeezed.dim() != len(shape):
        if all(s == 1 for s in shape) or not shape:
            return torch.full(shape, NEUTRAL, dtype=torch.long)
        raise OpNotMappable(f"cannot fit reduced labels to output shape {shape}")
    return squeezed.expand(shape)


def _spatial(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1])[0]
    width = SPATIAL.get(call.name, -1)
    if width < 0:
        width = source.dim() - 2
    if width <= 0 or width >= source.dim() + 1:
        raise OpNotMappable(f"unexpected input rank {source.dim()}")
    trailing = tuple(range(source.dim() - width, source.dim()))
    lead = tuple(source.shape[: source.dim() - width])
    vector = ctx.vector_of(source)
    outputs = tensors_in(call.out)
    if vector is not None and vector[0] < len(lead) and all(
            out.dim() == source.dim() and tuple(out.shape[: len(lead)]) == lead
            for out in outputs):
        # channels on a leading dim only: nothing varies along the trailing dims, so there
        # is nothing to join or block, and every output keeps the vector's roots
        roots = ctx.space.find(vector[1])
        for out in outputs:
            ctx.set_vector(out, roots, vector[0])
        return
    canon = ctx.space.find(ctx.labels(source))
    rep = rep_along(ctx.space, canon, trailing)
    for out in outputs:
        if tuple(out.shape[: len(lead)]) != lead:
            raise OpNotMappable("it changes the leading (channel) dimensions")
        ctx.set_labels(out, ctx.space.find(rep).expand(tuple(out.shape)))


register_op(REDUCE, _reduce)


def _pad(ctx: TraceContext, call: OpCall) -> None:
    """``F.pad``: a dim padded by a non-zero amount must not carry channels (kept whole where
    it does); every other dim passes its labels, a channel dim listed with a zero pad
    included (Swin's ``F.pad(x, (0, 0, 0, pad_w, 0, pad_h))`` on ``(b, h, w, c)``).

    Zero channels added on either side of the channel dim by amounts written in the code
    (the option-A shortcut of CIFAR ResNets: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p,
    p))``) keep their count whatever is pruned, so they are fixed channels of the result and
    the channels between them follow the input's: the wider residual stage keeps its ``2p``
    zero channels and loses those of the narrower one. Amounts read from a shape, negative
    ones (a crop) and the other modes (which copy edge channels) keep the channels whole."""
    source = tensors_in(call.args[:1])[0]
    written = call.args[1] if len(call.args) > 1 else call.kwargs["pad"]
    pad = [int(p) for p in written]
    ndim = source.dim()
    if len(pad) % 2 or len(pad) // 2 > ndim:
        raise OpNotMappable(f"unexpected pad {pad} for input rank {ndim}")
    # ``pad`` lists (before, after) pairs from the last dim backwards
    padded = tuple(sorted(ndim - 1 - i // 2 for i in range(0, len(pad), 2)
                          if pad[i] or pad[i + 1]))
    outputs = tensors_in(call.out)
    for out in outputs:
        if out.dim() != ndim or any(out.shape[d] != source.shape[d]
                                    for d in range(ndim) if d not in padded):
            raise OpNotMappable("it changes the size of a dimension it does not pad")
    vector = ctx.vector_of(source)
    if vector is not None and vector[0] not in padded:
        roots = ctx.space.find(vector[1])
        for out in outputs:
            ctx.set_vector(out, roots, vector[0])
        return
    if vector is not None and _zero_channels(call, written, ndim, vector[0]):
        at = 2 * (ndim - 1 - vector[0])  # (before, after) of the channel dim in ``pad``
        reason = f"{call.display} adds zero channels by a count written in the code"
        added = [ctx.space.new_ids(n) for n in (pad[at], pad[at + 1])]
        for ids in added:
            ctx.space.block(ids, reason)
        line = torch.cat([added[0], ctx.space.find(vector[1]), added[1]])
        for out in outputs:
            ctx.set_vector(out, line, vector[0])
        return
    canon = ctx.space.find(ctx.labels(source))
    if any(varies(canon, d) for d in padded):
        ctx.block(canon, f"{call.display} pads a channel dimension by a fixed amount")
    rep = rep_along(ctx.space, canon, padded)
    for out in outputs:
        ctx.set_labels(out, ctx.space.find(rep).expand(tuple(out.shape)))


def _zero_channels(call: OpCall, written: Any, ndim: int, dim: int) -> bool:
    """Whether ``F.pad`` adds zero channels along ``dim`` by plain, non-negative amounts
    (and pads no other dim): constant mode, no amount read from a shape."""
    mode = call.arg(2, "mode", "constant")
    at = 2 * (ndim - 1 - dim)
    amounts = list(written)
    others = [p for i, p in enumerate(amounts) if i not in (at, at + 1)]
    return mode == "constant" and at + 1 < len(amounts) and not any(
        isinstance(p, SizeInt) or p < 0 for p in amounts) and not any(others)


_UNPOOL = ("max_unpool1d", "max_unpool2d", "max_unpool3d")
register_op(tuple(name for name in SPATIAL if name not in _UNPOOL), _spatial)


def _unpool(ctx: TraceContext, call: OpCall) -> None:
    """``max_unpool2d(x, indices, ...)`` (SegNet's decoder): channel ``c`` of ``x`` is placed
    at the positions channel ``c`` of ``indices`` names (the encoder's pooling of its own
    channels), so the two are joined channel by channel; then a spatial op."""
    from prunekit.graph.ops_pointwise import combine

    x, indices = (tensors_in(call.args[:2]) + [call.kwargs[k] for k in ("input", "indices")
                                                if k in call.kwargs])[:2]
    if x.shape != indices.shape:
        raise OpNotMappable(f"indices of shape {tuple(indices.shape)} for input "
                            f"{tuple(x.shape)}")
    combine(ctx, [ctx.labels(x), ctx.labels(indices)], x.shape)
    _spatial(ctx, call)


register_op(_UNPOOL, _unpool)
register_op(("pad",), _pad)


def _reorder(ctx: TraceContext, call: OpCall) -> None:
    """``sort``/``topk``/``argsort`` pick positions along a dim by value: fine along a dim
    without channels (the others pass through); along a channel dim they are kept whole."""
    source = tensors_in(call.args[:1])[0]
    canon = ctx.space.find(ctx.labels(source))
    dim: Any = call.kwargs.get("dim", -1)
    if call.name in {"sort", "argsort"} and len(call.args) > 1 and isinstance(call.args[1], int):
        dim = call.args[1]
    if call.name == "topk" and len(call.args) > 2 and isinstance(call.args[2], int):
        dim = call.args[2]
    if call.name == "kthvalue" and len(call.args) > 2 and isinstance(call.args[2], int):
        dim = call.args[2]
    dim = dim % max(source.dim(), 1)
    if varies(canon, dim):
        ctx.block(canon, f"{call.display} reorders a channel dimension by value")
    rep = canon.amax(dim=dim, keepdim=True) if source.dim() else canon
    for out in tensors_in(call.out):
        shape = tuple(out.shape)
        ctx.set_labels(out, rep.expand(shape) if rep.dim() == len(shape) else
                       torch.full(shape, NEUTRAL, dtype=torch.long))


register_op(("sort", "argsort", "topk", "kthvalue", "msort"), _reorder)

# ops whose result is read from values: positions (nonzero), distinct values, counts, the
# boxes NMS keeps; their sizes are recorded and replayed by the forward check (replay.py)
BY_VALUE = ("nonzero", "argwhere", "unique", "unique_consecutive", "bincount", "nms",
            "nms.default")


def by_value(ctx: TraceContext, call: OpCall) -> None:
    """Positions or values picked by value carry no channels, but where an input varies
    along a channel dim, they name or mix those channels (``x.abs().sum((0, 2, 3))
    .nonzero()`` gives channel positions that pruning would renumber): such channels are
    kept whole. Also one-argument ``torch.where``."""
    for tensor in tensors_in((call.args, call.kwargs)):
        canon = ctx.space.find(ctx.labels(tensor))
        if varying(canon):
            ctx.block(canon, f"{call.display} picks positions or values of channels by "
                             f"their values, which pruning would renumber")
    for out in tensors_in(call.out):
        ctx.set_labels(out, torch.full((), NEUTRAL, dtype=torch.long).expand(out.shape))


register_op(BY_VALUE, by_value)


def _paired_reduce(ctx: TraceContext, call: OpCall) -> None:
    """``cosine_similarity(x1, x2, dim)`` and ``pairwise_distance(x1, x2)`` (over the last
    dim): ``x1`` and ``x2`` meet position by position, with broadcasting, as in a binary
    pointwise op (so their channels along ``dim`` are joined index by index), and the
    result is a reduction of that over ``dim``, labelled as ``sum(dim)`` would be."""
    from prunekit.graph.ops_pointwise import combine

    x1, x2 = (tensors_in(call.args[:2]) + [call.kwargs[k] for k in ("x1", "x2")
                                             if k in call.kwargs])[:2]
    shape = torch.broadcast_shapes(x1.shape, x2.shape)
    ndim = len(shape)
    if call.name == "cosine_similarity":
        dim: Any = call.arg(2, "dim", 1)
    else:
        dim = -1
    if not isinstance(dim, int) or not -ndim <= dim < max(ndim, 1):
        raise OpNotMappable(f"dim={dim!r} is not a dim of the {ndim}-dim broadcast inputs")
    reduced = (dim % ndim,) if ndim else ()
    canon = ctx.space.find(combine(ctx, [ctx.labels(x1), ctx.labels(x2)], shape))
    rep = _collapse(ctx, canon, varying(canon), canon.shape, reduced, call.display)
    for out in tensors_in(call.out):
        ctx.set_labels(out, _fit(rep, reduced, tuple(out.shape)))


def _cdist(ctx: TraceContext, call: OpCall) -> None:
    """``cdist(x1 [..., P, M], x2 [..., R, M])`` → ``[..., P, R]`` pairs every row of x1 with
    every row of x2 over M, as the product ``x1 @ x2ᵀ`` does, and is labelled like it: M's
    channels joined index by index (:func:`ops_matmul.contract`); a 2-D parameter ``x2``
    (prototypes ``[K, M]``, as ``F.linear``'s weight) has its M axis cut with x1's channels
    and makes the result's channels along K."""
    from prunekit.graph.ops_matmul import contract, param_weight, weight_axes

    x1, x2 = (tensors_in(call.args[:2]) + [call.kwargs[k] for k in ("x1", "x2")
                                             if k in call.kwargs])[:2]
    out = tensors_in(call.out)[0]
    found = param_weight(ctx, x2, (1, 0)) if x2.dim() == 2 else None
    if found is not None:
        record, in_axis, out_axis = found
        read = ctx.consume(x1, -1)
        ctx.set_vector(out, weight_axes(ctx, record, in_axis, out_axis, read), -1)
        return
    ctx.set_labels(out, contract(ctx, ctx.labels(x1), ctx.labels(x2).transpose(-1, -2),
                                 tuple(out.shape)))


# losses computed in forward (a VQ-VAE's commitment loss, an auxiliary loss returned with
# the output): elementwise on their broadcast inputs, then reduced unless reduction="none"
_ELEMENTWISE_LOSSES = ("mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss", "kl_div",
                       "binary_cross_entropy", "binary_cross_entropy_with_logits",
                       "soft_margin_loss", "poisson_nll_loss", "gaussian_nll_loss")
# embeddings compared over their last dim: (name, the embedding arguments by name)
_PAIRED_LOSSES = {"triplet_margin_loss": ("anchor", "positive", "negative"),
                  "cosine_embedding_loss": ("input1", "input2")}
_CLASS_LOSSES = ("cross_entropy", "nll_loss")  # input [N, C, ...], target class indices


def _loss(ctx: TraceContext, call: OpCall) -> None:
    """A loss: its tensor arguments meet position by position, as in a pointwise op (a
    cross-entropy's class dim, which it normalises over, keeps its channels whole; its
    integer target meets nothing); the result is that, or its full reduction (a shape no
    pruning changes, as a mean over channels: see the module docstring)."""
    from prunekit.graph.ops_pointwise import combine

    operands = [t for t in tensors_in((*call.args, *call.kwargs.values()))
                if t.is_floating_point()]
    if not operands:
        raise OpNotMappable("no floating-point input")
    if call.name in _CLASS_LOSSES:
        scores = operands[0]
        canon = ctx.space.find(ctx.labels(scores))
        if canon.dim() > 1 and varies(canon, 1):
            ctx.block(canon, f"{call.display} normalises over its class dim")
        for out in tensors_in(call.out):
            ctx.set_labels(out, fixed_shape(ctx.space, out.shape,
                                            f"{call.display} reduces its class dim"))
        return
    shape = torch.broadcast_shapes(*(t.shape for t in operands))
    canon = ctx.space.find(combine(ctx, [ctx.labels(t) for t in operands], shape))
    for out in tensors_in(call.out):
        if tuple(out.shape) == tuple(shape):
            ctx.set_labels(out, canon)
            continue
        reduced = tuple(range(len(shape)))
        rep = _collapse(ctx, canon, varying(canon), canon.shape, reduced, call.display)
        ctx.set_labels(out, _fit(rep, reduced, tuple(out.shape)))


def _paired_loss(ctx: TraceContext, call: OpCall) -> None:
    """``triplet_margin_loss(anchor, positive, negative)`` and ``cosine_embedding_loss(x1,
    x2, y)``: the embeddings meet feature by feature (their channels joined index by index,
    as ``pairwise_distance`` joins them) and are compared over the last dim; the result is
    one number per sample (``reduction="none"``) or the mean or sum of those."""
    from prunekit.graph.ops_pointwise import combine

    names = _PAIRED_LOSSES[call.name]
    embeddings = [call.arg(i, name) for i, name in enumerate(names)]
    if not all(isinstance(t, Tensor) and t.is_floating_point() and t.dim() >= 1
               for t in embeddings):
        raise OpNotMappable(f"expected floating-point tensors {', '.join(names)}")
    shape = torch.broadcast_shapes(*(t.shape for t in embeddings))
    canon = ctx.space.find(combine(ctx, [ctx.labels(t) for t in embeddings], shape))
    for out in tensors_in(call.out):
        reduced = (len(shape) - 1,) if out.dim() == len(shape) - 1 else tuple(range(len(shape)))
        rep = _collapse(ctx, canon, varying(canon), canon.shape, reduced, call.display)
        ctx.set_labels(out, _fit(rep, reduced, tuple(out.shape)))


def _determinant(ctx: TraceContext, call: OpCall) -> None:
    """``det``/``slogdet``/``logdet`` of square matrices (a Glow invertible 1×1 conv's
    log-determinant): the determinant of a matrix with rows or columns removed is another
    number, so channels along the last two dims are kept whole; the results have a shape no
    pruning changes."""
    matrix = call.arg(0, "A") if call.args or "A" in call.kwargs else call.arg(0, "input")
    if not isinstance(matrix, Tensor) or matrix.dim() < 2:
        raise OpNotMappable("expected a matrix")
    canon = ctx.space.find(ctx.labels(matrix))
    if varies(canon, canon.dim() - 1) or varies(canon, canon.dim() - 2):
        ctx.block(canon, f"{call.display} takes the determinant of a matrix of channels")
    batch = tuple(range(canon.dim() - 2))
    rep = canon.amax(dim=(-2, -1)) if batch else None
    for out in tensors_in(call.out):
        if rep is not None and tuple(out.shape) == tuple(rep.shape):
            ctx.set_labels(out, rep)
        else:
            ctx.set_labels(out, fixed_shape(ctx.space, out.shape,
                                            f"{call.display} of a matrix"))


register_op(_ELEMENTWISE_LOSSES + _CLASS_LOSSES, _loss)
register_op(tuple(_PAIRED_LOSSES), _paired_loss)
register_op(("det", "slogdet", "logdet", "linalg_det", "linalg_slogdet"), _determinant)
register_op(("cosine_similarity", "pairwise_distance"), _paired_reduce)
register_op(("cdist",), _cdist)
