"""Size of a tensor in a compressed sparse encoding (bitmap + packed non-zeros).

A bitmap costs one bit per element and stores only the non-zero values; it beats
CSR/COO index lists above roughly 3 % density for fp32 and is what sparse storage
formats for pruned weights commonly use. A tensor is never counted larger than dense.
"""

from __future__ import annotations

import torch


def bitmap_nbytes(numel: int, nnz: int, bytes_per_value: int) -> int:
    """Bytes for ``nnz`` values of ``bytes_per_value`` plus a ``numel``-bit presence map."""
    return (numel + 7) // 8 + nnz * bytes_per_value


def compressed_nbytes(tensor: torch.Tensor, bytes_per_value: int | None = None) -> int:
    """Bytes of ``tensor`` in the cheaper of dense and bitmap encodings."""
    per_value = tensor.element_size() if bytes_per_value is None else bytes_per_value
    numel = tensor.numel()
    nnz = int(torch.count_nonzero(tensor.detach()).item())
    return min(numel * per_value, bitmap_nbytes(numel, nnz, per_value))
