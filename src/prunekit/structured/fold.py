"""Fold inference-mode BatchNorm into the conv / linear layer that feeds it (an export step).

``y = γ (W x + b − μ) / √(σ² + ε) + β`` is again an affine layer, ``W' x + b'`` with
``W' = s W`` and ``b' = s (b − μ) + β`` per output channel, ``s = γ / √(σ² + ε)``; the
BatchNorm becomes ``nn.Identity``. Apply it after pruning, to the model you deploy (and to
the dense baseline you compare it with): a folded model no longer matches its pruning plan.

Which pairs fold is decided from one forward pass on the example inputs, not from module
order: a BatchNorm folds into a producer only if the producer ran once, the BatchNorm ran
once, its input *is* the producer's output tensor, and nothing else (another op, the
model's output, a hook) read that tensor; the BatchNorm must track running statistics and
the producer must carry no parametrization (masks: ``pk.strip`` first). Anything else is
left as it was; :func:`foldable_pairs` lists what folds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torch.overrides import TorchFunctionMode

from prunekit._caches import copy_model
from prunekit._inputs import ExampleInputs, model_device, move_inputs, run_model
from prunekit.errors import ConfigError, PruneValidationError
from prunekit.graph.ops import tensors_in
from prunekit.structured.plan import _replace_module

__all__ = ["FoldPair", "fold_batchnorm", "foldable_pairs"]

_PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
              nn.ConvTranspose3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# reads of a tensor's metadata, not its values: folding cannot change what they return
_METADATA = {"size", "dim", "ndimension", "numel", "stride", "is_contiguous", "shape",
             "dtype", "device", "requires_grad", "is_floating_point", "element_size",
             "layout", "ndim", "__len__", "is_cuda", "storage_offset", "data_ptr",
             "nelement", "names", "grad_fn", "is_leaf", "__format__", "__repr__"}


@dataclass(frozen=True)
class FoldPair:
    """A producer (conv / linear) and the BatchNorm folded into it, by qualified name."""

    producer: str
    norm: str


def foldable_pairs(model: nn.Module, example_inputs: ExampleInputs) -> list[FoldPair]:
    """The (producer, BatchNorm) pairs :func:`fold_batchnorm` would fold, in run order."""
    _check_model(model)
    return _find_pairs(model, move_inputs(example_inputs, model_device(model)))[0]


def fold_batchnorm(model: nn.Module, example_inputs: ExampleInputs, *,
                   rtol: float = 1e-5) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every foldable BatchNorm folded into its conv
    or linear producer and replaced by ``nn.Identity``; ``model`` itself is not changed.

    The copy is checked by a forward pass on ``example_inputs``: its outputs must match the
    original's within ``rtol`` of their largest magnitude, else PruneValidationError.
    """
    _check_model(model)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol > 0:
        raise ConfigError(f"rtol={rtol!r} must be a positive float, e.g. rtol=1e-5")
    folded = copy_model(model)
    inputs = move_inputs(example_inputs, model_device(folded))
    pairs, reference = _find_pairs(folded, inputs)
    modules = dict(folded.named_modules())
    with torch.no_grad():
        for pair in pairs:
            _fold_into(modules[pair.producer], modules[pair.norm])
            _replace_module(folded, modules[pair.norm], nn.Identity())  # at every path
        out = run_model(folded, inputs)
    _check_close(reference, out, float(rtol))
    return folded


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [name or "(model)" for name, m in model.named_modules()
                if isinstance(m, _NORMS) and m.training]
    if model.training or training:
        where = f" (BatchNorm in training mode: {', '.join(training[:3])})" if training else ""
        raise ConfigError(
            f"fold_batchnorm needs an eval-mode model{where}: training-mode BatchNorm uses "
            "batch statistics, which no fixed weights can reproduce; call model.eval() first"
        )


class _Readers(TorchFunctionMode):
    """Counts, per tracked tensor, the ops that read its values."""

    def __init__(self, tracked: dict[int, Tensor], reads: dict[int, int]) -> None:
        super().__init__()
        self.tracked = tracked
        self.reads = reads

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "__get__":  # a property such as Tensor.shape or Tensor.data
            name = getattr(getattr(func, "__self__", None), "__name__", name)
        if name not in _METADATA:
            for tensor in tensors_in((args, kwargs)):
                if self.tracked.get(id(tensor)) is tensor:
                    self.reads[id(tensor)] = self.reads.get(id(tensor), 0) + 1
        return func(*args, **kwargs)


