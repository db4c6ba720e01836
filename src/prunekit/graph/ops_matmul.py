"""Contractions between activations: matmul/bmm/@ and scaled_dot_product_attention
(q·kᵀ then ·v).

For ``a [..., n, k] @ b [..., k, m]``: if channels vary along k on either side, both sides
must drop the same k indices, so their k labels are joined (a side whose k dimension does
not carry channels cannot shrink, so the other side's k channels are kept whole). The
result carries b's channels along m, else a's along n, else none, in a shape no pruning
changes (:func:`labels.fixed_shape`). A side that carries channels along both its dims has
its rows' k-th channels joined where the other side's k carries channels too (field vectors
stacked, DLRM's ``T @ Tᵀ``: channel k goes from every row), else its channels joined along
k (gates ``[B, 1, E]`` times experts stacked ``[B, E, H]``: a weighted sum of the rows, so
channel j of every row goes together); a side that carries channels along batch dims and a
matrix dim is kept whole.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.graph.callers import user_line
from prunekit.graph.labels import LabelSpace, consume, fixed_shape, rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_shape import first_line
from prunekit.graph.trace import ParamRecord, TraceContext


def contract(ctx: TraceContext, a: Tensor, b: Tensor, out_shape: tuple[int, ...]) -> Tensor:
    """Couple the labels of ``a @ b`` and return the labels of the product."""
    if a.dim() < 2 or b.dim() < 2:
        raise OpNotMappable("1-D operands are not supported")
    space = ctx.space
    a, b = space.find(a), space.find(b)
    reason = "a matrix product mixes its channels"
    found = []
    for lab, k_dim, free_dim in ((a, -1, -2), (b, -2, -1)):
        dims, ndim = varying(lab), lab.dim()  # (one compaction, not one per varies call)
        found.append((ndim + k_dim in dims, ndim + free_dim in dims,
                      any(d < ndim - 2 for d in dims)))
    sides, labs = [], []
    for i, (lab, k_dim, free_dim, (on_k, on_free, on_batch)) in enumerate((
            (a, -1, -2, found[0]), (b, -2, -1, found[1]))):
        if on_k and on_free and not on_batch:
            other, (other_k, other_free, _) = (b if i == 0 else a), found[1 - i]
            if other_k and joins_rows(space, lab.shape[k_dim], lab.shape[free_dim],
                                      other_free, [other]):
                lab = rows_joined(ctx, lab, k_dim)
                on_free = False
            else:  # a weighted sum of rows (gates @ stacked experts): channel j of every
                # row goes together, as in a sum over the rows, and the weights stay
                lab = rep_along(space, lab, (lab.dim() + k_dim,)).expand(lab.shape)
                on_k = False
                if other_k:
                    space.block(other, "weights a sum of rows whose channels are pruned")
        elif on_batch and (on_k or on_free):
            space.block(lab, reason)
            on_k = on_free = on_batch = False
        sides.append((on_k, on_free, on_batch))
        labs.append(lab)
    (a_k, a_n, a_batch), (b_k, b_m, b_batch) = sides
    a, b = labs
    if a_batch or b_batch:  # per-head tensors: heads of both sides go together
        return _batched(ctx, a, b, (a_batch, b_batch), out_shape)
    if a_k or b_k:
        ka = a.amax(dim=-2)  # one label per k (constant along n)
        kb = b.amax(dim=-1)
        if a_k and b_k:
            space.union(*torch.broadcast_tensors(ka, kb))
        elif a_k:
            space.block(a, "contracted with a tensor whose matching dimension is fixed")
        else:
            space.block(b, "contracted with a tensor whose matching dimension is fixed")
    if b_m:
        if a_n:
            space.block(a, reason)
        row = b.amax(dim=-2, keepdim=True)
        return row.expand(out_shape) if row.dim() == len(out_shape) else _lift(row, out_shape)
    if a_n:
        col = a.amax(dim=-1, keepdim=True)
        return col.expand(out_shape) if col.dim() == len(out_shape) else _lift(col, out_shape)
    return fixed_shape(space, out_shape, "a matrix product contracts all its channels, so "
                                         "its result has a shape no pruning changes")


def joins_rows(space: LabelSpace, k_width: int, row_width: int, other_is_stack: bool,
               others: list[Tensor]) -> bool:
    """For an operand whose channels vary along both the contracted dim k and its rows, met
    along k by ``others`` that carry channels there: whether its rows' k-th channels are
    joined (channel k goes from every row: DLRM's ``T @ Tᵀ``, the other side a stack too)
    rather than its channels joined along k (a weighted sum of rows: gates times stacked
    experts, the weights then kept whole). Against a weight per row, the join that leaves
    more units, unless the weights are all kept whole already."""
    blocked = space.blocked_roots()
    all_blocked = bool(blocked) and all(int(r) in blocked for other in others
                                        for r in space.roots(other).tolist())
    return other_is_stack or (k_width >= row_width and not all_blocked)


def rows_joined(ctx: TraceContext, lab: Tensor, k_dim: int) -> Tensor:
    """The labels of an operand whose channels along the contracted dim differ from row to
    row (DLRM's interaction ``T @ Tᵀ``, T the field vectors stacked): channel k goes only
    if it goes from every row, so the rows' k-th channels are joined, and the rows then
    carry no channels of their own."""
    rows = lab.movedim(k_dim, -1).reshape(-1, lab.shape[k_dim])
    ctx.space.union(rows[:1].expand_as(rows), rows)
    return ctx.space.find(lab)


def _batched(ctx: TraceContext, a: Tensor, b: Tensor, per_head: tuple[bool, bool],
             out_shape: tuple[int, ...]) -> Tensor:
    """Labels that vary only along batch dims (heads): join a's and b's per batch index."""
    space = ctx.space
    la = a.amax(dim=(-2, -1), keepdim=True)
    lb = b.amax(dim=(-2, -1), keepdim=True)
    if not all(per_head):  # one side is shared by all heads
        heads, shared = (la, b) if per_head[0] else (lb, a)
        reason = "a per-head tensor is multiplied with one shared by all heads"
        space.block(shared, reason)  # its channels would have to shrink in every head
        if _broadcast_over(heads, shared):  # multi-query attention's one key/value head:
            return _lift(heads, out_shape)  # the heads follow any count
        space.block(heads, reason)
        return fixed_shape(space, out_shape, reason)
    la_, lb_ = torch.broadcast_tensors(la, lb)
    space.union(la_, lb_)
    return _lift(torch.maximum(la_, lb_), out_shape)


def _broadcast_over(heads: Tensor, shared: Tensor) -> bool:
    """Whether ``shared`` has size 1 (or no dim) at every batch dim along which the per-head
    labels ``heads`` vary (dims aligned from the right)."""
    for d in varying(heads):
        at = d - heads.dim() + shared.dim()
        if at >= 0 and shared.shape[at] != 1:
            return False
    return True


def _lift(labels: Tensor, shape: tuple[int, ...]) -> Tensor:
    while labels.dim() < len(shape):
        labels = labels.unsqueeze(0)
    return labels.expand(shape)


def matmul(ctx: TraceContext, call: OpCall) -> None:
    """Label a matrix product (``matmul``, ``bmm``, ``mm``; ``addmm``-style ops call it for
    their product): a hand-written layer's weight, experts' stacked weights, else the
    contraction of the two operands."""
    a, b = tensors_in(call.args)[:2]
    out = tensors_in(call.out)[0]
    if _layer_weight(ctx, a, b, out) or _left_layer_weight(ctx, a, b, out) or \
            _picked_experts(ctx, a, b, out) or _every_expert(ctx, a, b, out):
        return
    if a.dim() == 1 or b.dim() == 1:  # a vector: a matrix of one row (a) or column (b)
        la = ctx.labels(a).unsqueeze(0) if a.dim() == 1 else ctx.labels(a)
        lb = ctx.labels(b).unsqueeze(-1) if b.dim() == 1 else ctx.labels(b)
        batch = torch.broadcast_shapes(la.shape[:-2], lb.shape[:-2])
        labels = contract(ctx, la, lb, (*batch, la.shape[-2], lb.shape[-1]))
        labels = labels.squeeze(-1) if b.dim() == 1 else labels
        ctx.set_labels(out, labels.squeeze(-2) if a.dim() == 1 else labels)
        return
    ctx.set_labels(out, contract(ctx, ctx.labels(a), ctx.labels(b), tuple(out.shape)))


def param_weight(ctx: TraceContext, b: Tensor, axes: tuple[int, int]
                 ) -> tuple[ParamRecord, int, int] | None:
    """(param node, input axis, output axis) where the operand ``b`` of a product is a
    parameter ``W`` read as a layer weight whose (input, output) axes are ``axes`` of ``b``:
    ``W`` itself, or ``W`` with its last two dims swapped (``W.t()``, ``W.mT``: the axes of
    ``W`` swap too). None where ``b`` is computed."""
    weight = ctx.param_views.weight(b, "t")
    in_axis, out_axis = axes
    if weight is not None:
        in_axis, out_axis = out_axis, in_axis
    elif ctx.is_param(b):
        weight = b
    else:
        return None
    record = ctx.layer_weight(weight)
    return None if record is None else (record, in_axis, out_axis)


def _layer_weight(ctx: TraceContext, x: Tensor, b: Tensor, out: Tensor) -> bool:
    """``x @ W.t()`` (``W [out, in]``, as ``F.linear``) or ``x @ W`` (``W [in, out]``) with a
    2-D parameter ``W``: a hand-written linear layer, whose weight axes are cut like a Linear
    layer's (input axis with x's channels, output axis making fresh channels). False
    (nothing done) for any other product."""
    if x.dim() < 1 or b.dim() != 2 or out.dim() < 1:
        return False
    found = param_weight(ctx, b, (0, 1))
    if found is None:
        return False
    record, in_axis, out_axis = found
    read = consume(ctx.space, ctx.labels(x), -1)
    ctx.set_vector(out, weight_axes(ctx, record, in_axis, out_axis, read), -1)
    return True


def _left_layer_weight(ctx: TraceContext, a: Tensor, x: Tensor, out: Tensor) -> bool:
    """``W @ x`` (``W [out, in]``, ``x [..., in, m]``) with a 2-D parameter ``W`` and an ``x``
    whose channels, if any, run along its dim -2 (Mamba's ``self.dt_proj.weight @
    time_step.transpose(1, 2)``): a linear layer over dim -2, cut like one. Where ``x``
    carries channels along ``m`` (``W`` mixing tokens, MLP-Mixer style) it is a plain
    contraction: False (nothing done), as for any other product."""
    if a.dim() != 2 or x.dim() < 2 or out.dim() < 2:
        return False
    found = param_weight(ctx, a, (1, 0))
    if found is None:
        return False
    labels = ctx.space.find(ctx.labels(x))
    if varying(labels) - {labels.dim() - 2}:
        return False
    record, in_axis, out_axis = found
    read = consume(ctx.space, labels, -2)
    ctx.set_vector(out, weight_axes(ctx, record, in_axis, out_axis, read), out.dim() - 2)
    return True


def _picked_experts(ctx: TraceContext, a: Tensor, b: Tensor, out: Tensor) -> bool:
    """``x @ W[e]``, ``x @ W[ids]`` or ``W[ids] @ x`` with ``W [E, R, C]`` a stack of expert
    weights (Transformers' eager and batched experts), or ``W[e].t()`` on either side (DCN-v2's
    cross layers ``x @ W[i].t()``): the picked weights' rows and columns
    are W's axes 1 and 2, one read from x's channels and one making the product's, cut in
    every expert alike. False (nothing done) for any other product."""
    stack = ctx.param_views.weight(b, "pick")
    if stack is not None:  # x @ W: x's last dim reads rows; columns are the product's last
        x, x_dim, in_axis, out_axis = a, -1, 1, 2
    elif (stack := ctx.param_views.weight(b, "pick_t")) is not None:  # x @ W[e].t()
        x, x_dim, in_axis, out_axis = a, -1, 2, 1
    elif (stack := ctx.param_views.weight(a, "pick_t")) is not None:  # W[e].t() @ x
        x, x_dim, in_axis, out_axis = b, -2, 1, 2
    else:  # W @ x: x's dim -2 reads columns; rows are the product's dim -2
        stack = ctx.param_views.weight(a, "pick")
        x, x_dim, in_axis, out_axis = b, -2, 2, 1
    if stack is None or x.dim() < 2 or out.dim() < 2 or \
            out.shape[x_dim] != stack.shape[out_axis]:
        return False
    record = ctx.layer_weight(stack)
    if record is None:
        return False
    made = weight_axes(ctx, record, in_axis, out_axis, ctx.consume(x, x_dim), experts=True)
    ctx.set_vector(out, made, x_dim)
    return True


def _every_expert(ctx: TraceContext, x: Tensor, w: Tensor, out: Tensor) -> bool:
    """``bmm(x, W)`` with ``W [E, in, out]`` (or ``[E, out, in]`` read through
    ``transpose(-2, -1)``) a stack of expert weights used whole and ``x [E, tokens, in]`` one
    batch of tokens per expert (Llama 4's experts): W's two axes are cut in every expert
    alike, as for picked experts (:func:`_picked_experts`). False (nothing done) where ``W``
    is no parameter or x carries channels along its experts."""
    if w.dim() != 3 or x.dim() != 3 or out.dim() != 3 or x.shape[0] != w.shape[0] or \
            out.shape[0] != w.shape[0]:
        return False
    found = param_weight(ctx, w, (1, 2))
    if found is None or 0 in varying(ctx.space.find(ctx.labels(x))):
        return False
    record, in_axis, out_axis = found
    made = weight_axes(ctx, record, in_axis, out_axis, ctx.consume(x, -1), experts=True)
    ctx.set_vector(out, made, -1)
    return True


def weight_axes(ctx: TraceContext, record: ParamRecord, in_axis: int, out_axis: int,
                read: Tensor, *, experts: bool = False) -> Tensor:
    """Label a layer weight's two axes: ``in_axis`` joined with ``read`` (the channel of each
    index the input holds there), fresh ids for ``out_axis``, returned as roots (the
    channels the layer makes). A stack of expert weights (``experts``) keeps 16-byte
    strides on both (:func:`align_experts`)."""
    in_ids = ctx.weight_axis(record, in_axis, labels=read)
    ids = ctx.weight_axis(record, out_axis, count=int(record.tensor.shape[out_axis]))
    if experts:
        align_experts(ctx, record.tensor, in_ids, ids)
    return ctx.space.find(ids)


def align_experts(ctx: TraceContext, stack: Tensor, *labels: Tensor) -> None:
    """The cut axes of a stack of expert weights keep 16-byte strides, which grouped-product
    kernels (Transformers' default experts) want, whichever way the trace ran the experts:
    a multiple of 4 float32 channels, 8 bfloat16."""
    for axis_labels in labels:
        ctx.align(axis_labels, max(1, 16 // stack.element_size()))


def _sdpa(ctx: TraceContext, call: OpCall) -> None:
    tensors = tensors_in(call.args[:3]) or [call.kwargs[k] for k in ("query", "key", "value")]
    q, k, v = tensors[:3]
    k_labels, v_labels = ctx.labels(k), ctx.labels(v)
    if call.kwargs.get("enable_gqa") and q.dim() >= 3 and k.shape[-3] == 1 < q.shape[-3]:
        _multi_query(ctx, q)  # one key/value head, broadcast over any number of query heads
    elif call.kwargs.get("enable_gqa") and q.dim() >= 3 and k.shape[-3] != q.shape[-3]:
        groups = q.shape[-3] // k.shape[-3]  # query head i reads key/value head i // groups
        k_labels = k_labels.repeat_interleave(groups, dim=-3)
        v_labels = v_labels.repeat_interleave(groups, dim=-3)
    if call.arg(6, "scale") is None and q.dim() >= 1:  # the default 1 / sqrt(head width)
        head = first_line(ctx.space.find(ctx.labels(q)), q.dim() - 1)
        if varies(head, 0):
            ctx.width_numbers.append((user_line() or "scaled_dot_product_attention", head))
    scores_shape = (*q.shape[:-1], k.shape[-2])
    scores = contract(ctx, ctx.labels(q), k_labels.transpose(-1, -2), scores_shape)
    mask = call.args[3] if len(call.args) > 3 else call.kwargs.get("attn_mask")
    if isinstance(mask, Tensor):
        from prunekit.graph.ops_pointwise import combine

        scores = combine(ctx, [scores, ctx.labels(mask)], torch.Size(scores_shape))
    out = tensors_in(call.out)[0]
    ctx.set_labels(out, contract(ctx, scores, v_labels, tuple(out.shape)))


def _multi_query(ctx: TraceContext, q: Tensor) -> None:
    """Multi-query attention through ``enable_gqa`` (GPT-BigCode): the one key/value head
    serves every query head, so the query heads may go in any number (the product with
    the shared head, :func:`_batched`, lets them). The module's int attribute that counts
    query heads per key/value head for the other paths (``num_key_value_groups``, read by
    ``repeat_kv`` when a mask is passed) equals the query head count: it is bound to the
    query heads and rewritten with them."""
    labels, dim = ctx.space.find(ctx.labels(q)), q.dim() - 3
    if varying(labels) != {dim}:  # not whole heads that may go
        return
    for name, value in vars(ctx.running_module).items():
        if type(value) is int and value == q.shape[dim] and name.endswith("key_value_groups"):
            ctx.bind_attribute(ctx.path, name, first_line(labels, dim))


def _solve_triangular(ctx: TraceContext, call: OpCall) -> None:
    """``X = solve_triangular(A, B)``: ``A @ X = B`` (``X @ A = B`` with ``left=False``), so
    ``X = A⁻¹ @ B``, whose labels couple as a product's (gated DeltaNet's UT transform, as
    Qwen3.5 runs it)."""
    tensors = tensors_in(call.args[:2]) or [call.kwargs[k] for k in ("input", "B")
                                             if k in call.kwargs]
    if len(tensors) != 2:
        raise OpNotMappable("expected solve_triangular(A, B)")
    a, b = (ctx.labels(t) for t in tensors)
    out = tensors_in(call.out)[0]
    left = call.kwargs.get("left", True)
    ctx.set_labels(out, contract(ctx, a, b, tuple(out.shape)) if left else
                   contract(ctx, b, a, tuple(out.shape)))


register_op(("matmul", "bmm", "mm"), matmul)
# a sparse left operand (a graph's adjacency: torch.sparse.mm(adj, h)) contracts alike
register_op(("_sparse_mm", "sparse_mm", "spmm", "smm"), matmul)
register_op(("linalg_solve_triangular", "solve_triangular"), _solve_triangular)
register_op(("scaled_dot_product_attention",), _sdpa)
