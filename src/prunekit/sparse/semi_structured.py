"""2:4 semi-structured sparsity on NVIDIA GPUs (``torch.sparse.to_sparse_semi_structured``).

Ampere and newer tensor cores multiply a matrix with at most 2 non-zeros in every 4
consecutive entries of a row at up to twice the dense rate. PyTorch stores such weights as
``SparseSemiStructuredTensor`` (CUTLASS or cuSPARSELt) for float16/bfloat16 (and int8,
float32 with limits) on CUDA only. ``semi_structured_violations`` checks a weight against
the layout on any device; ``to_semi_structured`` converts a model's 2:4 ``nn.Linear`` weights
and needs the GPU. The result is for inference (the sparse weights take no gradient).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.errors import ConfigError, PrunekitError
from prunekit.sparse.masks import strip

__all__ = [
    "SEMI_STRUCTURED_MIN_SHAPE",
    "SemiStructuredError",
    "SemiStructuredResult",
    "semi_structured_violations",
    "to_semi_structured",
]

#: dtype → (rows, cols) a weight must be a multiple of (and at least): PyTorch's CUTLASS limits
SEMI_STRUCTURED_MIN_SHAPE: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (32, 64),
    torch.bfloat16: (32, 64),
    torch.float32: (32, 32),
    torch.int8: (16, 128),
}


class SemiStructuredError(PrunekitError, RuntimeError):
    """2:4 semi-structured kernels are not available here (no suitable CUDA GPU)."""


@dataclass(frozen=True)
class SemiStructuredResult:
    """The converted model, the Linear layers now 2:4 semi-structured, and why others aren't."""

    model: nn.Module
    converted: tuple[str, ...]
    skipped: Mapping[str, str]


def semi_structured_violations(
    weight: torch.Tensor, dtype: torch.dtype = torch.float16
) -> list[str]:
    """Why ``weight`` (out_features x in_features) cannot become a 2:4 semi-structured tensor
    of ``dtype``; an empty list means it can. Runs on any device."""
    if dtype not in SEMI_STRUCTURED_MIN_SHAPE:
        raise ConfigError(
            f"dtype={dtype} has no 2:4 semi-structured kernel; choose one of: "
            f"{', '.join(str(d) for d in SEMI_STRUCTURED_MIN_SHAPE)}"
        )
    if weight.dim() != 2:
        return [f"weight has {weight.dim()} dims; 2:4 kernels take a 2-D (Linear) weight"]
    problems = []
    rows, cols = weight.shape
    min_rows, min_cols = SEMI_STRUCTURED_MIN_SHAPE[dtype]
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        problems.append(
            f"shape {(rows, cols)} must be a multiple of (and at least) {(min_rows, min_cols)} "
            f"for {dtype}"
        )
    if cols % 4 == 0:
        per_group = (weight.detach().reshape(rows, cols // 4, 4) != 0).sum(-1)
        bad = int((per_group > 2).sum())
        if bad:
            problems.append(
                f"{bad} of {per_group.numel()} groups of 4 inputs hold more than 2 non-zeros; "
                "prune with pattern='2:4' (prunekit.sparsify(model, pattern='2:4'))"
            )
    else:
        problems.append(f"in_features={cols} is not a multiple of 4")
    return problems


def to_semi_structured(
    model: nn.Module, *, dtype: torch.dtype = torch.float16, inplace: bool = False
) -> SemiStructuredResult:
    """Store every 2:4-sparse ``nn.Linear`` weight of a CUDA model as a semi-structured tensor.

    The model (a copy unless ``inplace``) has its masks baked in and is cast to ``dtype``
    (float16 or bfloat16 recommended; outputs then match the dense model at that dtype's
    precision). Linear layers that break the layout stay dense and are listed in
    ``skipped`` with the reason. Raises SemiStructuredError without a CUDA GPU of compute
    capability 8.0 or newer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _require_gpu(model)
    if dtype not in SEMI_STRUCTURED_MIN_SHAPE:
        semi_structured_violations(torch.zeros(0, 0), dtype)  # raises the ConfigError
    from torch.sparse import to_sparse_semi_structured

    target = model if inplace else copy.deepcopy(model)
    strip(target).to(dtype)
    converted: list[str] = []
    skipped: dict[str, str] = {}
    for name, module in target.named_modules():
        if type(module) is not nn.Linear:
            continue
        problems = semi_structured_violations(module.weight, dtype)
        if problems:
            skipped[name] = "; ".join(problems)
            continue
        sparse = to_sparse_semi_structured(module.weight.detach())
        module.weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    return SemiStructuredResult(target, tuple(converted), skipped)


def _require_gpu(model: nn.Module) -> None:
    fix = ("move the model to the GPU first (model.cuda()); on a CPU use "
           "prunekit.sparse.convert.convert for CPU sparse kernels, or keep the dense model")
    if not torch.cuda.is_available():
        raise SemiStructuredError(
            "to_semi_structured needs a CUDA GPU: PyTorch's 2:4 kernels (CUTLASS, cuSPARSELt) "
            f"run only on NVIDIA tensor cores and no CUDA device is available; {fix}"
        )
    devices = {p.device for p in model.parameters()}
    if any(d.type != "cuda" for d in devices):
        raise SemiStructuredError(
            f"to_semi_structured needs the model on a CUDA device, found parameters on "
            f"{sorted(str(d) for d in devices)}; {fix}"
        )
    for device in devices:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise SemiStructuredError(
                f"{device} has compute capability {major}.{minor}; 2:4 semi-structured "
                "kernels need 8.0 or newer (Ampere, Hopper, ...); keep the dense model there"
            )
