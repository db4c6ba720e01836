"""Recovery without training: BN re-estimation and least-squares / bias refits."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.structured.plan import PLAN_FORMAT, apply_plan
from prunekit.structured.pruning import prune
from prunekit.train.recover import recalibrate_batchnorm, reconstruct


def _plan(keep_hidden: list[int]) -> dict[str, Any]:
    return {"format": PLAN_FORMAT, "params": {}, "attrs": {}, "modules": {
        "0": {"type": "Linear", "keep": {"out": keep_hidden}},
        "2": {"type": "Linear", "keep": {"in": keep_hidden}}}}


def _batches(n: int = 3, dim: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(2)
    return [(torch.randn(32, dim), torch.zeros(32, dtype=torch.long)) for _ in range(n)]


def _cut(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    pruned = copy.deepcopy(model)
    apply_plan(pruned, plan)
    return pruned


def test_lstsq_recovers_duplicated_units_exactly() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    with torch.no_grad():  # units 3..5 are 2x units 0..2: relu(2z) = 2 relu(z)
        model[0].weight[3:] = 2 * model[0].weight[:3]
        model[0].bias[3:] = 2 * model[0].bias[:3]
    plan = _plan([0, 1, 2])
    pruned = _cut(model, plan)
    x = _batches()[0][0]
    assert not torch.allclose(pruned(x), model(x), atol=1e-3)
    report = reconstruct(pruned, model, plan, _batches(), ridge=0.0)
    assert [f.name for f in report.layers] == ["2"]
    assert report.layers[0].error_after < 1e-8 < report.layers[0].error_before
    assert torch.allclose(pruned(x), model(x), atol=1e-4)


def test_bias_compensation_absorbs_a_constant_unit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight[2] = 0.0
        model[0].bias[2] = 3.0  # unit 2 always outputs 3
    plan = _plan([0, 1])
    original = copy.deepcopy(model)
    pruned = _cut(model, plan)
    report = reconstruct(pruned, model, plan, _batches(), method="bias")
    x = _batches()[0][0]
    assert torch.allclose(pruned(x), model(x), atol=1e-5)
    assert report.layers[0].error_after < 1e-10
    for a, b in zip(model.state_dict().values(), original.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the unpruned model is untouched


def test_conv_consumer_is_refitted_on_unfolded_patches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1),
                          nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight[3] = -0.5 * model[0].weight[1]
        model[0].bias[3] = -0.5 * model[0].bias[1]
    data = [(torch.randn(8, 1, 6, 6), torch.zeros(8, dtype=torch.long)) for _ in range(2)]
    result = prune(model, data[0][0][:2], ratio=0.5, importance="l2")
    with torch.no_grad():
        before = (result.model(data[0][0]) - model(data[0][0])).square().mean()
    report = reconstruct(result.model, model, result.plan, data)
    with torch.no_grad():
        after = (result.model(data[0][0]) - model(data[0][0])).square().mean()
    assert report.layers[0].name == "2" and float(after) < 0.8 * float(before)


def test_recalibrate_batchnorm_matches_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Dropout(0.5)).eval()
    model[1].momentum = 0.3
    x = torch.randn(16, 1, 6, 6)
    used = recalibrate_batchnorm(model, [(x, None)], loss_fn=lambda m, b: m(b[0]).sum())
    out = model[0](x).detach()
    assert used == 1
    assert torch.allclose(model[1].running_mean, out.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(model[1].running_var, out.transpose(0, 1).reshape(3, -1).var(1),
                          atol=1e-4)
    assert model[1].momentum == 0.3 and not model.training and not model[1].training


def test_recovery_errors() -> None:
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="no BatchNorm"):
        recalibrate_batchnorm(model, _batches())
    with pytest.raises(ConfigError, match="data="):
        recalibrate_batchnorm(model, None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="method='ls'"):
        reconstruct(model, model, _plan([0]), _batches(), method="ls")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="plan must be"):
        reconstruct(model, model, {}, _batches())
    with pytest.raises(ConfigError, match="ridge=-1"):
        reconstruct(model, model, _plan([0]), _batches(), ridge=-1.0)


def test_failed_recalibration_restores_the_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        model[1].running_mean.fill_(5.0)

    def broken(m: nn.Module, b: Any) -> torch.Tensor:
        m(b[0])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        recalibrate_batchnorm(model, _batches(), loss_fn=broken)
    assert bool((model[1].running_mean == 5.0).all())


def test_failed_reconstruction_leaves_the_pruned_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(),
                          nn.Linear(6, 3))
    plan = {"format": PLAN_FORMAT, "params": {}, "attrs": {}, "modules": {
        "0": {"type": "Linear", "keep": {"out": [0, 1, 2]}},
        "2": {"type": "Linear", "keep": {"in": [0, 1, 2], "out": [0, 1, 2]}},
        "4": {"type": "Linear", "keep": {"in": [0, 1, 2]}}}}
    pruned = _cut(model, plan)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    calls = {"n": 0}

    def flaky(m: nn.Module, b: Any) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 8:  # layer "2" is refitted from calls 1-6, "4" fails
            raise RuntimeError("data went away")
        return m(b[0]).sum()

    with pytest.raises(RuntimeError, match="data went away"):
        reconstruct(pruned, model, plan, _batches(), loss_fn=flaky)
    for key, value in pruned.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert reconstruct(pruned, model, plan, _batches()).layers[0].name == "2"
