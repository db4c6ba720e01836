"""DistillationLoss equals a hand computation; teacher frozen; feature adapters train."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.errors import ConfigError
from prunekit.structured import prune
from prunekit.train.distill import DistillationLoss
from prunekit.train.finetune import FinetuneConfig, finetune


def _net(seed: int, hidden: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def _hand_kd(s: torch.Tensor, t: torch.Tensor, temp: float) -> float:
    total = 0.0
    for row_s, row_t in zip(s.tolist(), t.tolist(), strict=True):
        es = [math.exp(v / temp) for v in row_s]
        et = [math.exp(v / temp) for v in row_t]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        total += sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True))
    return total / len(s) * temp**2


def _hand_ce(s: torch.Tensor, y: torch.Tensor) -> float:
    out = 0.0
    for row, label in zip(s.tolist(), y.tolist(), strict=True):
        out += -row[label] + math.log(sum(math.exp(v) for v in row))
    return out / len(s)


def test_loss_equals_hand_computation() -> None:
    student, teacher = _net(0), _net(1)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    loss_fn = DistillationLoss(teacher, alpha=0.7, temperature=3.0)
    got = float(loss_fn(student, (x, y)).detach())
    with torch.no_grad():
        s, t = student(x), teacher(x)
    expected = 0.7 * _hand_kd(s, t, 3.0) + 0.3 * _hand_ce(s, y)
    assert got == pytest.approx(expected, rel=1e-5)


def test_teacher_frozen_in_eval_and_untouched_by_training() -> None:
    teacher = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 3))
    teacher.train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 3, (32,))),
                        batch_size=8)
    loss_fn = DistillationLoss(teacher, alpha=0.5)
    finetune(_net(0), loader, 2, loss_fn=loss_fn, progress=False)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


def test_feature_matching_with_adapter_after_structured_pruning() -> None:
    teacher = _net(1, hidden=16)
    x = torch.randn(8, 4)
    student = prune(teacher, x, ratio=0.5, ignore=[teacher[2]]).model
    assert student[0].out_features == 8
    loss_fn = DistillationLoss(teacher, alpha=1.0, temperature=2.0, features={"1": "1"},
                               feature_weight=0.5, student=student, example_inputs=x)
    adapter = loss_fn.adapters["1"]
    assert isinstance(adapter, nn.Linear) and adapter.in_features == 8
    y = torch.randint(0, 3, (8,))
    got = loss_fn(student, (x, y))
    with torch.no_grad():
        s_feat, t_feat = student[1](student[0](x)), teacher[1](teacher[0](x))
        expected = _hand_kd(student(x), teacher(x), 2.0) + 0.5 * float(
            ((adapter(s_feat) - t_feat) ** 2).mean())
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)
    before = adapter.weight.detach().clone()
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    finetune(student, loader, 1, loss_fn=loss_fn, config=FinetuneConfig(lr=0.1),
             progress=False)
    assert not torch.equal(before, adapter.weight)  # the adapter is trained with the student
    loss_fn.close()


def test_errors() -> None:
    with pytest.raises(ConfigError, match="alpha"):
        DistillationLoss(_net(1), alpha=1.5)
    with pytest.raises(ConfigError, match="temperature"):
        DistillationLoss(_net(1), temperature=0)
    with pytest.raises(ConfigError, match="example_inputs"):
        DistillationLoss(_net(1), features={"0": "0"})
    with pytest.raises(ConfigError, match="student layer 'nope'"):
        DistillationLoss(_net(1), features={"nope": "0"}, student=_net(0),
                         example_inputs=torch.randn(1, 4))
    with pytest.raises(TypeError, match="teacher"):
        DistillationLoss("model")  # type: ignore[arg-type]
