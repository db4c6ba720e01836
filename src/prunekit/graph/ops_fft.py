"""Fourier transforms: ``torch.fft.*`` (FNO, GFNet's global filter, LaMa's FFC, FNet) and
``stft``/``istft``, with the complex-number accessors (``.real``, ``.imag``, ``angle``) that
read their results.

Each output element of a transform mixes every position along the transformed dims, and
the output's size there follows ``n``/``s`` or the input's (``rfft``: ``n // 2 + 1``). Along
a dim without channels (spatial, time, tokens) that is harmless: the channels of the other
dims pass through unchanged, and every position along a transformed dim carries the label
the input had there (labels do not vary along it). ``fftshift``/``ifftshift`` roll by half
the size, so they follow the same rule.

Along a dim that *does* carry channels (FNet's FFT over the hidden dim) the channels are
kept whole, with the reason: unlike a sum, a transform weighs each channel by its position
(``exp(-2πi·jk/n)``), so removing a channel shifts every later one's phase and resizes the
output; pruning could not equal zeroing a channel's contribution. The output then has a
shape no pruning changes.
"""

from __future__ import annotations

from prunekit.graph.labels import rep_along, varies, varying
from prunekit.graph.ops import OpCall, OpNotMappable, register_op, tensors_in
from prunekit.graph.trace import TraceContext

_KINDS = ("fft", "ifft", "rfft", "irfft", "hfft", "ihfft")
ONE_D = tuple(f"fft_{k}" for k in _KINDS)
TWO_D = tuple(f"fft_{k}2" for k in _KINDS)
N_D = tuple(f"fft_{k}n" for k in _KINDS)
SHIFTS = ("fft_fftshift", "fft_ifftshift")
COMPLEX_PARTS = ("real", "imag", "angle", "conj", "conj_physical", "resolve_conj",
                 "resolve_neg")


def _transformed(call: OpCall, ndim: int) -> tuple[int, ...]:
    """The dims a ``torch.fft`` call transforms, normalised and sorted (its defaults: the
    last dim, the last two, and for the n-D and shift variants every dim, or the last
    ``len(s)`` where ``s`` is given)."""
    if call.name in SHIFTS:
        dim = call.arg(1, "dim", None)
        size = None
    else:
        dim = call.arg(2, "dim", -1 if call.name in ONE_D else
                   (-2, -1) if call.name in TWO_D else None)
        size = call.arg(1, "n" if call.name in ONE_D else "s", None)
    if dim is None:
        dims: tuple[int, ...] = tuple(range(ndim - len(size), ndim)) if isinstance(
            size, (tuple, list)) else tuple(range(ndim))
    elif isinstance(dim, int):
        dims = (dim,)
    elif isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim):
        dims = tuple(dim)
    else:
        raise OpNotMappable(f"dim={dim!r} is not an int or a tuple of ints")
    if any(not -ndim <= d < ndim for d in dims):
        raise OpNotMappable(f"dim={dim!r} is out of range for an input with {ndim} dims")
    return tuple(sorted({d % ndim for d in dims}))


def _fft(ctx: TraceContext, call: OpCall) -> None:
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    ndim = source.dim()
    dims = _transformed(call, ndim) if ndim else ()
    if out.dim() != ndim or any(out.shape[d] != source.shape[d]
                                for d in range(ndim) if d not in dims):
        raise OpNotMappable(f"input of shape {tuple(source.shape)} gives an output of shape "
                            f"{tuple(out.shape)}, which differs outside dims {dims}")
    vector = ctx.vector_of(source)
    if vector is not None and vector[0] not in dims:  # (the common case: channels elsewhere)
        ctx.set_vector(out, ctx.space.find(vector[1]), vector[0])
        return
    labels = ctx.space.find(ctx.labels(source))
    if not varying(labels).isdisjoint(dims):
        ctx.block(labels, _mixes_channels(call.display, dims))
    rep = rep_along(ctx.space, ctx.space.find(labels), dims)
    ctx.set_labels(out, rep.expand(tuple(out.shape)))


def _mixes_channels(display: str, dims: tuple[int, ...]) -> str:
    return (f"{display} transforms along dims {dims}, which carry channels: each output "
            f"mixes every channel by its position and its size there follows their number, "
            f"so removing channels would not equal zeroing them")


def _short_time(ctx: TraceContext, call: OpCall) -> None:
    """``stft`` turns the last (time) dim into (frequency, frame) dims (and a pair dim with
    ``return_complex=False``), ``istft`` the last two into time: the leading (batch) dims
    pass their labels, channels along the transformed dims are kept whole."""
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    out = tensors_in(call.out)[0]
    taken = 1 if call.name == "stft" else 2
    lead = source.dim() - taken
    if lead < 0 or out.dim() < lead or out.shape[:lead] != source.shape[:lead]:
        raise OpNotMappable(f"input of shape {tuple(source.shape)} gives an output of shape "
                            f"{tuple(out.shape)}, which differs in its leading dims")
    dims = tuple(range(lead, source.dim()))
    labels = ctx.space.find(ctx.labels(source))
    if any(varies(labels, d) for d in dims):
        ctx.block(labels, _mixes_channels(call.display, dims))
    rep = rep_along(ctx.space, ctx.space.find(labels), dims)  # size 1 along dims
    made = (1,) * (out.dim() - lead)  # the output's own trailing dims
    ctx.set_labels(out, rep.reshape(*source.shape[:lead], *made).expand(tuple(out.shape)))


def _complex_part(ctx: TraceContext, call: OpCall) -> None:
    """``z.real``, ``z.imag``, ``z.angle()``, ``z.conj()``: elementwise, the labels pass."""
    source = tensors_in(call.args[:1] or (call.kwargs.get("input"),))[0]
    if call.out is source:
        return
    for out in tensors_in(call.out):
        if out.shape != source.shape:
            raise OpNotMappable(f"output shape {tuple(out.shape)} differs from the input's")
        vector = ctx.vector_of(source)
        if vector is not None:
            ctx.set_vector(out, vector[1], vector[0])
        else:
            ctx.set_labels(out, ctx.labels(source))


register_op((*ONE_D, *TWO_D, *N_D, *SHIFTS), _fft)
register_op(("stft", "istft"), _short_time)
register_op(COMPLEX_PARTS, _complex_part)
