"""Bitmap + values encoding: bit-exact round trips, the byte formula, lossy value dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.sparse.compressed import bitmap_nbytes, compressed_nbytes
from prunekit.sparse.storage import (
    decode,
    encode,
    pack_bits,
    resolve_value_dtype,
    unpack_bits,
)


def _sparse(shape: tuple[int, ...], sparsity: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    data = torch.randn(shape, generator=gen)
    data[torch.rand(shape, generator=gen) < sparsity] = 0.0
    return data


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bytes(
        a.contiguous().view(torch.uint8).numpy()
    ) == bytes(b.contiguous().view(torch.uint8).numpy())


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("shape", [(7,), (13, 29), (6, 3, 5, 5)])
def test_round_trip_is_bit_exact(sparsity: float, shape: tuple[int, ...]) -> None:
    tensor = _sparse(shape, sparsity)
    enc = encode(tensor)
    assert enc.bitmap.dtype == torch.uint8 and enc.bitmap.numel() == (tensor.numel() + 7) // 8
    assert enc.values.numel() == int(torch.count_nonzero(tensor))
    assert _bits_equal(decode(enc), tensor)
    assert enc.nbytes == bitmap_nbytes(tensor.numel(), enc.values.numel(), 4)
    assert min(enc.nbytes, tensor.numel() * 4) == compressed_nbytes(tensor)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.int64,
                                   torch.int8, torch.bool])
def test_other_dtypes_round_trip(dtype: torch.dtype) -> None:
    tensor = (_sparse((9, 11), 0.7) * 5).to(dtype)
    out = decode(encode(tensor))
    assert _bits_equal(out, tensor)


def test_negative_zero_and_nan_are_kept() -> None:
    tensor = torch.tensor([0.0, -0.0, float("nan"), 1.5, 0.0, float("-inf")])
    enc = encode(tensor)
    assert enc.values.numel() == 4
    assert _bits_equal(decode(enc), tensor)


def test_bit_order_is_numpy_little() -> None:
    keep = torch.rand(101, generator=torch.Generator().manual_seed(2)) > 0.5
    expected = np.packbits(keep.numpy(), bitorder="little")
    assert np.array_equal(pack_bits(keep).numpy(), expected)
    assert torch.equal(unpack_bits(pack_bits(keep), 101), keep)


def test_keep_mask_stores_entries_under_the_mask() -> None:
    original = torch.randn(8, 16)
    keep = torch.rand(8, 16) > 0.8
    enc = encode(original, keep=keep)
    assert enc.values.numel() == int(keep.sum())
    assert torch.equal(decode(enc), original * keep)
    assert torch.equal(unpack_bits(enc.bitmap, enc.numel).view(8, 16), keep)


@pytest.mark.parametrize("value_dtype", [torch.float16, torch.bfloat16])
def test_half_values_are_lossy_but_close(value_dtype: torch.dtype) -> None:
    tensor = _sparse((64, 64), 0.9)
    enc = encode(tensor, value_dtype=value_dtype)
    assert enc.values.dtype == value_dtype
    assert enc.nbytes == bitmap_nbytes(tensor.numel(), enc.values.numel(), 2)
    out = decode(enc)
    assert out.dtype == torch.float32
    assert torch.equal(out == 0, tensor == 0)
    torch.testing.assert_close(out, tensor, rtol=1e-2, atol=1e-2)


def test_half_values_keep_integer_tensors() -> None:
    tensor = torch.arange(10)
    assert _bits_equal(decode(encode(tensor, value_dtype=torch.float16)), tensor)


def test_errors_name_the_argument() -> None:
    with pytest.raises(ConfigError, match="value_dtype"):
        resolve_value_dtype("int8")
    assert resolve_value_dtype("bfloat16") is torch.bfloat16
    assert resolve_value_dtype(None) is None
    with pytest.raises(ConfigError, match="overflows"):
        encode(torch.tensor([1e6, 0.0]), value_dtype=torch.float16)
    with pytest.raises(ConfigError, match="keep must be a bool tensor"):
        encode(torch.ones(3), keep=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match="dense"):
        encode(torch.eye(3).to_sparse())
    with pytest.raises(ConfigError, match="complex"):
        encode(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(ConfigError, match="damaged"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 100)
