"""Layer adapters for timm's and transformers' weight-standardised convolutions, registered
by class name so that neither library is imported here.

``StdConv2d`` / ``StdConv2dSame`` (BiT, ResNetV2, ViT-hybrid backbones), transformers' BiT
``WeightStandardizedConv2d`` (the same standardisation, after an optional dynamic pad) and
``ScaledStdConv2d`` / ``ScaledStdConv2dSame`` (NFNet, NF-ResNet) are ``nn.Conv2d``
subclasses whose forward standardises the weight per output channel (``F.batch_norm`` over
``weight.reshape(1, out, -1)``; the scaled ones multiply by ``gain * scale``) before the
conv. They couple channels as a conv does, so they are traced as one layer with the conv
adapter; ``gain`` (``[out, 1, 1, 1]``) is cut with the output channels and scored as a
scale (like a norm's γ, which these BatchNorm-free nets do without).

Cutting output channels is exact: each row is standardised on its own. Cutting *input*
channels is not: the rows are standardised again over the inputs they keep, so the pruned
layer is not the unpruned one with those inputs zeroed (it stays a standardised conv, which
is what the model trains as). ``scale`` (``gamma / sqrt(fan_in)``, a float fixed at
construction) is kept, so the kept weights keep their scale.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from prunekit.structured.adapters import (
    ParamSlicer,
    WeightView,
    grad_rows,
    is_parameter,
    register_adapter_by_name,
)
from prunekit.structured.adapters_conv import ConvAdapter


class StdConvAdapter(ConvAdapter):
    """:class:`ConvAdapter` plus the per-output-channel ``gain`` of the scaled variants."""

    def weight_views(self, module: nn.Module, dim: str) -> list[WeightView]:
        views = super().weight_views(module, dim)
        gain = getattr(module, "gain", None)
        if dim == "out" and is_parameter(gain):
            views.append(WeightView(gain.detach().reshape(gain.shape[0], -1), "scale", dim,
                                    grad_rows(gain, 0)))
        return views

    def prune(self, module: nn.Module, keep: Mapping[str, Tensor], slicer: ParamSlicer) -> None:
        super().prune(module, keep, slicer)
        if "out" in keep and is_parameter(getattr(module, "gain", None)):
            slicer.slice(module, "gain", 0, keep["out"])

    def axes(self, module: nn.Module) -> list[tuple[str, int, str]] | None:
        axes = super().axes(module)
        if axes is not None and is_parameter(getattr(module, "gain", None)):
            axes.append(("gain", 0, "out"))
        return axes


for _name in ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"):
    register_adapter_by_name(f"timm.layers.std_conv.{_name}", StdConvAdapter())
register_adapter_by_name("transformers.models.bit.modeling_bit.WeightStandardizedConv2d",
                         StdConvAdapter())
