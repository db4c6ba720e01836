"""CLI options for data-aware criteria: ``--dataset``, ``--data-dir``, ``--calib-batches``."""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from prunekit.data.vision import DATASETS, load_dataset
from prunekit.errors import ConfigError
from prunekit.importance import criterion_names, get_criterion
from prunekit.importance.data import CalibrationData
from prunekit.importance.group import get_group_criterion, group_criterion_names


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that feed calibration batches to a data-aware criterion."""
    parser.add_argument("--dataset", choices=DATASETS,
                        help="calibration data for data-aware criteria (train split)")
    parser.add_argument("--data-dir", help="directory of MNIST-format IDX files for --dataset")
    parser.add_argument("--calib-batches", type=int, default=None,
                        help="calibration batches for data-aware criteria (default 8)")
    parser.add_argument("--calib-batch-size", type=int, default=64,
                        help="examples per calibration batch (default 64)")


def needs_data(criterion: str) -> bool:
    """Whether the element or group criterion called ``criterion`` needs calibration data."""
    if criterion in criterion_names():
        return get_criterion(criterion).needs_data
    if criterion in group_criterion_names():
        return get_group_criterion(criterion).needs_data
    return get_criterion(criterion).needs_data  # raises, listing the known names


def calibration_from_args(
    args: argparse.Namespace, criterion: str, flag: str = "--criterion"
) -> CalibrationData | None:
    """CalibrationData from ``--dataset`` when ``criterion`` (an element criterion for
    ``sparsify`` or a group criterion for ``prune``) needs data, else None; a ConfigError
    naming the missing or superfluous flag otherwise."""
    needs = needs_data(criterion)
    given = [f for f, v in (("--dataset", args.dataset), ("--calib-batches", args.calib_batches))
             if v is not None]
    if not needs:
        if given:
            verb = "is" if len(given) == 1 else "are"
            raise ConfigError(f"{' and '.join(given)} {verb} only for data-aware criteria "
                              f"(taylor, fisher, snip, grad, wlg, activation), not "
                              f"{flag} {criterion}; drop them")
        return None
    if args.dataset is None:
        raise ConfigError(
            f"{flag} {criterion} needs calibration data: pass --dataset "
            f"{'|'.join(DATASETS)} (its train split, 1x32x32 images) and optionally "
            f"--calib-batches N; for other data use the Python API (sparsify(..., data=loader))"
        )
    if args.calib_batch_size < 1:
        raise ConfigError(f"--calib-batch-size {args.calib_batch_size}: must be >= 1")
    split = load_dataset(args.dataset, data_dir=args.data_dir, seed=args.seed)
    loader = DataLoader(split.train, batch_size=args.calib_batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    batches = 8 if args.calib_batches is None else args.calib_batches
    return CalibrationData(loader, batches=batches)
