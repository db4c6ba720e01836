"""Layer adapters for Conv1d/2d/3d and ConvTranspose1d/2d/3d, including grouped convs.

Channels are dim 1 (dim 0 for unbatched input). Three cases, by how groups couple:

* ``groups == 1``: input and output channels are independent;
* one input channel per group (depthwise, possibly with a channel multiplier): output
  channel ``g·m + i`` belongs to input channel ``g``; pruning removes whole groups and
  ``groups`` shrinks with them;
* several input channels per group (ResNeXt): the group count stays fixed and channel
  ``j`` of every group leaves together, on the input and on the output side.

Conv weights are ``[out, in/groups, *k]``; transposed ones ``[in, out/groups, *k]``.

A one-channel conv that slides along a dim carrying another layer's channels, keeping its
size (ECA attention: ``conv1d(1, 1, k)`` over the pooled ``[B, 1, C]`` channel vector), passes
those channels through position by position: its kernel is shared by every position, so
no weight belongs to a channel, and each output position stays with the channel it sits on
(after pruning, a kept channel's neighbours are the kept ones next to it).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from prunekit.graph.labels import rep_along, varying
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    ParamSlicer,
    WeightView,
    grad_rows,
    gradient_of,
    is_parameter,
    register_adapter,
    update_attr,
)
from prunekit.structured.adapters_linear import _first, _output


def _slides_over_channels(ctx: TraceContext, call: ModuleCall, x: Tensor, cdim: int) -> bool:
    """A one-channel conv whose input carries channels along its spatial dims and whose
    output has the input's shape: the output takes the input's labels (see the module
    docstring), the conv's own one-wide dims are recorded whole. False (nothing done) for
    any other call."""
    out = _output(call)
    if out.shape != x.shape:
        return False
    vector = ctx.vector_of(x)
    if vector is not None:
        if vector[0] % x.dim() == cdim:
            return False
    elif not varying(ctx.space.find(ctx.labels(x))) - {cdim}:
        return False
    conv = call.module
    for dim in ("in", "out"):
        ctx.module_ids(call.name, conv, dim, 1)
    ctx.set_labels(out, ctx.labels(x))
    return True


class ConvAdapter:
    """See the module docstring."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        conv = call.module
        assert isinstance(conv, _ConvNd)
        x = _first(call)
        cdim = 1 if x.dim() == len(conv.kernel_size) + 2 else 0
        space = ctx.space
        if conv.in_channels == conv.out_channels == 1 and _slides_over_channels(ctx, call, x,
                                                                                 cdim):
            return
        in_labels = ctx.consume(x, cdim)
        groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        if groups == 1:
            ctx.record_dim(call.name, conv, "in", in_labels)
            out_labels = ctx.module_ids(call.name, conv, "out", cout)
        elif cin == groups:  # depthwise: output channel g·m + i follows input channel g
            out_labels = in_labels.repeat_interleave(cout // groups)
            ctx.record_dim(call.name, conv, "in", in_labels)
            ctx.record_dim(call.name, conv, "out", out_labels)
        else:  # grouped: the group count stays; channel j of every group leaves together
            rep_along(space, in_labels.view(groups, -1), (0,))
            ctx.record_dim(call.name, conv, "in", in_labels)
            out_labels = ctx.module_ids(call.name, conv, "out", cout)
            rep_along(space, out_labels.view(groups, -1), (0,))
        out = _output(call)
        ctx.set_vector(out, space.find(out_labels), cdim)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        assert isinstance(module, _ConvNd)
        weight = module.weight
        grad = gradient_of(module, "weight", weight)
        views = [WeightView(_grouped_rows(module, weight.detach(), dim), "weight", dim,
                            None if grad is None else _grouped_rows(module, grad, dim))]
        bias = module.bias
        if dim == "out" and is_parameter(bias):
            views.append(WeightView(bias.detach().reshape(-1, 1), "bias", dim, grad_rows(bias, 0)))
        return views

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        conv = module
        assert isinstance(conv, _ConvNd)
        groups, cin, cout = conv.groups, conv.in_channels, conv.out_channels
        keep_out, keep_in = keep.get("out"), keep.get("in")
        out_axis, in_axis = (1, 0) if conv.transposed else (0, 1)
        # the axis that holds channels of one group only takes local indices
        local_axis, local_size = (out_axis, cout // groups) if conv.transposed else (
            in_axis, cin // groups)
        for index, axis in ((keep_out, out_axis), (keep_in, in_axis)):
            if index is None:
                continue
            if groups > 1 and axis == local_axis:
                if cin == groups:  # depthwise: whole groups go, each keeps its width
                    continue
                index = index[index < local_size]
                if index.numel() == local_size:
                    continue
            slicer.slice(conv, "weight", axis, index)
        if keep_out is not None:
            slicer.slice(conv, "bias", 0, keep_out)
        # in_channels, out_channels and groups follow from the cut weight (sync)

    def sync(self, module: nn.Module) -> None:
        """Sizes from the cut weight, after :meth:`prune` or where only the parameter was cut
        because a functional call read it (Mamba's ``F.conv1d(x,
        conv1d.weight.squeeze(1).unsqueeze(1), groups=C)``): a depthwise conv keeps one
        group per input channel."""
        assert isinstance(module, _ConvNd)
        rows, per_group = int(module.weight.shape[0]), int(module.weight.shape[1])
        groups, cin, cout = module.groups, module.in_channels, module.out_channels
        depthwise = groups > 1 and groups == cin
        if module.transposed:  # [in, out / groups, *k]
            groups = rows if depthwise else groups
            update_attr(module, "in_channels", rows)
            update_attr(module, "out_channels", per_group * groups)
        else:  # [out, in / groups, *k]
            groups = rows // max(cout // cin, 1) if depthwise and per_group == 1 else groups
            update_attr(module, "out_channels", rows)
            update_attr(module, "in_channels", per_group * groups)
        update_attr(module, "groups", groups)

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        assert isinstance(module, _ConvNd)
        if module.groups != 1:
            return None
        out_axis, in_axis = (1, 0) if module.transposed else (0, 1)
        return [("weight", out_axis, "out"), ("weight", in_axis, "in"), ("bias", 0, "out")]


def _grouped_rows(conv: _ConvNd, weight: Tensor, dim: str) -> Tensor:
    """The weight as ``[channels along dim, -1]`` for any group count."""
    groups = conv.groups
    first, second = weight.shape[0], weight.shape[1]
    by_first = (dim == "out") != conv.transposed
    if by_first:
        return weight.reshape(first, -1)
    if groups == 1:  # the general path below with one group: the same copy, in one op
        return weight.transpose(0, 1).reshape(second, -1)
    per = weight.reshape(groups, first // groups, second, -1).transpose(1, 2)
    return per.reshape(groups * second, -1)


_ADAPTER = ConvAdapter()
for _cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d,
             nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
    register_adapter(_cls, _ADAPTER)
