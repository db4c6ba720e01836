"""CPU sparse kernels for Linear and Conv2d: one small object per backend, in one registry.

A kernel turns a plain ``nn.Linear``/``nn.Conv2d`` (masks already baked in) into a module
that multiplies by the weight held in a torch sparse layout:

* ``csr`` — compressed rows with int32 indices (less index traffic than torch's default
  int64); a single input row goes through ``torch.mv`` (about 2x faster than ``addmm`` at
  batch 1), more rows through ``torch.addmm``.
* ``bsr`` — 4x4 blocks (``block``/N:M-like patterns; mostly dense blocks otherwise).
* ``coo`` — coordinate lists through ``torch.sparse.mm``.

Conv2d (groups=1, zero padding) runs as an im2col product: ``F.unfold`` then the sparse
matrix times the column matrix; unfold costs memory and time, so it pays only at high
sparsity with few output positions — ``convert`` measures instead of guessing.

The modules are for inference: the weight is a buffer (no gradient), ``state_dict`` holds
it in its sparse layout (fine for ``torch.save``, not for safetensors / ``prunekit.save``:
call ``to_dense`` first), and ONNX export does not know the sparse ops.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError

__all__ = [
    "SparseConv2d",
    "SparseKernel",
    "SparseLinear",
    "get_kernel",
    "kernel_names",
    "register_kernel",
    "to_dense_module",
]


class SparseKernel(Protocol):
    """How to hold a weight matrix sparsely; ``convert`` builds and times each candidate."""

    @property
    def name(self) -> str:
        """The registry key, e.g. ``"csr"``."""
        ...

    def unsupported(self, weight: torch.Tensor) -> str | None:
        """Why this 2-D weight cannot use the kernel, or None if it can."""
        ...

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """The 2-D dense weight in the kernel's sparse layout."""
        ...