def _find_pairs(model: nn.Module, inputs: Any) -> tuple[list[FoldPair], Any]:
    """Run ``model`` once, watching producers, BatchNorms and every op that reads a
    producer's output; return the foldable pairs and the model's output."""
    names = {id(m): n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    produced: dict[int, Tensor] = {}  # id -> producer output (kept alive for the run)
    producer_of: dict[int, str] = {}
    reads: dict[int, int] = {}
    norm_inputs: dict[str, Tensor] = {}
    order: list[str] = []

    def after_producer(module: nn.Module, args: Any, out: Any) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, Tensor):
            produced[id(out)] = out
            producer_of[id(out)] = name

    def before_norm(module: nn.Module, args: Any) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if args and isinstance(args[0], Tensor):
            norm_inputs[name] = args[0]
            order.append(name)

    handles = []
    for module in model.modules():
        if isinstance(module, _PRODUCERS):
            handles.append(module.register_forward_hook(after_producer))
        elif isinstance(module, _NORMS):
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad(), _Readers(produced, reads):
            out = run_model(model, inputs)
    finally:
        for handle in handles:
            handle.remove()
    for tensor in tensors_in(out):  # a producer output returned by the model is read too
        if produced.get(id(tensor)) is tensor:
            reads[id(tensor)] = reads.get(id(tensor), 0) + 1

    modules = dict(model.named_modules())
    pairs: list[FoldPair] = []
    for norm_name in order:
        x = norm_inputs[norm_name]
        producer = producer_of.get(id(x)) if produced.get(id(x)) is x else None
        if producer is None or calls[norm_name] != 1 or calls[producer] != 1:
            continue
        # the BatchNorm's own F.batch_norm is the one read allowed
        if reads.get(id(x), 0) == 1 and _compatible(modules[producer], modules[norm_name], x):
            pairs.append(FoldPair(producer, norm_name))
    return pairs, out


def _compatible(producer: nn.Module, norm: nn.Module, out: Tensor) -> bool:
    """The BatchNorm normalises the producer's output channels (dim 1 of a batched output)
    with fixed statistics, and the producer's weight can be rewritten in place."""
    if getattr(norm, "running_mean", None) is None or hasattr(producer, "parametrizations"):
        return False
    if isinstance(producer, nn.Linear):
        channels, batched_dim = producer.out_features, 2
    else:
        channels = producer.out_channels  # type: ignore[assignment]
        batched_dim = 2 + len(producer.kernel_size)  # type: ignore[arg-type]
    return out.dim() == batched_dim and norm.num_features == channels  # type: ignore[return-value]


def _fold_into(producer: nn.Module, norm: nn.Module) -> None:
    mean, var = norm.running_mean, norm.running_var
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):  # _compatible checked
        raise RuntimeError(f"BatchNorm {norm} has no running statistics to fold")
    weight: Tensor = producer.weight  # type: ignore[assignment]
    transpose = isinstance(producer, nn.modules.conv._ConvTransposeNd)
    groups = int(producer.groups) if transpose else 1  # type: ignore[arg-type]
    w = weight.double()
    if transpose:
        # weight is (in, out / groups, *k); as (in / groups, out, *k) dim 1 is the output
        # channel g * (out / groups) + j, the layout torch's helper scales for transpose=True
        w = w.unflatten(0, (groups, -1)).transpose(0, 1).flatten(1, 2)
    new_weight, new_bias = fuse_conv_bn_weights(  # computed in float64, cast back below
        w, _double(producer.bias), mean.double(), var.double(), float(norm.eps),  # type: ignore[arg-type]
        _double(norm.weight), _double(norm.bias), transpose=transpose)
    if transpose:
        new_weight = new_weight.unflatten(1, (groups, -1)).transpose(0, 1).flatten(0, 1)
    producer.weight = nn.Parameter(new_weight.to(weight.dtype),
                                   requires_grad=weight.requires_grad)
    producer.bias = nn.Parameter(new_bias.to(weight.dtype), requires_grad=weight.requires_grad)


def _double(tensor: Any) -> Tensor | None:
    return tensor.double() if isinstance(tensor, Tensor) else None


def _check_close(reference: Any, out: Any, rtol: float) -> None:
    ref, new = list(tensors_in(reference)), list(tensors_in(out))
    shapes = [tuple(t.shape) for t in ref], [tuple(t.shape) for t in new]
    if shapes[0] != shapes[1]:
        raise PruneValidationError(f"folding changed the output shapes from {shapes[0]} to "
                                   f"{shapes[1]}; your model is unchanged")
    for i, (a, b) in enumerate(zip(ref, new, strict=True)):
        if not a.is_floating_point():
            continue
        scale = float(a.abs().max()) if a.numel() else 0.0
        err = float((a - b).abs().max()) if a.numel() else 0.0
        if not math.isfinite(err) or err > rtol * max(scale, 1e-12):
            raise PruneValidationError(
                f"the folded model's output {i} differs from the original by {err:.3g} "
                f"(largest magnitude {scale:.3g}, rtol={rtol}); your model is unchanged. "
                "Report the architecture, or pass a larger rtol=... if this is rounding"
            )
