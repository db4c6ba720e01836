"""A safetensors checkpoint read and written one tensor at a time, with plain file I/O.

``safetensors.safe_open`` returns tensors backed by a private mapping of the whole shard
file: the pages a tensor touches count in the process's resident set for as long as any
tensor of that file lives, and the writable mapping counts against ``RLIMIT_DATA`` at the
size of the whole file. Streaming a checkpoint larger than RAM wants the opposite, so here
a tensor is read with ``readinto`` into memory it owns (the page cache is not ours), and a
shard is written tensor by tensor from memory views, or by copying a byte range of a
source shard without decoding it. The format: an 8-byte little-endian header length, a
JSON header ``{name: {dtype, shape, data_offsets}}`` (offsets relative to the data that
follows, padded to 8 bytes with spaces), then the tensors' raw bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch

from prunekit.errors import DataError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}
_COPY_CHUNK = 16 << 20


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: its shard file and the absolute byte range in it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path
    start: int
    nbytes: int


def read_header(file: Path) -> tuple[dict[str, TensorEntry], dict[str, str]]:
    """The tensors of one ``.safetensors`` file (from its header only) and its metadata."""
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise DataError(f"{str(file)!r} is not a safetensors file (shorter than 8 bytes)")
        (size,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(fh.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{str(file)!r} has no readable safetensors header: {exc}") from exc
    metadata = header.pop("__metadata__", None) or {}
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        if info["dtype"] not in _DTYPES:
            raise DataError(f"{str(file)!r}: tensor {name!r} has unsupported dtype {info['dtype']}")
        expected = math.prod(info["shape"]) * _DTYPES[info["dtype"]].itemsize
        if end - begin != expected:
            raise DataError(
                f"{str(file)!r}: tensor {name!r} spans {end - begin} bytes, but its dtype and "
                f"shape {info['shape']} need {expected}; the file is corrupt"
            )
        entries[name] = TensorEntry(
            name, info["dtype"], tuple(info["shape"]), file, 8 + size + begin, end - begin
        )
    return entries, metadata


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors shards of a Hugging Face checkpoint directory (index or single file)."""
    index = directory / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        files = [directory / name for name in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(
                f"{str(index)!r} names shards that are not in the directory: {missing[:3]}; "
                "copy the whole checkpoint"
            )
        return files
    if (directory / SINGLE_FILE).is_file():
        return [directory / SINGLE_FILE]
    found = sorted(directory.glob("*.safetensors"))
    if found:
        return found
    others = sorted(p.name for p in directory.glob("*") if p.suffix in {".bin", ".pt", ".pth"})
    hint = (
        f" (found {others[:3]}: load and save_pretrained it once to convert to safetensors)"
        if others
        else ""
    )
    raise DataError(
        f"src_dir={str(directory)!r} holds no {SINGLE_FILE}, {INDEX_FILE} or other "
        f".safetensors file{hint}; streaming reads safetensors checkpoints only"
    )


def read_checkpoint(directory: Path) -> dict[str, TensorEntry]:
    """Every tensor of a checkpoint directory by name, from the shard headers."""
    entries: dict[str, TensorEntry] = {}
    for file in checkpoint_files(directory):
        found, _ = read_header(file)
        entries.update(found)
    return entries


def load_tensors(entries: Iterable[TensorEntry]) -> dict[str, torch.Tensor]:
    """Read the given tensors into memory of their own (each shard opened once, then closed)."""
    by_file: dict[Path, list[TensorEntry]] = {}
    for entry in entries:
        by_file.setdefault(entry.file, []).append(entry)
    out: dict[str, torch.Tensor] = {}
    for file, group in by_file.items():
        with open(file, "rb", buffering=0) as fh:
            for entry in sorted(group, key=lambda e: e.start):
                tensor = torch.empty(entry.shape, dtype=_DTYPES[entry.dtype])
                if entry.nbytes:
                    fh.seek(entry.start)
                    view = tensor.view(-1).view(torch.uint8).numpy().data
                    if fh.readinto(view) != entry.nbytes:
                        raise DataError(f"{str(file)!r} ends inside tensor {entry.name!r}")
                out[entry.name] = tensor
    return out


def tensor_bytes(entries: Iterable[TensorEntry]) -> int:
    """Total data bytes of ``entries`` (what the index's ``total_size`` counts)."""
    return sum(e.nbytes for e in entries)


def write_shard(file: Path, tensors: Mapping[str, torch.Tensor | TensorEntry]) -> int:
    """Write one shard from in-memory tensors and/or byte ranges of source shards; its size."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, item in tensors.items():
        if isinstance(item, TensorEntry):
            code, shape, nbytes = item.dtype, list(item.shape), item.nbytes
        else:
            if item.dtype not in _CODES:
                raise DataError(f"tensor {name!r} has dtype {item.dtype}, which safetensors lacks")
            code, shape = _CODES[item.dtype], list(item.shape)
            nbytes = item.numel() * item.element_size()
        header[name] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (math.ceil(len(raw) / 8) * 8 - len(raw))
    with open(file, "wb") as out:
        out.write(struct.pack("<Q", len(raw)))
        out.write(raw)
        for item in tensors.values():
            if isinstance(item, TensorEntry):
                _copy_range(item, out)
            elif item.numel():
                flat = item.detach().contiguous().view(-1)
                out.write(flat.view(torch.uint8).numpy().data)
    return 8 + len(raw) + offset


def _copy_range(entry: TensorEntry, out: BinaryIO) -> None:
    with open(entry.file, "rb") as src:
        src.seek(entry.start)
        left = entry.nbytes
        while left:
            chunk = src.read(min(left, _COPY_CHUNK))
            if not chunk:
                raise DataError(f"{str(entry.file)!r} ends inside tensor {entry.name!r}")
            out.write(chunk)
            left -= len(chunk)


def shard_name(index: int, total: int) -> str:
    """Hugging Face's shard file name, e.g. ``model-00002-of-00009.safetensors``."""
    return f"model-{index:05d}-of-{total:05d}.safetensors"


def write_index(directory: Path, weight_map: Mapping[str, str], total_size: int) -> None:
    """``model.safetensors.index.json`` as ``save_pretrained`` writes it."""
    index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
