"""Recovery without training: BN re-estimation and least-squares refits after a structured prune.

* :func:`recalibrate_batchnorm` re-estimates every BatchNorm's running mean and variance
  on calibration batches (a cumulative average, ``momentum=None``), with the rest of the
  model in eval mode. Removing channels shifts the statistics BN normalises with; this
  puts them back in line at the cost of a few forward passes.
* :func:`reconstruct` refits, layer by layer in model order, every layer whose *inputs*
  were pruned (the consumers of the removed channels) so that on calibration data its
  outputs match the unpruned model's (He et al. 2017, channel pruning with
  reconstruction). Its inputs come from the pruned model as already refitted upstream, its
  targets from the unpruned model, so errors do not pile up. ``method="lstsq"`` solves
  ``min ‖[X, 1] [W; b] − Y‖² + ridge·‖W‖²`` with the intercept free, which includes bias
  compensation; ``method="bias"`` only adds the removed inputs' mean contribution to the
  bias, ``b += W_removed · E[x_removed]``.

A layer is refitted through a small :class:`Refit` table (Linear, Conv2d with
``groups == 1``); other layers are left as they are and listed in the report.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from prunekit._inputs import model_device
from prunekit.errors import ConfigError, check_choice
from prunekit.importance.data import CalibrationData, LossFn, preserved_state

__all__ = [
    "LayerFit",
    "Reconstruction",
    "Refit",
    "recalibrate_batchnorm",
    "reconstruct",
    "register_refit",
]

Method = Literal["lstsq", "bias"]


def _calibration(data: CalibrationData | Iterable[Any], loss_fn: LossFn | None,
                 batches: int | None) -> CalibrationData:
    if data is None:
        raise ConfigError("recovery needs calibration data: pass data=<loader of "
                          "(inputs, targets) batches>, e.g. data=train_loader, batches=16")
    if isinstance(data, CalibrationData):
        return data
    return CalibrationData(data, loss_fn=loss_fn, batches=batches)


def _forward_all(model: nn.Module, calib: CalibrationData) -> int:
    """Run every calibration batch through ``model`` (via ``loss_fn``) without gradients."""
    count = 0
    with torch.no_grad():
        for batch in calib.iterate(model_device(model)):
            calib.loss(model, batch)
            count += 1
    return count


def recalibrate_batchnorm(
    model: nn.Module,
    data: CalibrationData | Iterable[Any],
    *,
    batches: int | None = None,
    loss_fn: LossFn | None = None,
) -> int:
    """Re-estimate the running statistics of every BatchNorm in ``model`` in place from
    ``batches`` calibration batches; returns how many were used. Weights and modes are
    unchanged; on an error the old statistics are put back."""
    calib = _calibration(data, loss_fn, batches)
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        raise ConfigError(f"recalibrate_batchnorm: {type(model).__name__} has no BatchNorm "
                          f"layer that tracks running statistics; nothing to recalibrate")
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    saved = [(b, b.detach().clone()) for m in norms for b in m.buffers()]
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative moving average over the calibration batches
            norm.train()
        return _forward_all(model, calib)
    except BaseException:
        with torch.no_grad():
            for buffer, old in saved:
                buffer.copy_(old)
        raise
    finally:
        for norm, momentum in momenta:
            norm.momentum = momentum
        for module, training in modes:
            module.training = training


class Refit(Protocol):
    """A layer seen as ``Y = X W^T + b`` on a matrix of input columns."""

    def supports(self, module: nn.Module) -> bool: ...

    def columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        """The input as ``[rows, features]`` (im2col for a conv)."""
        ...

    def outputs(self, output: Tensor) -> Tensor:
        """The output as ``[rows, out]``, rows in the order of ``columns``."""
        ...

    def features(self, module: nn.Module, keep_in: Tensor) -> Tensor:
        """Column indices of the unpruned layer that input indices ``keep_in`` occupy."""
        ...

    def matrix(self, module: nn.Module) -> Tensor:
        """The weight as ``[out, features]``."""
        ...

    def set_matrix(self, module: nn.Module, matrix: Tensor) -> None: ...


class LinearRefit:
    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        return inputs.reshape(-1, inputs.shape[-1])

    def outputs(self, output: Tensor) -> Tensor:
        return output.reshape(-1, output.shape[-1])

    def features(self, module: nn.Module, keep_in: Tensor) -> Tensor:
        return keep_in

    def matrix(self, module: nn.Module) -> Tensor:
        weight: Tensor = module.weight  # type: ignore[assignment]
        return weight.detach()

    def set_matrix(self, module: nn.Module, matrix: Tensor) -> None:
        weight: Tensor = module.weight  # type: ignore[assignment]
        with torch.no_grad():
            weight.copy_(matrix.reshape(weight.shape))


class Conv2dRefit:
    """Conv2d (groups 1, zero padding): columns are unfolded patches ``(c, kh, kw)``."""

    def supports(self, module: nn.Module) -> bool:
        return (isinstance(module, nn.Conv2d) and module.groups == 1
                and module.padding_mode == "zeros" and not isinstance(module.padding, str))

    def columns(self, module: nn.Module, inputs: Tensor) -> Tensor:
        assert isinstance(module, nn.Conv2d)
        patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation,
                           padding=module.padding, stride=module.stride)  # type: ignore[arg-type]
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])

    def outputs(self, output: Tensor) -> Tensor:
        return output.flatten(2).transpose(1, 2).reshape(-1, output.shape[1])

    def features(self, module: nn.Module, keep_in: Tensor) -> Tensor:
        assert isinstance(module, nn.Conv2d)
        per_channel = module.kernel_size[0] * module.kernel_size[1]
        offsets = torch.arange(per_channel)
        return (keep_in[:, None] * per_channel + offsets).reshape(-1)

    def matrix(self, module: nn.Module) -> Tensor:
        weight: Tensor = module.weight  # type: ignore[assignment]
        return weight.detach().reshape(weight.shape[0], -1)

    def set_matrix(self, module: nn.Module, matrix: Tensor) -> None:
        weight: Tensor = module.weight  # type: ignore[assignment]
        with torch.no_grad():
            weight.copy_(matrix.reshape(weight.shape))


_REFITS: list[Refit] = [LinearRefit(), Conv2dRefit()]


def register_refit(refit: Refit) -> None:
    """Let :func:`reconstruct` refit the layers ``refit.supports``."""
    _REFITS.insert(0, refit)


def _refit_of(module: nn.Module) -> Refit | None:
    return next((r for r in _REFITS if r.supports(module)), None)


@dataclass(frozen=True)
class LayerFit:
    """Relative output error ``‖Y_pruned − Y‖² / ‖Y‖²`` of one layer before and after."""

    name: str
    error_before: float
    error_after: float


@dataclass(frozen=True)
class Reconstruction:
    """Layers refitted (in order) and the pruned-input layers left alone, with why."""

    layers: tuple[LayerFit, ...]
    skipped: Mapping[str, str] = field(default_factory=dict)


@dataclass
class _Moments:
    """Running sums for one layer: [X,1]ᵀ[X,1], [X,1]ᵀY, ΣY², Σ x_original."""

    gram: Tensor | None = None
    cross: Tensor | None = None
    target_sq: float = 0.0
    original_sum: Tensor | None = None
    rows: int = 0


def _with_ones(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def _collect(pruned: nn.Module, original: nn.Module, name: str, refit: Refit,
             keep_out: Tensor | None, calib: CalibrationData) -> _Moments:
    moments = _Moments()
    layer, reference = pruned.get_submodule(name), original.get_submodule(name)
    captured: dict[str, Tensor] = {}

    def take_input(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        captured["x"] = refit.columns(module, args[0].detach()).double()

    def take_target(module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        y = refit.outputs(output.detach()).double()
        captured["y"] = y if keep_out is None else y[:, keep_out.to(y.device)]
        captured["x0"] = refit.columns(module, args[0].detach()).double()

    handles = [layer.register_forward_hook(take_input),
               reference.register_forward_hook(take_target)]
    device = model_device(pruned)
    try:
        with torch.no_grad():
            for batch in calib.iterate(device):
                calib.loss(pruned, batch)
                calib.loss(original, batch)
                x, y = _with_ones(captured["x"]), captured["y"]
                moments.gram = x.T @ x if moments.gram is None else moments.gram + x.T @ x
                moments.cross = x.T @ y if moments.cross is None else moments.cross + x.T @ y
                total = captured["x0"].sum(0)
                moments.original_sum = total if moments.original_sum is None else (
                    moments.original_sum + total)
                moments.target_sq += float(y.square().sum())
                moments.rows += int(x.shape[0])
    finally:
        for handle in handles:
            handle.remove()
    return moments


def _error(m: _Moments, solution: Tensor) -> float:
    """‖[X,1] S − Y‖² / ‖Y‖² from the moments alone."""
    assert m.gram is not None and m.cross is not None
    sq = float((solution * (m.gram @ solution)).sum() - 2 * (solution * m.cross).sum())
    return max(0.0, sq + m.target_sq) / max(m.target_sq, 1e-30)


def _current(layer: nn.Module, refit: Refit) -> Tensor:
    """The layer as a [features + 1, out] solution (bias row last; zeros if no bias)."""
    weight = refit.matrix(layer).double()
    bias = getattr(layer, "bias", None)
    last = bias.detach().double() if isinstance(bias, Tensor) else weight.new_zeros(weight.shape[0])
    return torch.cat([weight.T, last[None]], dim=0)


def _solve(m: _Moments, has_bias: bool, ridge: float) -> Tensor:
    assert m.gram is not None and m.cross is not None
    gram, cross = m.gram.clone(), m.cross
    features = gram.shape[0] - 1
    scale = float(gram.diagonal()[:features].mean()) if features else 1.0
    gram[range(features), range(features)] += ridge * max(scale, 1e-12)
    if not has_bias:
        solution = torch.linalg.lstsq(gram[:features, :features], cross[:features]).solution
        return torch.cat([solution, solution.new_zeros(1, solution.shape[1])], dim=0)
    return torch.linalg.lstsq(gram, cross).solution


def reconstruct(
    pruned: nn.Module,
    original: nn.Module,
    plan: Mapping[str, Any],
    data: CalibrationData | Iterable[Any],
    *,
    method: Method = "lstsq",
    batches: int | None = None,
    loss_fn: LossFn | None = None,
    ridge: float = 1e-4,
) -> Reconstruction:
    """Refit, in place, the layers of ``pruned`` whose inputs ``plan`` pruned (``plan`` as
    in ``PruneResult.plan``; ``original`` the unpruned model, unchanged) so their outputs
    match ``original``'s on ``data``. See the module docstring for ``method``; ``ridge``
    scales a Tikhonov term by the mean diagonal of XᵀX. A layer is only replaced when the
    refit lowers its calibration error."""
    check_choice("method", method, ("lstsq", "bias"))
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0:
        raise ConfigError(f"ridge={ridge!r} must be a float >= 0, e.g. ridge=1e-4")
    modules = plan.get("modules") if isinstance(plan, Mapping) else None
    if not isinstance(modules, Mapping):
        raise ConfigError("plan must be a structured pruning plan (PruneResult.plan) with a "
                          "'modules' entry")
    calib = _calibration(data, loss_fn, batches)
    fits: list[LayerFit] = []
    skipped: dict[str, str] = {}
    saved = {k: v.detach().clone() for k, v in pruned.state_dict().items()}
    try:
        with preserved_state(original), preserved_state(pruned):
            original.eval()
            pruned.eval()
            for name, _ in pruned.named_modules():
                keep = modules.get(name, {}).get("keep", {})
                if "in" not in keep:
                    continue
                layer = pruned.get_submodule(name)
                refit = _refit_of(layer)
                if refit is None:
                    skipped[name] = f"no refit for {type(layer).__name__}"
                    continue
                keep_out = torch.tensor(keep["out"]) if "out" in keep else None
                fits.append(_refit_layer(pruned, original, name, refit,
                                         torch.tensor(keep["in"]), keep_out, calib, method,
                                         float(ridge)))
    except BaseException:
        pruned.load_state_dict(saved)  # a failed refit leaves the pruned model as it was
        raise
    return Reconstruction(tuple(fits), skipped)


def _refit_layer(pruned: nn.Module, original: nn.Module, name: str, refit: Refit,
                 keep_in: Tensor, keep_out: Tensor | None, calib: CalibrationData,
                 method: str, ridge: float) -> LayerFit:
    layer, reference = pruned.get_submodule(name), original.get_submodule(name)
    moments = _collect(pruned, original, name, refit, keep_out, calib)
    current = _current(layer, refit)
    before = _error(moments, current)
    bias = getattr(layer, "bias", None)
    has_bias = isinstance(bias, Tensor)
    if method == "bias":
        if not has_bias:
            return LayerFit(name, before, before)
        assert moments.original_sum is not None
        full = refit.matrix(reference).double()
        if keep_out is not None:
            full = full[keep_out]
        removed = torch.ones(full.shape[1], dtype=torch.bool)
        removed[refit.features(reference, keep_in)] = False
        mean = moments.original_sum.to(full.device) / max(1, moments.rows)
        candidate = current.clone()
        candidate[-1] += full[:, removed] @ mean[removed]
    else:
        candidate = _solve(moments, has_bias, ridge).to(current.device)
    after = _error(moments, candidate)
    if not after < before:
        return LayerFit(name, before, before)
    weight = candidate[:-1].T
    refit.set_matrix(layer, weight.to(refit.matrix(layer).dtype))
    if has_bias:
        assert isinstance(bias, Tensor)
        with torch.no_grad():
            bias.copy_(candidate[-1].to(bias.dtype))
    return LayerFit(name, before, after)
