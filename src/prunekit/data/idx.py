"""Reading IDX files, the format MNIST and Fashion-MNIST ship in (raw or gzip-compressed).

Header: a 4-byte big-endian magic ``0x0000 <dtype code> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data. Images use magic 2051 (ubyte, 3 dims: N, rows, cols; 16-byte
header), labels 2049 (ubyte, 1 dim: N; 8-byte header).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from prunekit.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

_GZIP_SIGNATURE = b"\x1f\x8b"
# IDX dtype code → numpy dtype (multi-byte types are big-endian in the file)
_DTYPES: dict[int, str] = {
    0x08: "u1",
    0x09: "i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {str(path)!r} does not exist") from None
    if raw[:2] == _GZIP_SIGNATURE:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(
                f"IDX file {str(path)!r} looks gzip-compressed but cannot be decompressed "
                f"({exc}); re-download or re-install it"
            ) from exc
    return raw


def read_idx(path: str | Path, *, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw or ``.gz``, detected from its content) into a numpy array.

    ``expected_magic`` (e.g. :data:`IMAGES_MAGIC`) makes a file of another kind an error.
    Raises DataError for a missing, truncated or malformed file.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"IDX file {str(path)!r} is {len(data)} bytes, too short for a header")
    (magic,) = struct.unpack(">I", data[:4])
    dtype_code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if magic >> 16 != 0 or dtype_code not in _DTYPES or ndim == 0:
        raise DataError(
            f"IDX file {str(path)!r} has bad magic number {magic} (0x{magic:08x}); "
            f"expected {IMAGES_MAGIC} for images or {LABELS_MAGIC} for labels. "
            "Is it an MNIST-format file, and not truncated or HTML from a failed download?"
        )
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"IDX file {str(path)!r} has magic number {magic}, expected {expected_magic}; "
            "images (2051) and labels (2049) may be swapped"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(f"IDX file {str(path)!r} is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = np.dtype(_DTYPES[dtype_code])
    expected_len = header_len + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected_len:
        raise DataError(
            f"IDX file {str(path)!r} holds {len(data)} bytes but its header {tuple(shape)} "
            f"implies {expected_len}; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx_images(path: str | Path) -> np.ndarray:
    """Read an IDX image file (magic 2051) as a uint8 array of shape (N, rows, cols)."""
    return read_idx(path, expected_magic=IMAGES_MAGIC)


def read_idx_labels(path: str | Path) -> np.ndarray:
    """Read an IDX label file (magic 2049) as a uint8 array of shape (N,)."""
    return read_idx(path, expected_magic=LABELS_MAGIC)


def find_idx_file(data_dir: Path, stem: str) -> Path | None:
    """``data_dir/stem.gz`` or ``data_dir/stem`` (gz preferred); None if neither exists."""
    for candidate in (data_dir / f"{stem}.gz", data_dir / stem):
        if candidate.is_file():
            return candidate
    return None
