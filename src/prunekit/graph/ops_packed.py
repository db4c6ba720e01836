"""Variable-length sequences: ``pack_padded_sequence``, ``pad_packed_sequence``, ``pad_sequence``.

``nn.utils.rnn.pack_padded_sequence`` sorts the batch in Python (an ``index_select``, mapped
elsewhere) and calls ``torch._pack_padded_sequence(input, lengths, batch_first)``, which
gathers the valid time steps of ``[B, T, *F]`` (or ``[T, B, *F]``) into rows of a
``[sum(lengths), *F]`` data tensor; ``pad_packed_sequence`` calls
``torch._pad_packed_sequence(data, batch_sizes, batch_first, padding_value, total_length)``
to scatter them back; ``pad_sequence`` (``pack_sequence`` uses it) stacks a list of
``[L_i, *F]`` tensors into a padded ``[B, T, *F]``. Each moves whole feature vectors
between leading (batch/time/row) positions, so the trailing feature dims keep their
channels; as a layer's ``consume`` does, every position of a channel is joined with the
others (NEUTRAL padding joins nothing). ``batch_sizes`` and ``lengths`` carry no channels.
"""

from __future__ import annotations

from torch import Tensor

from prunekit.graph.labels import emit, rep_along
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.trace import TraceContext


def _features(ctx: TraceContext, tensor: Tensor, lead: int) -> Tensor:
    """Labels of ``tensor``'s trailing dims (shape ``tensor.shape[lead:]``), every position
    along its ``lead`` leading dims joined."""
    if tensor.dim() < lead:
        raise OpNotMappable(f"a tensor of shape {tuple(tensor.shape)} has fewer than "
                            f"{lead} leading dims")
    vector = ctx.vector_of(tensor)
    if vector is not None and vector[0] >= lead:  # channels on a feature dim: nothing to join
        return emit(ctx.space.find(vector[1]), vector[0] - lead, tensor.shape[lead:])
    if any(size == 0 for size in tensor.shape[:lead]):  # no positions, nothing to join
        return ctx.labels(tensor).new_zeros(tensor.shape[lead:])
    joined = rep_along(ctx.space, ctx.labels(tensor), tuple(range(lead)))
    return joined[(0,) * lead]


def _put(ctx: TraceContext, out: Tensor, features: Tensor) -> None:
    """Label ``out`` with ``features`` on its trailing dims, broadcast over the others."""
    if features.dim() == 1 and out.dim() > 0:
        ctx.set_vector(out, features.contiguous(), -1)
    else:
        ctx.set_labels(out, features.expand(out.shape))


def _pack(ctx: TraceContext, call: OpCall) -> None:
    source, out = call.arg(0, "input"), tensors_in(call.out)
    if not isinstance(source, Tensor) or not out:
        raise OpNotMappable("expected an input tensor and a (data, batch_sizes) result")
    _put(ctx, out[0], _features(ctx, source, 2))  # [B, T, *F] / [T, B, *F] -> [N, *F]


def _unpack(ctx: TraceContext, call: OpCall) -> None:
    data, out = call.arg(0, "data"), tensors_in(call.out)
    if not isinstance(data, Tensor) or not out:
        raise OpNotMappable("expected a data tensor and a (padded, lengths) result")
    _put(ctx, out[0], _features(ctx, data, 1))  # [N, *F] -> [B, T, *F] / [T, B, *F]


def _pad_sequence(ctx: TraceContext, call: OpCall) -> None:
    sequences = tensors_in((call.arg(0, "sequences"),))
    out = tensors_in(call.out)
    if not sequences or len(out) != 1:
        raise OpNotMappable("expected a list of tensors and one padded result")
    features = [_features(ctx, seq, 1) for seq in sequences]  # [L_i, *F] each
    first = features[0]
    for other in features[1:]:  # feature f of every sequence lands in feature f
        if other.shape != first.shape:
            raise OpNotMappable(f"sequences with feature shapes {tuple(first.shape)} and "
                                f"{tuple(other.shape)}")
        ctx.space.union(first, other)
    _put(ctx, out[0], first)


register_op(("_pack_padded_sequence",), _pack)
register_op(("_pad_packed_sequence",), _unpack)
register_op(("pad_sequence",), _pad_sequence)
