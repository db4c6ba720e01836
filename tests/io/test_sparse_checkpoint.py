"""save(..., sparse=True): bit-exact round trips, bytes on disk by the formula, old files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from prunekit.errors import ConfigError
from prunekit.io.checkpoint import (
    FORMAT_VERSION,
    SPARSE_FORMAT_VERSION,
    CheckpointError,
    load,
    load_manifest,
    save,
)
from prunekit.sparse.compressed import bitmap_nbytes
from prunekit.sparse.masks import masked_tensors, strip
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5


def _lenet(sparsity: float, pattern: str = "unstructured") -> LeNet5:
    torch.manual_seed(0)
    model = LeNet5().eval()
    if pattern == "kernel":
        sparsify(model, sparsity, pattern=pattern, layers=(nn.Conv2d,))
    elif pattern == "2:4":
        sparsify(model, pattern=pattern, layers=(nn.Linear,))  # conv in-channels: 1, 6
    elif sparsity > 0:
        sparsify(model, sparsity, pattern=pattern)
    return model


def _data_bytes(path: Path) -> int:
    """Bytes of tensor data in a safetensors file (file size less the length and header)."""
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - header_len


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize(
    ("sparsity", "pattern"),
    [(0.0, "unstructured"), (0.5, "unstructured"), (0.9, "unstructured"),
     (0.99, "unstructured"), (0.5, "2:4"), (0.5, "kernel"), (0.9, "kernel")],
)
def test_masked_round_trip_is_bit_exact(
    tmp_path: Path, lenet_input: torch.Tensor, sparsity: float, pattern: str
) -> None:
    model = _lenet(sparsity, pattern)
    save(model, tmp_path / "ckpt", sparse=True)
    restored = load(tmp_path / "ckpt", LeNet5().eval())
    assert masked_tensors(restored).keys() == masked_tensors(model).keys()
    for name, mask in masked_tensors(model).items():
        assert torch.equal(masked_tensors(restored)[name], mask)
    for (name, p), (_, q) in zip(model.named_parameters(), restored.named_parameters(),
                                 strict=True):
        # pruned entries of `original` are stored as zeros; everything the model uses is exact
        mask = masked_tensors(model).get(name.replace("parametrizations.", "").replace(
            ".original", ""))
        assert torch.equal(p if mask is None else p * mask, q), name
    assert torch.equal(model(lenet_input), restored(lenet_input))


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_stripped_round_trip_is_bit_exact(tmp_path: Path, sparsity: float) -> None:
    model = strip(_lenet(sparsity))
    with torch.no_grad():
        model.fc3.weight[0, 0] = -0.0  # a negative zero survives
    save(model, tmp_path / "ckpt", sparse=True)
    restored = load(tmp_path / "ckpt", LeNet5().eval())
    _assert_same_weights(model, restored)
    assert torch.signbit(restored.fc3.weight[0, 0])


@pytest.mark.parametrize(("sparsity", "target"), [(0.9, 0.2), (0.95, 0.12)])
def test_bytes_on_disk_follow_the_formula(tmp_path: Path, sparsity: float, target: float) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    sparsify(model, sparsity)
    save(model, tmp_path / "sparse", sparse=True)
    save(model, tmp_path / "dense")
    expected = 0
    for module in (model[0], model[2]):
        numel = module.weight.numel()
        kept = int(masked_tensors(module)["weight"].sum())
        expected += bitmap_nbytes(numel, kept, 4) + module.bias.numel() * 4
    file = tmp_path / "sparse" / "model.safetensors"
    assert _data_bytes(file) == expected
    dense_fp32 = sum(p.numel() * 4 for p in model.parameters())
    assert file.stat().st_size <= target * dense_fp32
    assert (tmp_path / "dense" / "model.safetensors").stat().st_size > dense_fp32


def test_half_values_halve_the_values(tmp_path: Path, lenet_input: torch.Tensor) -> None:
    model = strip(_lenet(0.9))
    save(model, tmp_path / "fp32", sparse=True)
    save(model, tmp_path / "fp16", sparse=True, value_dtype="float16")
    stored = load_file(str(tmp_path / "fp16" / "model.safetensors"))
    assert stored["fc1.weight.__values"].dtype == torch.float16
    assert stored["fc1.bias"].dtype == torch.float32, "dense tensors are never cast"
    assert _data_bytes(tmp_path / "fp16" / "model.safetensors") < 0.7 * _data_bytes(
        tmp_path / "fp32" / "model.safetensors")
    restored = load(tmp_path / "fp16", LeNet5().eval())
    assert restored.fc1.weight.dtype == torch.float32
    torch.testing.assert_close(restored(lenet_input), model(lenet_input), rtol=1e-2, atol=1e-2)


def test_dense_tensors_stay_dense_and_old_checkpoints_load(
    tmp_path: Path, lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    save(lenet, tmp_path / "dense", sparse=True)  # nothing is sparse: nothing is encoded
    manifest = load_manifest(tmp_path / "dense")
    assert manifest["format_version"] == FORMAT_VERSION and "sparse" not in manifest
    restored = load(tmp_path / "dense", LeNet5().eval())
    _assert_same_weights(lenet, restored)
    save(_lenet(0.9), tmp_path / "sparse", sparse=True)
    assert load_manifest(tmp_path / "sparse")["format_version"] == SPARSE_FORMAT_VERSION


def test_errors(tmp_path: Path) -> None:
    model = _lenet(0.9)
    with pytest.raises(ConfigError, match="value_dtype='float16' applies only"):
        save(model, tmp_path / "a", value_dtype="float16")
    with pytest.raises(ConfigError, match="value_dtype"):
        save(model, tmp_path / "a", sparse=True, value_dtype="int4")
    with pytest.raises(TypeError, match="sparse must be True or False"):
        save(model, tmp_path / "a", sparse="yes")  # type: ignore[arg-type]
    assert not (tmp_path / "a").exists()

    out = save(model, tmp_path / "ckpt", sparse=True)
    manifest_path = out / "prunekit.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["sparse"]["fc1.parametrizations.weight.original"]["shape"] = "big"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="field 'sparse'"):
        load(out, LeNet5())

    out = save(model, tmp_path / "ckpt2", sparse=True)
    weights = load_file(str(out / "model.safetensors"))
    del weights["fc1.parametrizations.weight.original.__values"]
    from safetensors.torch import save_file

    save_file(weights, str(out / "model.safetensors"))
    with pytest.raises(CheckpointError, match="lacks"):
        load(out, LeNet5())


def test_a_converted_model_is_refused_with_the_fix(tmp_path: Path) -> None:
    from prunekit.sparse.convert import convert, to_dense

    model = _lenet(0.9)
    converted = convert(model, torch.randn(1, 1, 32, 32), cost=lambda c: float(
        c.backend == "dense") + 0.1, min_sparsity=0).model
    with pytest.raises(CheckpointError, match="to_dense"):
        save(converted, tmp_path / "ckpt", sparse=True)
    assert not (tmp_path / "ckpt").exists()
    save(to_dense(converted), tmp_path / "ckpt", sparse=True)
    restored = load(tmp_path / "ckpt", LeNet5().eval())
    _assert_same_weights(strip(model), restored)
