"""``torch.einsum``, ``tensordot`` and ``addmm``-style products, by index letters (``...``
and an implicit result are spelled out first, as torch reads them; ``tensordot`` is read
as the equation it spells).

Each operand may carry channels along at most one of its letters (an activation whose
channels vary along two letters is kept whole). A parameter of two or more dims is read as
a weight instead: its axes follow the channels of the letters it shares with the other
operands, and the one axis whose letter only it gives to the result makes the result's
channels (stacked experts' ``"...eh,edh,...e->...d"``); its other axes stay whole.
Operands that carry channels along the same letter are coupled index by index; an
operand that has the letter but no channels along it (and is not broadcast there) cannot
shrink, so the channels on that letter are kept whole. The result carries the channels of
its one channel letter (with none, it has a shape no pruning changes:
:func:`labels.fixed_shape`).
"""

from __future__ import annotations

import collections
import dataclasses
import string

from torch import Tensor

from prunekit.graph.labels import emit, fixed_shape, rep_along, varies
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.ops_matmul import joins_rows, matmul, rows_joined
from prunekit.graph.ops_pointwise import combine
from prunekit.graph.trace import ParamRecord, TraceContext


def _einsum(ctx: TraceContext, call: OpCall) -> None:
    equation = call.args[0]
    operands = tensors_in(call.args[1:])
    if not isinstance(equation, str):
        raise OpNotMappable("only equations written as a string are supported")
    lhs, rhs = _explicit(equation, [operand.dim() for operand in operands]).split("->")
    terms = lhs.split(",")
    space = ctx.space
    # a parameter of 2 or more dims read as a weight (``"bd,de->be"``, stacked experts'
    # ``"...d,ehd->...eh"``): its axes are cut with the letters it shares, not kept whole
    # with every channel they meet
    weights: dict[int, tuple[ParamRecord | None, dict[int, str]]] = {}
    for i, (term, operand) in enumerate(zip(terms, operands, strict=True)):
        if len(set(term)) != len(term):
            continue
        stack = ctx.param_views.weight(operand, "pick")
        if stack is not None:  # W[ids] of a stack [E, R, C]: its last two dims are W's axes
            # 1 and 2 (gpt-fast's ``einsum("ti,taoi->tao", x, w1[expert_indices])``)
            lead = operand.dim() - 2
            weights[i] = (ctx.layer_weight(stack), {1: term[lead], 2: term[lead + 1]})
        elif operand.dim() >= 2 and ctx.is_param(operand):
            weights[i] = (ctx.layer_weight(operand), dict(enumerate(term)))
        elif operand.dim() >= 2 and (root := ctx.same_as_param(operand)) is not None and \
                root.shape == operand.shape:  # Mamba's A = -torch.exp(self.A_log.float())
            weights[i] = (ctx.layer_weight(root), dict(enumerate(term)))
    labels: list[Tensor] = []
    along: list[list[str]] = []
    for i, (term, operand) in enumerate(zip(terms, operands, strict=True)):
        if i in weights and weights[i][0] is not None:
            labels.append(operand)  # (not read: a weight's axes are cut below)
            along.append([])
            continue
        lab = space.find(ctx.labels(operand))
        labels.append(lab)
        along.append([term[d] for d in range(lab.dim()) if varies(lab, d)])
    channel: list[str | None] = []
    for i, letters in enumerate(along):
        if len(letters) > 1:
            joined = _rows_or_sum(ctx, i, terms, rhs, labels, along)
            if joined is None:
                space.block(labels[i], f"{call.display} operand carries channels along "
                                       f"{letters}")
                letters = []
            else:
                labels[i], letters = joined
        channel.append(letters[0] if letters else None)
    vectors: dict[str, list[Tensor]] = {}
    for term, letter, lab in zip(terms, channel, labels, strict=True):
        if letter is not None:
            dim = term.index(letter)
            others = tuple(d for d in range(lab.dim()) if d != dim)
            vectors.setdefault(letter, []).append(lab.amax(dim=others) if others else lab)
    for letter, found in vectors.items():
        for other in found[1:]:
            space.union(found[0], other)
        fixed = any(letter in term and ch != letter and op.shape[term.index(letter)] > 1
                    for i, (term, ch, op) in enumerate(zip(terms, channel, operands, strict=True))
                    if i not in weights or weights[i][0] is None)
        if fixed:
            for vector in found:
                space.block(vector, f"{call.display}: another operand's '{letter}' cannot shrink")
    made: set[str] = set()  # the letters a weight's axis makes channels along
    for i, (record, axes) in weights.items():
        if record is not None:
            made.update(_cut_weight(ctx, record, axes, terms, i, rhs, vectors))
    out = tensors_in(call.out)[0]
    # an activation's channels before those a weight makes (Linformer's "bnd,nk->bkd"
    # keeps d, the keys' channels; k, the projected length, stays whole)
    carried = sorted((letter for letter in rhs if letter in vectors),
                     key=lambda letter: letter in made)
    if not carried:
        reason = f"{call.display} contracts all its channels: a shape no pruning changes"
        ctx.set_labels(out, fixed_shape(space, out.shape, reason))
        return
    for letter in carried[1:]:
        for vector in vectors[letter]:
            space.block(vector, f"{call.display} result carries channels on two letters")
    letter = carried[0]
    ctx.set_labels(out, emit(space.find(vectors[letter][0]), rhs.index(letter), out.shape))


