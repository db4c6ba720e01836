"""finetune / evaluate: masks hold, seeding, modes, history, progress output, errors."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prunekit.train.finetune as finetune_module
from prunekit.errors import ConfigError, DataError
from prunekit.sparse.masks import apply_mask, get_mask
from prunekit.train.finetune import (
    EvalResult,
    FinetuneConfig,
    History,
    evaluate,
    finetune,
)


def _blobs(n: int = 256, seed: int = 0) -> TensorDataset:
    """Four linearly separable Gaussian blobs in 16-d."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    centers = torch.randn(4, 16, generator=g) * 3
    return TensorDataset(centers[labels] + torch.randn(n, 16, generator=g), labels)


def _loader(ds: TensorDataset, batch_size: int = 32, shuffle: bool = True) -> DataLoader[Any]:
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle)


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4))


@pytest.mark.parametrize(
    "config",
    [
        FinetuneConfig(lr=0.05, optimizer="sgd", momentum=0.9, weight_decay=1e-3, seed=0),
        FinetuneConfig(lr=0.01, optimizer="adam", weight_decay=1e-3, seed=0),
        FinetuneConfig(lr=0.01, optimizer="adamw", weight_decay=1e-2, cosine=False, seed=0),
    ],
    ids=["sgd-momentum-wd", "adam-l2", "adamw"],
)
def test_masked_entries_stay_zero_and_the_rest_train(config: FinetuneConfig) -> None:
    model = _model()
    layer = model[0]
    assert isinstance(layer, nn.Linear)
    mask = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(1)) > 0.5
    apply_mask(layer, "weight", mask)
    before = layer.weight.detach().clone()

    finetune(model, _loader(_blobs()), 2, config=config, progress=False)

    after = layer.weight.detach()
    assert get_mask(layer, "weight") is not None
    assert torch.all(after[~mask] == 0.0)  # exactly zero, not merely small
    assert torch.all(after[mask] != before[mask])


def test_training_reduces_loss_and_history_is_complete() -> None:
    model, ds = _model(), _blobs()
    loader = _loader(ds)
    config = FinetuneConfig(lr=0.05, seed=0)
    start = evaluate(model, _loader(ds, shuffle=False))

    history = finetune(model, loader, 3, config=config, eval_loader=_loader(ds), progress=False)

    assert isinstance(history, History) and len(history.epochs) == 3
    assert [e.epoch for e in history.epochs] == [1, 2, 3]
    assert len(history.eval_accuracy) == len(history.eval_loss) == 3
    assert history.eval_loss[-1] < start.loss
    assert history.best_eval_accuracy is not None and history.best_eval_accuracy > 0.9
    assert history.train_loss[-1] < history.train_loss[0]
    assert all(s > 0 for s in history.seconds)
    # cosine: starts at lr and decreases every epoch
    assert history.lr[0] == pytest.approx(0.05)
    assert history.lr == sorted(history.lr, reverse=True) and history.lr[-1] < 0.05
    assert history.to_dict()["epochs"][0]["epoch"] == 1


def test_without_cosine_the_lr_is_constant() -> None:
    history = finetune(
        _model(), _loader(_blobs()), 2, config=FinetuneConfig(lr=0.02, cosine=False), progress=False
    )
    assert history.lr == [0.02, 0.02]
    assert history.eval_accuracy == [] and history.best_eval_accuracy is None


def test_same_seed_same_weights_and_caller_rng_untouched() -> None:
    runs = []
    for _ in range(2):
        model = _model()
        torch.manual_seed(123)
        finetune(model, _loader(_blobs()), 1, config=FinetuneConfig(seed=7), progress=False)
        runs.append((model.state_dict(), torch.rand(1)))
    torch.manual_seed(123)
    expected_draw = torch.rand(1)
    for key, value in runs[0][0].items():
        assert torch.equal(value, runs[1][0][key])
    # the caller's global RNG continues as if finetune had not run
    assert torch.equal(runs[0][1], expected_draw)

    other = _model()
    finetune(other, _loader(_blobs()), 1, config=FinetuneConfig(seed=8), progress=False)
    assert not torch.equal(other.state_dict()["0.weight"], runs[0][0]["0.weight"])


def test_train_mode_during_training_and_modes_restored() -> None:
    model = _model().eval()
    model[2].train()  # a mixed state must come back exactly
    seen: list[bool] = []

    def loss_fn(m: nn.Module, batch: Any) -> torch.Tensor:
        if torch.is_grad_enabled():  # the same loss_fn also scores the eval loader
            seen.append(m.training and m.get_submodule("2").training)
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    finetune(
        model, _loader(_blobs()), 1, loss_fn=loss_fn, eval_loader=_loader(_blobs()), progress=False
    )
    assert seen and all(seen)
    assert not model.training and not model[0].training and model[2].training


def test_custom_loss_fn_and_batch_layout() -> None:
    ds = _blobs()
    loader: DataLoader[Any] = DataLoader(
        [{"x": x, "y": y} for x, y in zip(*ds.tensors, strict=True)],  # type: ignore[arg-type, unused-ignore]
        batch_size=32,
    )
    calls: list[int] = []

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        calls.append(batch["x"].shape[0])
        return nn.functional.cross_entropy(model(batch["x"]), batch["y"])

    history = finetune(_model(), loader, 2, loss_fn=loss_fn, progress=False)
    assert len(calls) == 2 * len(loader) and len(history.train_loss) == 2


def test_default_loss_rejects_other_batch_layouts() -> None:
    loader: DataLoader[Any] = DataLoader(
        [{"x": torch.zeros(16)}] * 4,  # type: ignore[arg-type, unused-ignore]
        batch_size=2,
    )
    with pytest.raises(DataError, match=r"\(inputs, targets\).*loss_fn="):
        finetune(_model(), loader, 1, progress=False)


