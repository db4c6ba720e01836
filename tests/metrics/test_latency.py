"""benchmark_latency(): result shape, thread count restored, argument errors (no timing asserts)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.metrics.latency import LatencyResult, benchmark_latency, num_threads


class Counting(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.calls = 0
        self.grad_enabled: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.fc(x)


def test_result_fields_and_run_count() -> None:
    model = Counting()
    result = benchmark_latency(model, torch.randn(3, 4), warmup=2, repeats=7, threads=1)
    assert isinstance(result, LatencyResult)
    assert model.calls == 2 + 7
    assert not any(model.grad_enabled)
    assert result.repeats == 7 and result.warmup == 2 and result.threads == 1
    assert result.device == "cpu"
    assert 0 < result.min_ms <= result.p10_ms <= result.median_ms <= result.p90_ms <= result.max_ms
    assert result.min_ms <= result.mean_ms <= result.max_ms
    assert result.std_ms >= 0 and result.iqr_ms >= 0
    assert json.loads(json.dumps(result.to_dict()))["repeats"] == 7


def test_dict_inputs_and_single_repeat(mlp: nn.Sequential) -> None:
    class Kw(nn.Module):
        def forward(self, *, x: torch.Tensor) -> torch.Tensor:
            return mlp(x)

    result = benchmark_latency(Kw(), {"x": torch.randn(1, 16)}, warmup=0, repeats=1)
    assert result.repeats == 1
    assert result.min_ms == result.median_ms == result.max_ms
    assert result.std_ms == 0.0 and result.iqr_ms == 0.0
    assert result.threads == torch.get_num_threads()


def test_threads_restored_even_after_an_error(mlp: nn.Sequential) -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    result = benchmark_latency(mlp, torch.randn(1, 16), warmup=1, repeats=2, threads=target)
    assert result.threads == target
    assert torch.get_num_threads() == before

    with pytest.raises(RuntimeError), num_threads(target):
        assert torch.get_num_threads() == target
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_model_mode_unchanged(mlp: nn.Sequential) -> None:
    mlp.train()
    benchmark_latency(mlp, torch.randn(1, 16), warmup=0, repeats=1)
    assert mlp.training


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"repeats": 0}, ConfigError, r"repeats=0 .* >= 1"),
        ({"warmup": -1}, ConfigError, r"warmup=-1 .* >= 0"),
        ({"threads": 0}, ConfigError, r"threads=0 .* >= 1"),
        ({"repeats": 2.5}, TypeError, r"repeats must be an int, got float 2\.5"),
        ({"threads": True}, TypeError, r"threads must be an int, got bool"),
    ],
)
def test_bad_arguments(
    mlp: nn.Sequential, kwargs: dict[str, object], error: type[Exception], pattern: str
) -> None:
    before = torch.get_num_threads()
    with pytest.raises(error, match=pattern):
        benchmark_latency(mlp, torch.randn(1, 16), **kwargs)  # type: ignore[arg-type]
    assert torch.get_num_threads() == before


def test_rejects_non_module() -> None:
    with pytest.raises(TypeError, match="model must be"):
        benchmark_latency(lambda x: x, torch.randn(1))  # type: ignore[arg-type]


def test_training_mode_batchnorm_statistics_are_restored() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    benchmark_latency(model, torch.randn(3, 4), warmup=1, repeats=2)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(before[key], value), key


@pytest.mark.gpu
def test_cuda_device_reported(mlp: nn.Sequential) -> None:
    result = benchmark_latency(mlp.cuda(), torch.randn(1, 16), warmup=1, repeats=3)
    assert result.device.startswith("cuda")