def _rows_or_sum(ctx: TraceContext, at: int, terms: list[str], rhs: str,
                 labels: list[Tensor], found: list[list[str]]) -> tuple[Tensor, list[str]] | None:
    """An operand whose channels vary along two letters, one contracted (``k``) and one
    kept (``j``), read as :func:`ops_matmul.contract` reads such a side
    (:func:`ops_matmul.joins_rows`): channel k goes from every ``j`` (field vectors
    ``"bfd,bgd->bfg"``), or channel j of every ``k`` goes together and the weights along
    ``k`` are kept whole (gates times stacked experts, ``"be,beh->bh"``). None for any
    other operand."""
    letters, term = found[at], terms[at]
    contracted = [c for c in letters if c not in rhs]
    kept = [c for c in letters if c in rhs]
    if len(letters) != 2 or len(contracted) != 1 or len(kept) != 1:
        return None
    k, j = contracted[0], kept[0]
    space, lab = ctx.space, labels[at]
    k_dim, j_dim = term.index(k), term.index(j)
    others = [i for i, letters in enumerate(found) if i != at and k in letters]
    if others and joins_rows(space, lab.shape[k_dim], lab.shape[j_dim],
                             any(len(found[i]) > 1 for i in others),
                             [labels[i] for i in others]):
        return rows_joined(ctx, lab, k_dim), [k]
    for i in others:
        space.block(labels[i], "weights a sum of rows whose channels are pruned")
        labels[i] = space.find(labels[i])
        found[i] = [c for c in found[i] if c != k]
    return rep_along(space, lab, (k_dim,)).expand(lab.shape), [j]


def _cut_weight(ctx: TraceContext, record: ParamRecord, letters: dict[int, str],
                terms: list[str], at: int, rhs: str, vectors: dict[str, list[Tensor]]
                ) -> list[str]:
    """Cut the axes of the weight read as ``terms[at]`` (``letters``: its axis -> letter)
    with the channels of the letters it shares with the other operands; where exactly one
    of its letters goes to the result and no other operand has it, that axis makes the
    result's channels (``down`` in ``"...eh,edh,...e->...d"``; returned). Its other axes
    are kept whole."""
    others = set("".join(t for i, t in enumerate(terms) if i != at))
    made = [axis for axis, letter in letters.items()
            if letter in rhs and letter not in others and letter not in vectors]
    for axis, letter in letters.items():
        if letter in vectors:
            ctx.weight_axis(record, axis, labels=vectors[letter][0])
    if len(made) == 1:
        axis = made[0]
        vectors[letters[axis]] = [ctx.weight_axis(record, axis,
                                                  count=int(record.tensor.shape[axis]))]
        return [letters[axis]]
    return []


