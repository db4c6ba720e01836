"""Layer adapters for norm layers (BatchNorm, InstanceNorm, LayerNorm, GroupNorm, RMSNorm)
and PReLU: their input and output channels are the same ``"channels"`` dimension."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from prunekit.graph.labels import rep_along
from prunekit.graph.ops import OpNotMappable
from prunekit.graph.ops_layer import shared_slope
from prunekit.graph.ops_norm import ROWS, normalises_rows
from prunekit.graph.trace import ModuleCall, TraceContext
from prunekit.structured.adapters import (
    Axis,
    ParamSlicer,
    WeightView,
    axes_list,
    cut_axes,
    register_adapter,
    update_attr,
    views_from_axes,
)
from prunekit.structured.adapters_linear import _first, _output

_AXES = (
    Axis("weight", 0, "channels", "scale"),
    Axis("bias", 0, "channels", "bias"),
    Axis("running_mean", 0, "channels", "bias"),
    Axis("running_var", 0, "channels", "bias"),
)


class ChannelNormAdapter:
    """A layer whose channels pass straight through on dim ``channel_dim`` (negative: from
    the end); ``groups_attr`` names a group count that must stay fixed (GroupNorm), except
    where every channel is a group of its own (``GroupNorm(C, C)``, a per-channel norm): the
    count then follows the channels. A ``normalized_shape`` of several dims normalises one
    channel dim when the others are 1 (GCNet's ``LayerNorm([C, 1, 1])``)."""

    def __init__(self, size_attr: str, *, channel_dim: int, groups_attr: str | None = None,
                 as_shape: bool = False) -> None:
        self.size_attr = size_attr
        self.channel_dim = channel_dim
        self.groups_attr = groups_attr
        self.as_shape = as_shape

    def _dim(self, module: nn.Module, x: Tensor) -> int:
        if self.as_shape:
            shape = tuple(getattr(module, self.size_attr))
            if any(size != 1 for size in shape[1:]):
                raise OpNotMappable(f"{self.size_attr}={shape} spans several dims")
            return -len(shape)
        return self.channel_dim

    def _per_channel_groups(self, module: nn.Module) -> str | None:
        """``groups_attr`` where it counts one group per channel (it follows them), else
        None."""
        attr = self.groups_attr
        if attr is not None and getattr(module, attr) == getattr(module, self.size_attr) > 1:
            return attr
        return None

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        x = _first(call)
        dim = self._dim(call.module, x)
        if self.channel_dim < 0 and normalises_rows(ctx, x, dim):  # LayerNorm(head_dim)
            ids = ctx.module_ids(call.name, call.module, "channels", x.shape[dim])
            ctx.block(ids, f"{type(call.module).__name__} {ROWS}")
            ctx.set_labels(_output(call), ctx.labels(x))
            return
        labels = ctx.consume(x, dim)
        groups = getattr(call.module, self.groups_attr, 1) if self.groups_attr else 1
        if groups > 1 and self._per_channel_groups(call.module) is None:
            # channel j of every group leaves together: the group count stays
            labels = rep_along(ctx.space, labels.view(groups, -1), (0,)).expand(groups, -1)
            labels = labels.reshape(-1)
        ctx.record_dim(call.name, call.module, "channels", labels)
        out = _output(call)
        ctx.set_vector(out, ctx.space.find(labels), dim)

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        return views_from_axes(module, dim, _AXES[:2])

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        cut_axes(module, keep, slicer, _AXES)
        if "channels" in keep:
            self._set_size(module, int(keep["channels"].numel()))

    def _set_size(self, module: nn.Module, size: int) -> None:
        per_channel = self._per_channel_groups(module)
        if per_channel is not None:
            update_attr(module, per_channel, size)
        if self.as_shape:  # (C, 1, 1) -> (size, 1, 1)
            update_attr(module, self.size_attr, (size, *getattr(module, self.size_attr)[1:]))
        else:
            update_attr(module, self.size_attr, size)

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        return axes_list(_AXES)

    def sync(self, module: nn.Module) -> None:
        weight = getattr(module, "weight", None)
        if isinstance(weight, Tensor):
            self._set_size(module, int(weight.shape[0]))


class PReLUAdapter(ChannelNormAdapter):
    """PReLU with one slope per channel (dim 1); a single shared slope is pointwise."""

    def trace(self, ctx: TraceContext, call: ModuleCall) -> None:
        module = call.module
        assert isinstance(module, nn.PReLU)
        if module.num_parameters == 1:
            shared_slope(ctx, module.weight)
            out = _output(call)
            ctx.set_labels(out, ctx.labels(_first(call)))
            return
        super().trace(ctx, call)

    def _dim(self, module: nn.Module, x: Tensor) -> int:
        return 0 if x.dim() == 1 else 1


_BATCHNORM = ChannelNormAdapter("num_features", channel_dim=1)
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d):
    register_adapter(_cls, _BATCHNORM)
register_adapter(nn.LayerNorm, ChannelNormAdapter("normalized_shape", channel_dim=-1,
                                                  as_shape=True))
register_adapter(nn.RMSNorm, ChannelNormAdapter("normalized_shape", channel_dim=-1,
                                                as_shape=True))
register_adapter(nn.GroupNorm, ChannelNormAdapter("num_channels", channel_dim=1,
                                                  groups_attr="num_groups"))
register_adapter(nn.PReLU, PReLUAdapter("num_parameters", channel_dim=1))