def test_user_optimizer_is_used_and_grad_clip_applies() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    history = finetune(
        model,
        _loader(_blobs()),
        1,
        optimizer=opt,
        config=FinetuneConfig(cosine=False, grad_clip=1e-3),
        progress=False,
    )
    assert history.lr == [0.1]
    assert opt.state_dict()["param_groups"][0]["lr"] == 0.1


def test_num_threads_applies_during_training_and_is_restored() -> None:
    torch.set_num_threads(2)
    seen: list[int] = []

    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return nn.functional.cross_entropy(model(batch[0]), batch[1])

    finetune(
        _model(),
        _loader(_blobs()),
        1,
        loss_fn=loss_fn,
        config=FinetuneConfig(num_threads=1),
        progress=False,
    )
    assert set(seen) == {1}
    assert torch.get_num_threads() == 2


def test_epochs_zero_trains_nothing() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert finetune(model, _loader(_blobs()), 0, progress=False) == History()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_evaluate_accuracy_loss_and_mode() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    model.train()
    result = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=3))
    assert isinstance(result, EvalResult)
    assert result.accuracy == pytest.approx(0.75) and result.num_examples == 4
    expected = nn.functional.cross_entropy(model(x), y).item()
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert model.training


def test_progress_off_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    finetune(_model(), _loader(_blobs()), 2, progress=False)
    assert capsys.readouterr().out == ""


def test_progress_without_tty_prints_one_line_per_epoch(
    capsys: pytest.CaptureFixture[str],
) -> None:
    finetune(_model(), _loader(_blobs()), 3, eval_loader=_loader(_blobs()), progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("epoch 1/3") and "eval acc" in lines[0]
    assert "\r" not in "".join(lines) and "\x1b" not in "".join(lines)


def test_log_every_adds_step_lines(capsys: pytest.CaptureFixture[str]) -> None:
    finetune(_model(), _loader(_blobs()), 1, config=FinetuneConfig(log_every=4), progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [line for line in lines if line.startswith("epoch 1")]
    assert len(lines) == 8 // 4 + 1  # 8 batches: steps 4 and 8, then the summary


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.StringIO()

    def terminal(**kwargs: Any) -> Console:
        return Console(file=buffer, force_terminal=True, width=100, **kwargs)

    monkeypatch.setattr(finetune_module, "Console", terminal)
    finetune(_model(), _loader(_blobs()), 2, progress=True)
    out = buffer.getvalue()
    assert "epoch 2/2  train loss" in out
    assert "━" in out or "\x1b" in out  # a bar was drawn


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"lr": 0.0}, ConfigError, "lr=0.0"),
        ({"lr": float("nan")}, ConfigError, "lr=nan"),
        ({"lr": "0.1"}, TypeError, "lr must be a number"),
        ({"momentum": 1.0}, ConfigError, r"momentum=1.0 must lie in \[0, 1\)"),
        ({"weight_decay": -1e-4}, ConfigError, "weight_decay=-0.0001"),
        ({"optimizer": "rmsprop"}, ConfigError, "optimizer='rmsprop'.*sgd, adam, adamw"),
        ({"device": "gpu0"}, ConfigError, "device='gpu0'"),
        ({"seed": -1}, ConfigError, "seed=-1"),
        ({"seed": 1.0}, TypeError, "seed must be an int"),
        ({"grad_clip": 0}, ConfigError, "grad_clip=0"),
        ({"log_every": -2}, ConfigError, "log_every=-2"),
        ({"cosine": 1}, TypeError, "cosine must be a bool"),
        ({"num_threads": 0}, ConfigError, "num_threads=0"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        FinetuneConfig(**kwargs)


def test_finetune_argument_errors() -> None:
    loader = _loader(_blobs())
    with pytest.raises(ConfigError, match="epochs=-1"):
        finetune(_model(), loader, -1)
    with pytest.raises(TypeError, match="epochs must be an int"):
        finetune(_model(), loader, 2.0)  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(TypeError, match="epochs must be an int"):
        finetune(_model(), loader, True)
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module"):
        finetune("model", loader, 1)  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(TypeError, match="config must be a FinetuneConfig"):
        finetune(_model(), loader, 1, config={"lr": 0.1})  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(TypeError, match="optimizer must be"):
        finetune(_model(), loader, 1, optimizer="sgd")  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(TypeError, match="train_loader must be an iterable"):
        finetune(_model(), 3, 1)  # type: ignore[arg-type, unused-ignore]


def test_empty_loaders_are_data_errors() -> None:
    empty = DataLoader(
        TensorDataset(torch.zeros(3, 16), torch.zeros(3, dtype=torch.long)),
        batch_size=8,
        drop_last=True,
    )
    with pytest.raises(DataError, match=r"train_loader is empty.*drop_last"):
        finetune(_model(), empty, 1)
    with pytest.raises(DataError, match="eval_loader is empty"):
        finetune(_model(), _loader(_blobs()), 1, eval_loader=empty)
    with pytest.raises(DataError, match="loader is empty"):
        evaluate(_model(), empty)
    with pytest.raises(DataError, match="yielded no batches in epoch 1"):
        finetune(_model(), iter(()), 1, progress=False)


def test_diverging_loss_is_reported() -> None:
    with pytest.raises(ConfigError, match=r"train loss became nan.*lower config.lr"):
        finetune(
            _model(),
            _loader(_blobs()),
            1,
            progress=False,
            config=FinetuneConfig(lr=1e30, momentum=0.0, cosine=False),
        )
