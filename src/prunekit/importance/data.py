"""One way to feed data to a criterion: a loader, ``loss_fn(model, batch)`` and a batch count.

:class:`CalibrationData` bundles the loader (any iterable of batches), the loss (default:
cross-entropy on ``(inputs, targets)`` batches; a multi-task model passes a loss that sums
its heads' losses), how many batches to use, how to accumulate and the mode to run in.
:func:`gradient_statistics` and :func:`collect_inputs` run those batches and leave the
model exactly as they found it: no optimizer step, ``.grad`` never touched (gradients come
from ``torch.autograd.grad``), ``requires_grad`` flags, train/eval flags and buffers (BN
running statistics) put back afterwards.

Accumulation (``accumulate``):

* ``"batch"`` (default): ``g_b`` is the gradient of the loss of batch ``b`` (usually a
  mean over its samples); statistics average over batches: ``E|g| = mean_b |g_b|``,
  ``E[g²] = mean_b g_b²``. Cheap; ``E[g²]`` is then the Fisher of the batch-mean loss,
  about ``1/batch_size`` of the per-sample Fisher with the same ranking up to noise.
* ``"sample"``: every sample of a batch is its own "batch" of one (tensors in the batch
  are sliced along dim 0), so ``E[g²]`` is the per-sample empirical Fisher. One backward
  pass per sample; with BatchNorm use ``mode="eval"`` (a batch of one has no variance).

Sums are kept in float32 or wider (the promoted dtype) and divided once at the end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit._inputs import model_device, move_inputs
from prunekit._weight_norm_grad import weight_grad, weight_normed_tensors
from prunekit.errors import ConfigError, DataError, check_choice

__all__ = [
    "Accumulate",
    "CalibrationData",
    "GradientStats",
    "LossFn",
    "Mode",
    "as_calibration",
    "check_positive",
    "collect_inputs",
    "default_loss",
    "finite_or_zero",
    "gradient_statistics",
    "missing_data_error",
    "preserved_state",
]

LossFn = Callable[[nn.Module, Any], Tensor]
Accumulate = Literal["batch", "sample"]
Mode = Literal["eval", "train", "keep"]
ACCUMULATE: tuple[str, ...] = get_args(Accumulate)
MODES: tuple[str, ...] = get_args(Mode)


def default_loss(model: nn.Module, batch: Any) -> Tensor:
    """``cross_entropy(model(inputs), targets)`` on an ``(inputs, targets)`` batch."""
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise DataError(
            f"the default loss expects (inputs, targets) batches, got a {type(batch).__name__}; "
            f"pass loss_fn=lambda model, batch: ... for other batch layouts"
        )
    return F.cross_entropy(model(batch[0]), batch[1])


@dataclass(frozen=True)
class CalibrationData:
    """Batches to score with: ``loader`` (iterable of batches), ``loss_fn(model, batch)``
    (None: :func:`default_loss`), ``batches`` (how many; None: the whole loader),
    ``accumulate`` ("batch" | "sample", see the module docstring) and ``mode`` ("eval":
    run in eval mode, "train": train mode with BN batch statistics and dropout, "keep":
    as the model is). The model's modes and buffers are restored afterwards either way."""

    loader: Iterable[Any]
    loss_fn: LossFn | None = None
    batches: int | None = None
    accumulate: Accumulate = "batch"
    mode: Mode = "eval"

    def __post_init__(self) -> None:
        if not isinstance(self.loader, Iterable) or isinstance(self.loader, (str, Tensor)):
            raise TypeError(
                f"data must be an iterable of batches (e.g. a DataLoader of (inputs, targets)), "
                f"got {type(self.loader).__name__}"
            )
        if self.loss_fn is not None and not callable(self.loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got "
                            f"{type(self.loss_fn).__name__}")
        if self.batches is not None and (
            isinstance(self.batches, bool) or not isinstance(self.batches, int) or self.batches < 1
        ):
            raise ConfigError(f"calib_batches={self.batches!r} must be a positive int (or None "
                              f"for the whole loader), e.g. calib_batches=8")
        check_choice("accumulate", self.accumulate, ACCUMULATE)
        check_choice("mode", self.mode, MODES)

    @property
    def loss(self) -> LossFn:
        return default_loss if self.loss_fn is None else self.loss_fn

    def iterate(self, device: torch.device) -> Iterator[Any]:
        """The batches to use, moved to ``device``; DataError if there are none."""
        seen = 0
        for raw in islice(self.loader, self.batches):
            seen += 1
            yield move_inputs(raw, device)
        if seen == 0:
            raise DataError("data yielded no batches; pass a loader with at least one batch")


