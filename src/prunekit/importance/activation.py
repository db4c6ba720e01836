"""Activation-aware importance |W|·‖X‖ (Wanda, Sun et al. 2023) for Linear and Conv layers.

``prepare`` runs the calibration batches (forward only, through ``loss_fn``) and records,
for every input feature ``j`` of a scored layer, the RMS of the inputs it multiplies,
``‖X_j‖ / sqrt(rows)`` (rows: samples × positions). The score of weight ``W_ij`` is
``|W_ij| · ‖X_j‖ / sqrt(rows)``: within a tensor the order is Wanda's; the RMS makes
tensors whose inputs have different numbers of positions comparable in a global ranking.

Which input feature a weight multiplies is layer knowledge, so it lives in a small table of
:class:`InputFeatures` objects (:func:`register_input_features`): Linear (feature = last
input dim) and Conv1d/2d/3d (feature = input channel, with groups; every kernel position
of a channel shares the channel's RMS — padding and stride are ignored). The criterion
itself only multiplies tensors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd

from prunekit.errors import ConfigError
from prunekit.importance.base import register_criterion, score_dtype
from prunekit.importance.data import CalibrationData, DataAwareScoring, collect_inputs

__all__ = [
    "ActivationAware",
    "InputFeatures",
    "activation_rms",
    "has_input_features",
    "register_input_features",
]


class InputFeatures(Protocol):
    """How a layer's input maps onto the columns of its weight."""

    def sum_squares(self, module: nn.Module, inputs: Tensor) -> tuple[Tensor, int]:
        """Σ x² per input feature over the batch and positions, and the number of rows."""
        ...

    def expand(self, module: nn.Module, per_feature: Tensor) -> Tensor:
        """A per-feature vector laid out with the shape of ``module.weight``."""
        ...


class LinearFeatures:
    """nn.Linear: feature ``j`` is input ``[..., j]`` and weight column ``[:, j]``."""

    def sum_squares(self, module: nn.Module, inputs: Tensor) -> tuple[Tensor, int]:
        flat = inputs.reshape(-1, inputs.shape[-1]).float()
        return flat.square().sum(0), int(flat.shape[0])

    def expand(self, module: nn.Module, per_feature: Tensor) -> Tensor:
        weight: Tensor = module.weight  # type: ignore[assignment]
        return per_feature.expand(weight.shape)


class ConvFeatures:
    """Conv1d/2d/3d: feature ``c`` is input channel ``c``; weight ``[o, c_local, *k]`` reads
    channel ``group(o) · in_per_group + c_local``."""

    def sum_squares(self, module: nn.Module, inputs: Tensor) -> tuple[Tensor, int]:
        conv = _conv(module)
        cdim = 1 if inputs.dim() == len(conv.kernel_size) + 2 else 0
        channels = inputs.movedim(cdim, 0).reshape(inputs.shape[cdim], -1).float()
        return channels.square().sum(1), int(channels.shape[1])

    def expand(self, module: nn.Module, per_feature: Tensor) -> Tensor:
        conv = _conv(module)
        groups, out = conv.groups, conv.out_channels
        per_group = per_feature.reshape(groups, -1).repeat_interleave(out // groups, dim=0)
        shape = conv.weight.shape
        return per_group.reshape(out, -1, *([1] * (len(shape) - 2))).expand(shape)


def _conv(module: nn.Module) -> _ConvNd:
    if not isinstance(module, _ConvNd) or module.transposed:
        raise ConfigError(f"ConvFeatures handles Conv1d/2d/3d, got {type(module).__name__}")
    return module


_FEATURES: dict[type[nn.Module], InputFeatures] = {}


def register_input_features(module_type: type[nn.Module], features: InputFeatures, *,
                            replace: bool = False) -> None:
    """Use ``features`` to map inputs of ``module_type`` (and subclasses) onto its weight."""
    if module_type in _FEATURES and not replace:
        raise ConfigError(f"{module_type.__name__} already has input features registered; "
                          f"pass replace=True")
    _FEATURES[module_type] = features


def has_input_features(module: nn.Module) -> bool:
    """True if the activation criterion can score ``module.weight``."""
    return any(cls in _FEATURES for cls in type(module).__mro__)


def _features_of(module: nn.Module, name: str) -> InputFeatures:
    for cls in type(module).__mro__:
        found = _FEATURES.get(cls)
        if found is not None:
            return found
    raise ConfigError(
        f"criterion='activation' cannot map the inputs of {name} ({type(module).__name__}) "
        f"onto its weight; supported: {', '.join(t.__name__ for t in _FEATURES)}. Add the "
        f"layer to ignore, or register_input_features({type(module).__name__}, ...)"
    )


def activation_rms(
    model: nn.Module, names: list[str], data: CalibrationData
) -> dict[str, Tensor]:
    """For every tensor name ``"<module>.weight"``: the RMS of the input each weight entry
    multiplies, with the weight's shape (0 for a layer the batches never reached)."""
    layers: dict[nn.Module, tuple[str, InputFeatures]] = {}
    for name in names:
        path, _, attr = name.rpartition(".")
        module = model.get_submodule(path)
        if attr != "weight":
            raise ConfigError(f"criterion='activation' scores layer weights, got tensor {name}")
        layers[module] = (name, _features_of(module, name))
    sums: dict[nn.Module, Tensor] = {}
    rows: dict[nn.Module, int] = {}

    def record(module: nn.Module, inputs: Tensor) -> None:
        squares, n = layers[module][1].sum_squares(module, inputs)
        sums[module] = sums[module] + squares if module in sums else squares
        rows[module] = rows.get(module, 0) + n

    collect_inputs(model, {m: record for m in layers}, data)
    out: dict[str, Tensor] = {}
    for module, (name, features) in layers.items():
        weight: Tensor = module.weight  # type: ignore[assignment]
        if module not in sums:
            out[name] = torch.zeros(weight.shape, dtype=score_dtype(weight))
            continue
        rms = (sums[module] / max(1, rows[module])).sqrt()
        out[name] = features.expand(module, rms).to(weight.device).contiguous()
    return out


@dataclass(frozen=True)
class ActivationAware(DataAwareScoring):
    """|W|·RMS(X) per weight; a group scores the sum of its entries."""

    name: str = "activation"
    needs_data: bool = True

    def prepare(
        self, model: nn.Module, params: Mapping[str, Tensor], data: CalibrationData
    ) -> Mapping[str, Tensor]:
        return activation_rms(model, list(params), data)

    def score_with(self, weight: Tensor, statistic: Tensor) -> Tensor:
        dtype = score_dtype(weight)
        return weight.detach().to(dtype).abs() * statistic.to(dtype).abs()


register_input_features(nn.Linear, LinearFeatures())
for _conv_type in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
    register_input_features(_conv_type, ConvFeatures())
ACTIVATION = register_criterion(ActivationAware())
