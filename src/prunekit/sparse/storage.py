"""Bitmap encoding of a sparse tensor: a packed presence bitmap plus the kept values.

Layout (the one ``prunekit.save(..., sparse=True)`` writes):

* ``bitmap`` — uint8, ``ceil(numel / 8)`` bytes; element ``i`` of the row-major flattened
  tensor is bit ``i % 8`` of byte ``i // 8`` (little-endian bit order, as
  ``numpy.packbits(..., bitorder="little")``). A set bit means "a value is stored".
* ``values`` — the stored entries in row-major order, 1-D.

By default an entry is stored when its *bits* are not all zero, so ``-0.0`` and NaN are
kept and decoding is bit-exact for every dtype. An explicit ``keep`` mask (a prunekit
weight mask) stores exactly the entries under the mask instead. ``value_dtype`` casts the
values to float16/bfloat16: smaller, but lossy (rounding; float16 overflows past ±65504,
which ``encode`` refuses). The byte count is ``prunekit.sparse.compressed.bitmap_nbytes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import ConfigError
from prunekit.sparse.compressed import bitmap_nbytes

__all__ = [
    "VALUE_DTYPES",
    "EncodedTensor",
    "decode",
    "encode",
    "pack_bits",
    "resolve_value_dtype",
    "unpack_bits",
]

#: value dtypes ``encode`` may cast floating values to (None keeps the tensor's dtype)
VALUE_DTYPES: dict[str, torch.dtype] = {"float16": torch.float16, "bfloat16": torch.bfloat16}

_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_BIT_WEIGHTS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


@dataclass(frozen=True)
class EncodedTensor:
    """A tensor as presence bitmap + stored values; ``shape``/``dtype`` are the original's."""

    bitmap: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of bitmap and values together (what lands on disk, headers aside)."""
        return bitmap_nbytes(self.numel, self.values.numel(), self.values.element_size())

    @property
    def numel(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


def pack_bits(keep: torch.Tensor) -> torch.Tensor:
    """Pack a boolean tensor (flattened row-major) into uint8, little-endian bit order."""
    flat = keep.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(bitmap: torch.Tensor, numel: int) -> torch.Tensor:
    """The flat boolean tensor of ``numel`` entries that ``pack_bits`` packed."""
    if bitmap.dtype != torch.uint8 or bitmap.dim() != 1 or bitmap.numel() != (numel + 7) // 8:
        raise ConfigError(
            f"bitmap must be a 1-D uint8 tensor of {(numel + 7) // 8} bytes for {numel} "
            f"entries, got {bitmap.dtype} of shape {tuple(bitmap.shape)}; the encoding is damaged"
        )
    shifts = torch.arange(8, dtype=torch.uint8, device=bitmap.device)
    bits = (bitmap.view(-1, 1) >> shifts) & 1
    return bits.view(-1)[:numel].to(torch.bool)


def bit_nonzero(tensor: torch.Tensor) -> torch.Tensor:
    """True where an entry's bit pattern is not all zeros (so ``-0.0`` and NaN count)."""
    if tensor.dtype == torch.bool:
        return tensor.clone()
    if tensor.is_complex():
        raise ConfigError(
            f"tensor dtype {tensor.dtype} is not supported by the bitmap encoding; "
            "store complex tensors densely (sparse=False)"
        )
    as_int = tensor.contiguous().view(_SAME_WIDTH_INT[tensor.element_size()])
    return as_int != 0


def encode(
    tensor: torch.Tensor,
    *,
    keep: torch.Tensor | None = None,
    value_dtype: torch.dtype | None = None,
) -> EncodedTensor:
    """Encode ``tensor`` as bitmap + values (see the module docstring for the layout).

    ``keep`` (bool, same shape) chooses the stored entries; by default every entry whose bits
    are not all zero. ``value_dtype`` (float16 or bfloat16, floating tensors only) casts the
    values — lossy; None keeps the dtype and ``decode`` then returns the tensor bit-exactly
    (entries outside ``keep`` come back as +0.0).
    """
    if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided:
        layout = getattr(tensor, "layout", None)
        raise TypeError(
            f"tensor must be a dense (strided) torch.Tensor, got {type(tensor).__name__} "
            f"with layout {layout}; call .to_dense() first"
        )
    data = tensor.detach().contiguous()
    if keep is None:
        keep = bit_nonzero(data)
    elif tuple(keep.shape) != tuple(data.shape) or keep.dtype != torch.bool:
        raise ConfigError(
            f"keep must be a bool tensor of shape {tuple(data.shape)}, got {keep.dtype} of "
            f"shape {tuple(keep.shape)}; pass the weight's prunekit mask"
        )
    values = data[keep.to(data.device)]
    if value_dtype is not None:
        values = _cast_values(values, data.dtype, value_dtype)
    return EncodedTensor(pack_bits(keep), values, tuple(data.shape), data.dtype)


def decode(encoded: EncodedTensor) -> torch.Tensor:
    """The dense tensor ``encoded`` stands for, in its original dtype and shape."""
    keep = unpack_bits(encoded.bitmap, encoded.numel)
    count = int(keep.sum())
    if encoded.values.dim() != 1 or encoded.values.numel() != count:
        raise ConfigError(
            f"the bitmap marks {count} stored entries but values has shape "
            f"{tuple(encoded.values.shape)}; the encoding is damaged"
        )
    out = torch.zeros(encoded.numel, dtype=encoded.dtype, device=encoded.bitmap.device)
    out[keep] = encoded.values.to(encoded.dtype)
    return out.view(encoded.shape)


def resolve_value_dtype(value: object) -> torch.dtype | None:
    """``None``, ``"float16"``/``"bfloat16"`` or the torch dtype itself → a torch dtype."""
    if value is None:
        return None
    if isinstance(value, str) and value in VALUE_DTYPES:
        return VALUE_DTYPES[value]
    if isinstance(value, torch.dtype) and value in VALUE_DTYPES.values():
        return value
    raise ConfigError(
        f"value_dtype={value!r} is not supported; choose one of: None (keep the dtype, "
        f"bit-exact), {', '.join(repr(name) for name in VALUE_DTYPES)} (lossy)"
    )


def _cast_values(
    values: torch.Tensor, dtype: torch.dtype, value_dtype: torch.dtype
) -> torch.Tensor:
    resolve_value_dtype(value_dtype)
    if not dtype.is_floating_point:
        return values  # integer and bool tensors keep their dtype
    cast = values.to(value_dtype)
    if bool(torch.isinf(cast).logical_and(~torch.isinf(values)).any()):
        raise ConfigError(
            f"value_dtype={value_dtype} overflows: some values exceed its range "
            f"(max |value| {float(values.abs().max()):.3g}); use torch.bfloat16 or None"
        )
    return cast