def missing_data_error(criterion: str, caller: str) -> ConfigError:
    """The error every data-aware criterion raises when it is given no data."""
    return ConfigError(
        f"criterion={criterion!r} needs calibration data, but {caller} got data=None; pass "
        f"data=<loader of (inputs, targets) batches> (plus loss_fn=lambda model, batch: ... "
        f"for other batch layouts), e.g. sparsify(model, 0.9, criterion={criterion!r}, "
        f"data=train_loader, calib_batches=8)"
    )


def as_calibration(
    data: CalibrationData | Iterable[Any] | None,
    *,
    criterion: str,
    caller: str,
    loss_fn: LossFn | None = None,
    batches: int | None = None,
) -> CalibrationData:
    """``data`` as CalibrationData (a plain loader is wrapped with ``loss_fn`` and
    ``batches``); a ConfigError naming ``data=`` if it is None."""
    if data is None:
        raise missing_data_error(criterion, caller)
    if isinstance(data, CalibrationData):
        if loss_fn is not None or batches is not None:
            raise ConfigError("pass loss_fn / calib_batches inside CalibrationData(...) or "
                              "with a plain loader, not both")
        return data
    return CalibrationData(data, loss_fn=loss_fn, batches=batches)


@contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Put back every ``requires_grad`` flag, train/eval flag and buffer of ``model`` on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)


def _set_mode(model: nn.Module, mode: str) -> None:
    if mode == "eval":
        model.eval()
    elif mode == "train":
        model.train()


def _samples(batch: Any) -> list[Any]:
    """The samples of a batch, each as a batch of one (tensors sliced along dim 0)."""
    size = _batch_size(batch)
    return [_slice(batch, i) for i in range(size)]


def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        return _batch_size(next(iter(batch.values()))) if batch else 1
    if isinstance(batch, (tuple, list)) and batch:
        return _batch_size(batch[0])
    return 1


def _slice(batch: Any, i: int) -> Any:
    if isinstance(batch, Tensor):
        return batch[i:i + 1] if batch.dim() else batch
    if isinstance(batch, Mapping):
        return {k: _slice(v, i) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_slice(v, i) for v in batch)
    return batch


def _checked_loss(loss_fn: LossFn, model: nn.Module, batch: Any) -> Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise DataError(
            f"loss_fn must return a scalar Tensor, got "
            f"{type(loss).__name__}{'' if not isinstance(loss, Tensor) else tuple(loss.shape)}"
        )
    if not bool(torch.isfinite(loss.detach())):
        raise DataError(f"loss_fn returned a non-finite loss ({float(loss)}); check the data "
                        f"and the model's weights")
    return loss.reshape(())


@dataclass(frozen=True)
class GradientStats:
    """Per-element gradient statistics of one tensor over ``count`` batches (or samples)."""

    mean: Tensor
    abs_mean: Tensor
    sq_mean: Tensor
    count: int


