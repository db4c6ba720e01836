"""TensorBoard and W&B loggers: off by default, one flag each, the logged values land."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.schedules import OneShot
from prunekit.train.callbacks import Pruner
from prunekit.train.finetune import FinetuneConfig, finetune
from prunekit.train.logging import sparsity_by_tensor


def _run(cfg: FinetuneConfig) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    data = TensorDataset(torch.randn(32, 8), torch.randint(0, 3, (32,)))
    loader = DataLoader(data, batch_size=8)
    finetune(model, loader, 2, config=cfg, eval_loader=loader, progress=False,
             callbacks=[Pruner(OneShot(0.5))])
    return model


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _run(FinetuneConfig(tensorboard=str(tmp_path)))
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "epoch/eval_accuracy", "epoch/eval_loss",
            "sparsity/0.weight", "sparsity/2.weight", "sparsity/global"} <= set(tags["scalars"])
    assert {"weights/0", "weights/2"} <= set(tags["histograms"])
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))
    assert acc.Scalars("sparsity/global")[-1].value == pytest.approx(
        sparsity_by_tensor(model)["global"])
    assert acc.Scalars("sparsity/global")[-1].value == pytest.approx(0.5, abs=0.01)


def test_loggers_are_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _run(FinetuneConfig())
    assert list(tmp_path.iterdir()) == []


def test_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _run(FinetuneConfig(wandb="prunekit-test"))
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert any(f.suffix == ".wandb" for f in runs[0].iterdir())
    assert os.environ["WANDB_MODE"] == "offline"
