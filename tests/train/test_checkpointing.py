"""finetune: per-epoch atomic checkpoints, resume equal to an uninterrupted run, early stopping."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.schedules import PolynomialDecay, RigL
from prunekit.sparse.masks import masked_tensors
from prunekit.train.callbacks import Callback, Pruner
from prunekit.train.checkpointing import ResumeError, read_checkpoint
from prunekit.train.finetune import FinetuneConfig, finetune


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))


def _loader() -> DataLoader[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(5))


class _Interrupt(Callback):
    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float] | None = None) -> None:
        if epoch == 2:
            raise KeyboardInterrupt


def _gradual() -> Pruner:
    return Pruner(PolynomialDecay(0.0, 0.8, begin_step=0, end_step=18, frequency=3))


def _rigl() -> Pruner:
    return Pruner(RigL(0.8, end_step=22, update_every=3, alpha=0.5))


@pytest.mark.parametrize("make_pruner", [_gradual, _rigl], ids=["gradual", "rigl"])
def test_resume_reaches_the_uninterrupted_weights(tmp_path: Path, make_pruner: Any) -> None:
    _pruner = make_pruner
    cfg = FinetuneConfig(optimizer="adamw", lr=3e-3, weight_decay=0.05, seed=7,
                         checkpoint_dir=str(tmp_path / "a"))
    reference = _model()
    full = finetune(reference, _loader(), 4, config=cfg, eval_loader=_loader(),
                    callbacks=[_pruner()], progress=False)

    cfg_b = FinetuneConfig(optimizer="adamw", lr=3e-3, weight_decay=0.05, seed=7,
                           checkpoint_dir=str(tmp_path / "b"))
    with pytest.raises(KeyboardInterrupt):
        finetune(_model(), _loader(), 4, config=cfg_b, eval_loader=_loader(),
                 callbacks=[_pruner(), _Interrupt()], progress=False)
    assert read_checkpoint(tmp_path / "b" / "last.pt")["epoch"] == 1
    resumed = _model()  # a fresh, unmasked model: masks come from the checkpoint
    history = finetune(resumed, _loader(), 4, config=cfg_b, eval_loader=_loader(),
                       callbacks=[_pruner()], progress=False, resume=tmp_path / "b" / "last.pt")

    assert [e.epoch for e in history.epochs] == [1, 2, 3, 4]
    assert history.train_loss == pytest.approx(full.train_loss, abs=1e-6)
    ref_state, new_state = reference.state_dict(), resumed.state_dict()
    assert ref_state.keys() == new_state.keys()
    for key, value in ref_state.items():
        assert torch.equal(value, new_state[key]), key
    assert masked_tensors(resumed).keys() == masked_tensors(reference).keys()
    assert not list(Path(tmp_path / "b").glob("*.tmp"))  # atomic: no leftovers


def test_checkpoint_is_loadable_with_weights_only(tmp_path: Path) -> None:
    finetune(_model(), _loader(), 1, config=FinetuneConfig(checkpoint_dir=str(tmp_path)),
             progress=False)
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "rng_cpu", "epoch", "step"} <= payload.keys()
    assert payload["step"] == 6


def test_early_stopping_after_patience() -> None:
    # lr tiny: accuracy never improves after the first epoch
    cfg = FinetuneConfig(lr=1e-12, patience=2, cosine=False)
    history = finetune(_model(), _loader(), 10, config=cfg, eval_loader=_loader(),
                       progress=False)
    assert len(history.epochs) == 3


def test_resume_errors(tmp_path: Path) -> None:
    with pytest.raises(ResumeError, match="not a checkpoint file"):
        finetune(_model(), _loader(), 1, resume=tmp_path / "missing.pt", progress=False)
    torch.save({"format": "other"}, tmp_path / "x.pt")
    with pytest.raises(ResumeError, match="not a prunekit training checkpoint"):
        finetune(_model(), _loader(), 1, resume=tmp_path / "x.pt", progress=False)
    finetune(_model(), _loader(), 1, config=FinetuneConfig(checkpoint_dir=str(tmp_path)),
             progress=False)
    other = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 3))
    with pytest.raises(ResumeError, match="does not fit"):
        finetune(other, _loader(), 2, resume=tmp_path / "last.pt", progress=False)
    with pytest.raises(ConfigError, match="eval_loader"):
        finetune(_model(), _loader(), 1, config=FinetuneConfig(patience=1), progress=False)
    with pytest.raises(TypeError, match="callbacks"):
        finetune(_model(), _loader(), 1, callbacks=[object()], progress=False)  # type: ignore[list-item]
