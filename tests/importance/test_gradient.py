"""Gradient criteria against hand-computed gradients, state restoration and data errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.importance import CalibrationData, get_criterion, prepare_scorers
from prunekit.importance.data import gradient_statistics
from prunekit.importance.gradient import WeightPlusGradient
from prunekit.sparse.masks import get_mask
from prunekit.sparse.sparsify import sparsify

W1 = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]])
W2 = torch.tensor([[2.0, -1.0, 0.5]])
X = torch.tensor([[1.0, 2.0], [-1.0, 0.5], [3.0, -2.0], [0.0, 1.0]])
T = torch.tensor([[1.0], [0.0], [-1.0], [2.0]])


def _model() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 3, bias=False), nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(W1)
        model[1].weight.copy_(W2)
    return model


def _sq_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return 0.5 * (model(batch[0]) - batch[1]).square().sum()


def _grads(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dW1, dL/dW2 of L = ½‖W2 W1 x − t‖² summed over the rows of x, by hand."""
    h = x @ W1.T
    r = h @ W2.T - t
    return (r @ W2).T @ x, r.T @ h


def _scores(name: str, data: object, **kw: object) -> dict[str, torch.Tensor]:
    model = _model()
    params = {"0.weight": model[0].weight, "1.weight": model[1].weight}
    loss = None if isinstance(data, CalibrationData) else _sq_loss
    scorer = prepare_scorers(get_criterion(name), model, params, data, caller="test",
                             loss_fn=loss, **kw)  # type: ignore[arg-type]
    gen = torch.Generator()
    return {n: scorer(n).score(p, generator=gen) for n, p in params.items()}


ONE_BATCH = [(X, T)]
TWO_BATCHES = [(X[:2], T[:2]), (X[2:], T[2:])]


def test_single_batch_formulas_match_hand_gradients() -> None:
    g1, g2 = _grads(X, T)
    assert torch.allclose(_scores("grad", ONE_BATCH)["0.weight"], g1.abs())
    taylor = _scores("taylor", ONE_BATCH)
    assert torch.allclose(taylor["0.weight"], (W1 * g1).abs())
    assert torch.allclose(taylor["1.weight"], (W2 * g2).abs())
    fisher = _scores("fisher", ONE_BATCH)
    assert torch.allclose(fisher["1.weight"], 0.5 * W2.square() * g2.square())
    wlg = _scores("wlg", ONE_BATCH)
    assert torch.allclose(wlg["0.weight"], W1.abs() + g1.abs())


def test_accumulation_over_batches_and_samples() -> None:
    (a1, a2), (b1, b2) = _grads(X[:2], T[:2]), _grads(X[2:], T[2:])
    grad = _scores("grad", TWO_BATCHES)
    assert torch.allclose(grad["1.weight"], (a2.abs() + b2.abs()) / 2)
    fisher = _scores("fisher", TWO_BATCHES)
    assert torch.allclose(fisher["0.weight"], 0.5 * W1.square() * (a1.square() + b1.square()) / 2)
    per_sample = [_grads(X[i:i + 1], T[i:i + 1])[0] for i in range(4)]
    sample_fisher = _scores("fisher", CalibrationData(ONE_BATCH, loss_fn=_sq_loss,
                                                      accumulate="sample"))
    expected = 0.5 * W1.square() * torch.stack(per_sample).square().mean(0)
    assert torch.allclose(sample_fisher["0.weight"], expected)


def test_calib_batches_limits_the_batches() -> None:
    a2 = _grads(X[:2], T[:2])[1]
    assert torch.allclose(_scores("grad", TWO_BATCHES, batches=1)["1.weight"], a2.abs())


def test_snip_uses_the_mean_gradient_and_sums_to_one() -> None:
    (a1, a2), (b1, b2) = _grads(X[:2], T[:2]), _grads(X[2:], T[2:])
    snip = _scores("snip", TWO_BATCHES)
    raw1, raw2 = (W1 * (a1 + b1) / 2).abs(), (W2 * (a2 + b2) / 2).abs()
    total = raw1.sum() + raw2.sum()
    assert torch.allclose(snip["0.weight"], raw1 / total)
    assert torch.allclose(snip["0.weight"].sum() + snip["1.weight"].sum(), torch.tensor(1.0))


def test_wlg_lambda_and_its_check() -> None:
    g1 = _grads(X, T)[0]
    model = _model()
    crit = WeightPlusGradient(lam=0.25)
    stats = crit.prepare(model, {"w": model[0].weight},
                         CalibrationData(ONE_BATCH, loss_fn=_sq_loss))
    assert torch.allclose(crit.score_with(W1, stats["w"]), W1.abs() + 0.25 * g1.abs())
    with pytest.raises(ConfigError, match="lam=-1"):
        WeightPlusGradient(lam=-1.0)