def gradient_statistics(
    model: nn.Module, params: Mapping[str, Tensor], data: CalibrationData
) -> dict[str, GradientStats]:
    """Mean, mean |.| and mean square of ``∂loss/∂param`` for every entry of ``params``
    (name → leaf tensor of ``model``, or a weight that weight norm computes, by its
    attribute's name: ``"conv.weight"``, whose gradient comes from its ``g`` and ``v`` at
    every batch), over the batches of ``data``; the model is unchanged."""
    names, tensors = list(params), list(params.values())
    if not tensors:
        raise ConfigError("gradient_statistics got no tensors to score")
    normed = weight_normed_tensors(model)
    chains = [normed.get(name) for name in names]
    leaves = [t for t, chain in zip(tensors, chains, strict=True) if chain is None]
    for chain in filter(None, chains):  # their g and v, unless scored already
        leaves += [t for t in (chain.original0, chain.original1)
                   if isinstance(t, Tensor) and all(t is not leaf for leaf in leaves)]
    slot = {id(leaf): i for i, leaf in enumerate(leaves)}
    dtype = [torch.promote_types(t.dtype, torch.float32) for t in tensors]
    sums = [torch.zeros(t.shape, dtype=d, device=t.device)
            for t, d in zip(tensors, dtype, strict=True)]
    abs_sums = [s.clone() for s in sums]
    sq_sums = [s.clone() for s in sums]
    count = 0
    with preserved_state(model), torch.enable_grad():
        _set_mode(model, data.mode)
        for leaf in leaves:
            leaf.requires_grad_(True)
        for batch in data.iterate(model_device(model)):
            parts = _samples(batch) if data.accumulate == "sample" else [batch]
            for part in parts:
                loss = _checked_loss(data.loss, model, part)
                if loss.grad_fn is None:
                    raise DataError("loss_fn returned a loss that does not depend on the "
                                    "model's parameters (no grad_fn); compute it from "
                                    "model(...) inside loss_fn")
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                for i, (tensor, normed_by) in enumerate(zip(tensors, chains, strict=True)):
                    grad = grads[slot[id(tensor)]] if normed_by is None else \
                        _normed_grad(normed_by, grads, slot)
                    if grad is None:
                        continue
                    g = grad.detach().to(dtype[i])
                    sums[i] += g
                    abs_sums[i] += g.abs()
                    sq_sums[i] += g.square()
                count += 1
    return {
        name: GradientStats(s / count, a / count, q / count, count)
        for name, s, a, q in zip(names, sums, abs_sums, sq_sums, strict=True)
    }


def _normed_grad(chain: nn.Module, grads: Sequence[Tensor | None], slot: dict[int, int]
                 ) -> Tensor | None:
    g_grad, v_grad = (grads[slot[id(t)]] for t in (chain.original0, chain.original1))
    if v_grad is None:
        return None
    return weight_grad(chain, v_grad.new_zeros(()) if g_grad is None else g_grad,
                       v_grad)


InputHook = Callable[[nn.Module, Tensor], None]


def collect_inputs(
    model: nn.Module, hooks: Mapping[nn.Module, InputHook], data: CalibrationData
) -> int:
    """Run the batches of ``data`` through ``model`` without gradients, calling
    ``hooks[module](module, input)`` with the first input of every call of those modules
    (the forward runs through ``loss_fn``, whose value is ignored). Returns the batch count;
    the model's modes and buffers are restored afterwards."""
    handles = [m.register_forward_hook(_hook(fn)) for m, fn in hooks.items()]
    count = 0
    try:
        with preserved_state(model), torch.no_grad():
            _set_mode(model, data.mode)
            for batch in data.iterate(model_device(model)):
                _checked_loss(data.loss, model, batch)
                count += 1
    finally:
        for handle in handles:
            handle.remove()
    return count


def _hook(fn: InputHook) -> Callable[[nn.Module, Sequence[Any], Any], None]:
    def call(module: nn.Module, args: Sequence[Any], output: Any) -> None:
        if args and isinstance(args[0], Tensor):
            fn(module, args[0].detach())
    return call


def finite_or_zero(stat: Tensor) -> Tensor:
    """NaN/inf entries (from a non-finite gradient) as 0, so they rank as unimportant."""
    return torch.where(torch.isfinite(stat), stat, torch.zeros((), dtype=stat.dtype,
                                                                device=stat.device))


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float >= 0, or a TypeError / ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float >= 0, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name}={value!r} must be a finite float >= 0, e.g. {name}=1.0")
    return float(value)


class DataAwareScoring:
    """Shared by data-aware element criteria: no score without a statistic (a clear error
    naming ``data=``), and a group of elements scores the sum of its entries."""

    name: str

    def score(self, weight: Tensor, *, generator: torch.Generator) -> Tensor:
        raise missing_data_error(self.name, "score()")

    def combine(self, scores: Tensor, dim: int) -> Tensor:
        return scores.sum(dim=dim)
