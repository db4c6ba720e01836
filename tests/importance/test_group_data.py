"""Group (structured) versions of the data-aware criteria through prunekit.structured.prune."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.importance import CalibrationData, calibrated
from prunekit.importance.data import gradient_statistics
from prunekit.structured.pruning import analyze, prune


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():
        model[0].weight[0].fill_(5.0)  # hidden unit 0: the largest weights ...
        model[0].bias[0] = -100.0       # ... but never active
        model[2].weight[:, 0].fill_(5.0)
    return model


def _data() -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    return [(torch.randn(32, 4), torch.randint(0, 3, (32,))) for _ in range(2)]


@pytest.mark.parametrize("name", ["taylor", "grad", "fisher", "snip", "wlg", "activation"])
def test_dead_unit_goes_first_and_grads_come_back(name: str) -> None:
    model = _mlp()
    sentinel = torch.ones_like(model[2].weight)
    model[2].weight.grad = sentinel
    x = _data()[0][0]
    with calibrated(model, name, _data()):
        found = analyze(model, x, importance=name)
        result = prune(model, x, ratio=0.5, importance=name)
    assert model[2].weight.grad is sentinel and model[0].weight.grad is None
    scores = found.scores[0]
    if name in ("taylor", "grad", "fisher", "snip"):
        assert float(scores[0]) == 0.0
        assert 0 not in result.plan["modules"]["0"]["keep"]["out"]
    assert result.model[0].out_features == 3
    l2 = prune(model, x, ratio=0.5, importance="l2")
    assert 0 in l2.plan["modules"]["0"]["keep"]["out"]  # magnitude keeps the dead unit


def test_group_taylor_is_the_sum_over_the_group() -> None:
    model = _mlp()
    data = _data()
    stats = gradient_statistics(model, dict(model.named_parameters()), CalibrationData(data))
    w = dict(model.named_parameters())
    expected = (
        (w["0.weight"] * stats["0.weight"].abs_mean).abs().sum(1)
        + (w["0.bias"] * stats["0.bias"].abs_mean).abs()
        + (w["2.weight"] * stats["2.weight"].abs_mean).abs().sum(0)
    ).detach()
    with calibrated(model, "taylor", data):
        scores = analyze(model, data[0][0], importance="taylor").scores[0]
    assert torch.allclose(scores, expected, atol=1e-6)


def test_group_criteria_without_data_fail_clearly() -> None:
    model = _mlp()
    x = _data()[0][0]
    with pytest.raises(ConfigError, match=r"needs gradients.*calibrated\(model, 'fisher'"):
        prune(model, x, ratio=0.5, importance="fisher")
    with pytest.raises(ConfigError, match=r"'taylor' needs calibration data.*data="), \
            calibrated(model, "taylor", None):
        pass
    with pytest.raises(ConfigError, match="does not use data"), calibrated(model, "l2", _data()):
        pass


def test_plain_backward_grads_also_work() -> None:
    model = _mlp()
    x, y = _data()[0]
    nn.functional.cross_entropy(model(x), y).backward()
    result = prune(model, x, ratio=0.5, importance="taylor")
    assert 0 not in result.plan["modules"]["0"]["keep"]["out"]


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.digit = nn.Linear(8, 5)
        self.value = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.digit(h), self.value(h)


def test_multi_task_structured_prune() -> None:
    torch.manual_seed(0)
    model = TwoHeads().eval()
    batch = (torch.randn(16, 1, 8, 8), torch.randint(0, 5, (16,)), torch.randn(16))

    def loss(m: nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        logits, value = m(b[0])
        return nn.functional.cross_entropy(logits, b[1]) + (value.squeeze(1) - b[2]).square().mean()

    with calibrated(model, "taylor", [batch], loss_fn=loss):
        result = prune(model, batch[0][:2], ratio=0.5, importance="taylor")
    logits, value = result.model(batch[0])
    assert result.model.trunk[0].out_channels == 4
    assert logits.shape == (16, 5) and value.shape == (16, 1)
