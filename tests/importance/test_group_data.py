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


class _TiedLM(nn.Module):
    """An LM head tied to the embedding: the head's weight is the embedding's Parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 16)
        self.head = nn.Linear(16, 50, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        return self.head(h + self.fc2(torch.relu(self.fc(h))))


def test_activation_on_tied_weights_scores_by_the_head_input() -> None:
    # the statistic is named after the head (the layer with input features); the tied
    # Parameter is listed once by named_parameters(): calibrated raised KeyError('head.weight')
    torch.manual_seed(0)
    model = _TiedLM()
    x = torch.randint(0, 50, (4, 8))
    with calibrated(model, "activation", [x, x], loss_fn=lambda m, b: m(b).sum()) as stats:
        assert model.emb.weight.grad is stats["head.weight"]
        found = analyze(model, x, importance="activation")
        result = prune(model, x, ratio=0.5, importance="activation")
    assert model.emb.weight.grad is None
    hidden = next(i for i, g in enumerate(found.graph.groups) if g.size == 16)
    assert bool(torch.isfinite(found.scores[hidden]).all())
    assert result.model.head.weight is result.model.emb.weight
    assert result.model.emb.embedding_dim == 8 and result.model(x).shape == (4, 8, 50)


class _EmbeddingLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.rnn = nn.LSTM(16, 24, batch_first=True)
        self.fc = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(self.emb(x))
        return self.fc(h[:, -1])


def test_activation_group_without_input_features_names_the_fix() -> None:
    # emb -> LSTM: no Linear/Conv reads the embedding's units, so even inside calibrated()
    # the group has no statistic; the error says so and names the roots to ignore
    torch.manual_seed(0)
    model = _EmbeddingLSTM()
    x = torch.randint(0, 50, (4, 8))
    with calibrated(model, "activation", [x, x], loss_fn=lambda m, b: m(b).sum()):
        with pytest.raises(ConfigError, match=r"input features.*\['emb'\]"):
            prune(model, x, ratio=0.5, importance="activation")
        result = prune(model, x, ratio=0.5, importance="activation", ignore=[model.emb])
    assert result.model.rnn.hidden_size == 12 and result.model.emb.embedding_dim == 16


def test_activation_refuses_a_gradient_from_backward() -> None:
    # after the user's own loss.backward(), importance="activation" scored |W|·|grad|
    # without a word: the criterion is defined by the inputs' RMS, which only calibrated()
    # holds
    model, x = _mlp(), _data()[0][0]
    model(x).sum().backward()
    with pytest.raises(ConfigError, match=r"RMS of the inputs.*not that statistic"):
        prune(model, x, ratio=0.5, importance="activation")
    model.zero_grad(set_to_none=True)
    with calibrated(model, "activation", _data()):
        assert prune(model, x, ratio=0.5, importance="activation").model[0].out_features == 3
    with pytest.raises(ConfigError, match="needs gradients or calibration statistics"):
        prune(model, x, ratio=0.5, importance="activation")  # (grads put back: none)