@contextlib.contextmanager
def _quiet_beta() -> Iterator[None]:
    """Hide torch's "sparse CSR/BSR support is in beta" notice: using it is deliberate."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR).*beta state")
        yield


def _csr32(weight: torch.Tensor) -> torch.Tensor:
    with _quiet_beta():
        csr = weight.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().to(torch.int32), csr.col_indices().to(torch.int32),
            csr.values(), size=csr.shape, check_invariants=True,
        )


@dataclass(frozen=True)
class CsrKernel:
    name: str = "csr"

    def unsupported(self, weight: torch.Tensor) -> str | None:
        return None if weight.numel() < 2**31 else "more than 2**31 entries for int32 indices"

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        return _csr32(weight)


@dataclass(frozen=True)
class BsrKernel:
    name: str = "bsr"
    blocksize: tuple[int, int] = (4, 4)

    def unsupported(self, weight: torch.Tensor) -> str | None:
        rows, cols = weight.shape
        if rows % self.blocksize[0] or cols % self.blocksize[1]:
            return f"shape {tuple(weight.shape)} is not a multiple of blocks {self.blocksize}"
        return None

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        with _quiet_beta():
            bsr = weight.to_sparse_bsr(self.blocksize)
            return torch.sparse_bsr_tensor(
                bsr.crow_indices().to(torch.int32), bsr.col_indices().to(torch.int32),
                bsr.values(), size=bsr.shape, check_invariants=True,
            )


@dataclass(frozen=True)
class CooKernel:
    name: str = "coo"

    def unsupported(self, weight: torch.Tensor) -> str | None:
        return None

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.to_sparse().coalesce()


_KERNELS: dict[str, SparseKernel] = {}


def register_kernel(kernel: SparseKernel, *, replace: bool = False) -> None:
    """Add a kernel under ``kernel.name`` (``replace=True`` to override one)."""
    if kernel.name in _KERNELS and not replace:
        raise ConfigError(
            f"kernel name {kernel.name!r} is already registered; pick another or pass "
            "replace=True"
        )
    if kernel.name == "dense":
        raise ConfigError("kernel name 'dense' is reserved for keeping a layer as it is")
    _KERNELS[kernel.name] = kernel


def kernel_names() -> list[str]:
    """Names of the registered kernels, in registration order."""
    return list(_KERNELS)


def get_kernel(name: str) -> SparseKernel:
    """The kernel registered as ``name``."""
    found = _KERNELS.get(name)
    if found is None:
        raise ConfigError(
            f"backend={name!r} is not a registered sparse kernel; choose from: "
            f"{', '.join(_KERNELS)} (or register one with register_kernel)"
        )
    return found


register_kernel(CsrKernel())
register_kernel(BsrKernel())
register_kernel(CooKernel())


def _sparse_mm(weight: torch.Tensor, bias: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """``rows @ weight.T + bias`` for a sparse ``weight`` (out, in) and dense ``rows`` (n, in)."""
    if rows.shape[0] == 1 and weight.layout == torch.sparse_csr:
        out = torch.mv(weight, rows[0])
        return (out if bias is None else out + bias).unsqueeze(0)
    if weight.layout == torch.sparse_coo:
        out = torch.sparse.mm(weight, rows.t())
        return (out if bias is None else out + bias[:, None]).t()
    if bias is None:
        return (weight @ rows.t()).t()
    return torch.addmm(bias[:, None], weight, rows.t()).t()


class SparseLinear(nn.Module):
    """``nn.Linear`` with its weight in a sparse layout (inference only)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Linear, kernel: SparseKernel) -> None:
        super().__init__()
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        self.backend = kernel.name
        self.register_buffer("weight", kernel.pack(layer.weight.detach()))
        bias = None if layer.bias is None else layer.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        return _sparse_mm(self.weight, self.bias, rows).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, backend={self.backend!r}")


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (groups=1, zero padding) as unfold + sparse matrix product."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, layer: nn.Conv2d, kernel: SparseKernel) -> None:
        super().__init__()
        reason = conv_unsupported(layer)
        if reason is not None:
            raise ConfigError(f"cannot convert {layer}: {reason}; keep the layer dense")
        self.in_channels = layer.in_channels
        self.out_channels = layer.out_channels
        self.kernel_size = _pair(layer.kernel_size)
        self.stride = _pair(layer.stride)
        self.padding = _pair(layer.padding)
        self.dilation = _pair(layer.dilation)
        self.backend = kernel.name
        flat = layer.weight.detach().reshape(layer.out_channels, -1)
        self.register_buffer("weight", kernel.pack(flat))
        bias = None if layer.bias is None else layer.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batched = x.dim() == 4
        if not batched:
            x = x.unsqueeze(0)
        n, _, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)
        positions = cols.shape[-1]
        rows = cols.transpose(1, 2).reshape(n * positions, -1)
        out = _sparse_mm(self.weight, self.bias, rows)  # (n * positions, out_channels)
        h_out = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1)
        w_out = (w + 2 * self.padding[1] - self.dilation[1] * (self.kernel_size[1] - 1) - 1)
        shape = (n, h_out // self.stride[0] + 1, w_out // self.stride[1] + 1, self.out_channels)
        y = out.reshape(shape).permute(0, 3, 1, 2)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, backend={self.backend!r}")


def _pair(value: object) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"expected an int or a pair of ints, got {value!r}")


def conv_unsupported(layer: nn.Conv2d) -> str | None:
    """Why ``layer`` cannot run as unfold + matrix product, or None if it can."""
    if layer.groups != 1:
        return f"groups={layer.groups} (only groups=1 is supported)"
    if layer.padding_mode != "zeros":
        return f"padding_mode={layer.padding_mode!r} (only 'zeros' is supported)"
    if isinstance(layer.padding, str):
        return f"padding={layer.padding!r} (only explicit integer padding is supported)"
    return None


def to_dense_module(module: SparseLinear | SparseConv2d) -> nn.Linear | nn.Conv2d:
    """The plain ``nn.Linear``/``nn.Conv2d`` a sparse module computes (weights densified)."""
    weight = module.weight.to_dense()
    has_bias = module.bias is not None
    dense: nn.Linear | nn.Conv2d
    if isinstance(module, SparseLinear):
        dense = nn.Linear(module.in_features, module.out_features, bias=has_bias,
                          device=weight.device, dtype=weight.dtype)
    else:
        dense = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size,
                          stride=module.stride, padding=module.padding,
                          dilation=module.dilation, bias=has_bias, device=weight.device,
                          dtype=weight.dtype)
    with torch.no_grad():
        dense.weight.copy_(weight.reshape(dense.weight.shape))
        if module.bias is not None and dense.bias is not None:
            dense.bias.copy_(module.bias)
    return dense
