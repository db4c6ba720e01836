"""The IDX reader on small files written here, raw and gzip-compressed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from prunekit.data.idx import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    find_idx_file,
    read_idx,
    read_idx_images,
    read_idx_labels,
)
from prunekit.errors import DataError


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0800 | ndim unless given)."""
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, *, compress: bool, magic: int | None = None) -> Path:
    data = idx_bytes(array, magic)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)


@pytest.mark.parametrize("compress", [False, True])
def test_reads_images_and_labels(tmp_path: Path, images: np.ndarray, compress: bool) -> None:
    labels = np.array([7, 0, 9], dtype=np.uint8)
    img_path = write_idx(tmp_path / "img", images, compress=compress)
    lbl_path = write_idx(tmp_path / "lbl", labels, compress=compress)

    got_images = read_idx_images(img_path)
    got_labels = read_idx_labels(lbl_path)

    assert got_images.dtype == np.uint8 and got_images.shape == (3, 4, 5)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable


def test_header_sizes_match_the_mnist_layout(images: np.ndarray) -> None:
    assert len(idx_bytes(images)) - images.size == 16
    assert len(idx_bytes(np.zeros(3, np.uint8))) - 3 == 8
    assert struct.unpack(">I", idx_bytes(images)[:4])[0] == IMAGES_MAGIC
    assert struct.unpack(">I", idx_bytes(np.zeros(3, np.uint8))[:4])[0] == LABELS_MAGIC


@pytest.mark.parametrize("compress", [False, True])
def test_bad_magic_is_a_data_error(tmp_path: Path, images: np.ndarray, compress: bool) -> None:
    path = write_idx(tmp_path / "bad", images, compress=compress, magic=0x12345678)
    with pytest.raises(DataError, match=r"bad magic number .*2051.*2049"):
        read_idx(path)


def test_swapped_kind_is_a_data_error(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "img", images, compress=False)
    with pytest.raises(DataError, match=r"magic number 2051, expected 2049"):
        read_idx_labels(path)


def test_truncated_file_is_a_data_error(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "short"
    path.write_bytes(idx_bytes(images)[:-7])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_idx_images(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx_images(path)


def test_broken_gzip_is_a_data_error(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:20])
    with pytest.raises(DataError, match="cannot be decompressed"):
        read_idx_images(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nope-idx3-ubyte.gz")


def test_find_idx_file_prefers_gz_and_falls_back_to_raw(tmp_path: Path) -> None:
    assert find_idx_file(tmp_path, "x-idx1-ubyte") is None
    (tmp_path / "x-idx1-ubyte").write_bytes(b"")
    assert find_idx_file(tmp_path, "x-idx1-ubyte") == tmp_path / "x-idx1-ubyte"
    (tmp_path / "x-idx1-ubyte.gz").write_bytes(b"")
    assert find_idx_file(tmp_path, "x-idx1-ubyte") == tmp_path / "x-idx1-ubyte.gz"