@pytest.mark.parametrize("name", ["grad", "taylor", "wlg", "snip", "fisher", "activation"])
def test_missing_data_names_data(name: str) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ConfigError, match=rf"criterion='{name}' needs calibration data.*data="):
        sparsify(model, 0.5, criterion=name)
    with pytest.raises(ConfigError, match="data=None"):
        get_criterion(name).score(W1, generator=torch.Generator())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert get_mask(model[0], "weight") is None


def test_data_with_a_data_free_criterion_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'l1' does not use data"):
        sparsify(_model(), 0.5, criterion="l1", data=ONE_BATCH)


def test_bad_data_arguments() -> None:
    with pytest.raises(TypeError, match="data must be an iterable"):
        CalibrationData(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="calib_batches=0"):
        CalibrationData(ONE_BATCH, batches=0)
    with pytest.raises(ConfigError, match="accumulate='mean'"):
        CalibrationData(ONE_BATCH, accumulate="mean")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no batches"):
        sparsify(_model(), 0.5, criterion="taylor", data=[], loss_fn=_sq_loss)
    with pytest.raises(DataError, match="scalar"):
        sparsify(_model(), 0.5, criterion="taylor", data=ONE_BATCH,
                 loss_fn=lambda m, b: m(b[0]))
    with pytest.raises(DataError, match=r"\(inputs, targets\)"):
        sparsify(_model(), 0.5, criterion="taylor", data=[X])


def test_model_state_is_unchanged_after_scoring() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 3))
    model.train()
    model[2].eval()
    model[0].bias.requires_grad_(False)
    sentinel = torch.full_like(model[3].weight, 7.0)
    model[3].weight.grad = sentinel
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = CalibrationData([(X, torch.tensor([0, 1, 2, 0]))], mode="train")
    for name in ("taylor", "fisher", "activation"):
        sparsify(model, 0.25, criterion=name, data=data, scope="layer")
    state = model.state_dict()
    for key, value in before.items():
        masked = key.replace("weight", "parametrizations.weight.original")
        assert torch.equal(state[key if key in state else masked], value), key
    assert model[3].parametrizations.weight.original.grad is sentinel
    assert model[0].parametrizations.weight.original.grad is None
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad
    assert model.training and model[1].training and not model[2].training


def test_masked_weights_stay_pruned_and_score_zero() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    data = [(torch.randn(32, 8), torch.randint(0, 4, (32,)))]
    sparsify(model, 0.5, criterion="l1")
    first = get_mask(model[0], "weight")
    assert first is not None
    result = sparsify(model, 0.75, criterion="taylor", data=data)
    second = get_mask(model[0], "weight")
    assert second is not None and not bool((second & ~first).any())
    assert result.global_sparsity == pytest.approx(0.75, abs=0.01)
    stats = gradient_statistics(model, {"w": model[0].parametrizations.weight.original},
                                CalibrationData(data))
    assert bool((stats["w"].abs_mean[~second] == 0).all())


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(6, 24), nn.ReLU())
        self.digit = nn.Linear(24, 5)
        self.value = nn.Linear(24, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.digit(h), self.value(h)


def _two_head_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, label, value = batch
    logits, out = model(x)
    return nn.functional.cross_entropy(logits, label) + (out.squeeze(1) - value).square().mean()


@pytest.mark.parametrize("name", ["taylor", "fisher", "grad"])
def test_multi_task_loss_prunes_both_heads(name: str) -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    data = [(torch.randn(16, 6), torch.randint(0, 5, (16,)), torch.randn(16))]
    result = sparsify(model, 0.6, criterion=name, data=data, loss_fn=_two_head_loss)
    assert result.global_sparsity == pytest.approx(0.6, abs=0.01)
    stats = gradient_statistics(model, {"v": model.value.parametrizations.weight.original,
                                        "d": model.digit.parametrizations.weight.original},
                                CalibrationData(data, loss_fn=_two_head_loss))
    assert float(stats["v"].abs_mean.sum()) > 0 and float(stats["d"].abs_mean.sum()) > 0
    logits, value = model(data[0][0])
    assert logits.shape == (16, 5) and value.shape == (16, 1)


@pytest.mark.parametrize(("name", "pattern"), [("taylor", "2:4"), ("fisher", "kernel"),
                                               ("activation", "block"), ("lamp", "2:4")])
def test_data_criteria_drive_every_pattern(name: str, pattern: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))
    data = [(torch.randn(8, 4, 6, 6), torch.randint(0, 4, (8,)))]
    layers = (nn.Conv2d,) if pattern == "kernel" else (nn.Conv2d, nn.Linear)
    result = sparsify(model, None if ":" in pattern else 0.5, criterion=name, pattern=pattern,
                      data=None if name == "lamp" else data, layers=layers)
    assert result.global_sparsity == pytest.approx(0.5, abs=0.02)
    if pattern == "2:4":
        kept = (model[3].weight != 0).reshape(4, -1, 4).sum(-1)
        assert bool((kept == 2).all())