def _explicit(equation: str, ranks: list[int]) -> str:
    """``equation`` with each ``...`` spelled out in spare letters (the broadcast dims,
    aligned from the right across operands) and an implicit result written out (the
    broadcast dims, then the letters used once, sorted), as torch reads it:
    ``"...pd,...qd->...pq"`` of a 3-D and a 2-D operand is ``"Apd,qd->Apq"``."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise OpNotMappable("the equation does not match the operands")
    letters = {c for c in equation if c.isalpha()}
    spare = [c for c in string.ascii_letters if c not in letters]
    widths = [rank - (len(term) - 3) if "..." in term else 0
              for term, rank in zip(terms, ranks, strict=True)]
    if any(w < 0 for w in widths) or max(widths, default=0) > len(spare) or any(
            "." in term.replace("...", "", 1) for term in (*terms, rhs)):
        raise OpNotMappable(f"cannot read the equation {equation!r} for operands of "
                            f"{ranks} dims")
    broadcast = "".join(spare[:max(widths, default=0)])
    terms = [term.replace("...", broadcast[len(broadcast) - w:])
             for term, w in zip(terms, widths, strict=True)]
    if arrow:
        rhs = rhs.replace("...", broadcast)
    else:
        counts = collections.Counter("".join(terms))
        rhs = broadcast + "".join(sorted(c for c, n in counts.items()
                                         if n == 1 and c not in broadcast))
    return ",".join(terms) + "->" + rhs


def _addmm(ctx: TraceContext, call: OpCall) -> None:
    """``addmm(input, a, b)`` (and ``baddbmm``) = ``input + a @ b``; the operands positional
    or by name (Bloom's ``alibi.baddbmm(batch1=q, batch2=k, beta=..., alpha=...)``)."""
    names = ("input", "mat1", "mat2") if call.name == "addmm" else ("input", "batch1", "batch2")
    operands = [call.args[i] if len(call.args) > i else call.kwargs.get(name)
                for i, name in enumerate(names)]
    bias, a, b = operands
    if not (isinstance(bias, Tensor) and isinstance(a, Tensor) and isinstance(b, Tensor)):
        raise OpNotMappable(f"expected tensors {', '.join(names)}")
    out = tensors_in(call.out)[0]
    # the product as matmul reads it (a weight parameter as a layer's, an ensemble's 3-D
    # weight [E, in, out] by ``baddbmm(bias, x, W)``), then the added input
    matmul(ctx, dataclasses.replace(call, args=(a, b), kwargs={}))
    ctx.set_labels(out, combine(ctx, [ctx.labels(out), ctx.labels(bias)], out.shape))


def _tensordot(ctx: TraceContext, call: OpCall) -> None:
    """``tensordot(a, b, dims)`` read as the ``einsum`` it is: ``dims=n`` contracts a's last
    n dims with b's first n, ``dims=([i, ...], [j, ...])`` a's dims i with b's dims j; the
    result holds a's other dims, then b's."""
    a, b = call.arg(0, "a"), call.arg(1, "b")
    dims = call.arg(2, "dims", 2)
    if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
        raise OpNotMappable("expected tensors a and b")
    equation = _tensordot_equation(a.dim(), b.dim(), dims)
    _einsum(ctx, dataclasses.replace(call, args=(equation, a, b), kwargs={}))


def _tensordot_equation(rank_a: int, rank_b: int, dims: object) -> str:
    if isinstance(dims, Tensor):
        dims = dims.tolist()
    if isinstance(dims, int):
        pairs = [(rank_a - dims + k, k) for k in range(dims)]
    elif isinstance(dims, (list, tuple)) and len(dims) == 2:
        left, right = ([d] if isinstance(d, int) else list(d) for d in dims)
        if len(left) != len(right):
            raise OpNotMappable(f"dims {dims!r} pair unequal numbers of dims")
        pairs = [(i % rank_a, j % rank_b) for i, j in zip(left, right, strict=True)]
    else:
        raise OpNotMappable(f"cannot read dims={dims!r}")
    if rank_a + rank_b > len(string.ascii_letters):
        raise OpNotMappable("too many dims to spell as an einsum")
    term_a = string.ascii_letters[:rank_a]
    term_b = list(string.ascii_letters[rank_a:rank_a + rank_b])
    for i, j in pairs:
        term_b[j] = term_a[i]
    contracted = {i for i, _ in pairs}
    contracted_b = {j for _, j in pairs}
    rhs = "".join(c for d, c in enumerate(term_a) if d not in contracted) + "".join(
        c for d, c in enumerate(term_b) if d not in contracted_b)
    return f"{term_a},{''.join(term_b)}->{rhs}"


register_op(("einsum",), _einsum)
register_op(("tensordot",), _tensordot)
register_op(("addmm", "baddbmm"), _addmm)
