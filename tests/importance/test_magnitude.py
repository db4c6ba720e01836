"""Data-free criteria and the criterion registry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.importance import (
    Criterion,
    base,
    criterion_names,
    get_criterion,
    register_criterion,
    require_data_free,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


W = torch.tensor([[1.0, -2.0, 0.0], [-3.0, 4.0, 2.0]])


def test_registry_holds_the_data_free_criteria() -> None:
    assert criterion_names()[:4] == ["l1", "l2", "normalized", "random"]
    for name in ("l1", "l2", "normalized", "random"):
        crit = get_criterion(name)
        assert isinstance(crit, Criterion) and crit.name == name and not crit.needs_data


def test_l1_scores_abs_and_groups_sum() -> None:
    crit = get_criterion("l1")
    scores = crit.score(W, generator=_gen())
    assert torch.equal(scores, W.abs())
    assert torch.equal(crit.combine(scores, dim=1), torch.tensor([3.0, 9.0]))


def test_l2_scores_square_and_groups_take_the_norm() -> None:
    crit = get_criterion("l2")
    scores = crit.score(W, generator=_gen())
    assert torch.equal(scores, W.square())
    assert torch.allclose(crit.combine(scores, dim=1), W.norm(dim=1))


def test_normalized_divides_by_the_tensor_l1_sum() -> None:
    crit = get_criterion("normalized")
    scores = crit.score(W, generator=_gen())
    assert torch.allclose(scores, W.abs() / 12.0)
    assert scores.sum().item() == pytest.approx(1.0)
    assert torch.equal(crit.score(torch.zeros(3), generator=_gen()), torch.zeros(3))


def test_random_is_uniform_seeded_and_non_negative() -> None:
    crit = get_criterion("random")
    a = crit.score(W, generator=_gen(3))
    b = crit.score(W, generator=_gen(3))
    c = crit.score(W, generator=_gen(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == W.shape and bool(((a >= 0) & (a < 1)).all())


def test_half_precision_weights_score_in_float32() -> None:
    scores = get_criterion("l1").score(W.half(), generator=_gen())
    assert scores.dtype == torch.float32


def test_scores_do_not_track_gradients() -> None:
    w = W.clone().requires_grad_(True)
    assert not get_criterion("l2").score(w, generator=_gen()).requires_grad


def test_unknown_criterion_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError, match=r"criterion='l3'.*l1, l2, normalized, random"):
        get_criterion("l3")


@dataclass(frozen=True)
class _NeedsGradients:
    name: str = "taylor-test"
    needs_data: bool = True

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        return weight.abs()

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return scores.sum(dim=dim)


def test_data_criteria_register_and_are_rejected_without_data(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(base, "_CRITERIA", dict(base._CRITERIA))
    crit = register_criterion(_NeedsGradients())
    assert get_criterion("taylor-test") is crit
    with pytest.raises(ConfigError, match=r"'taylor-test' needs calibration data.*sparsify"):
        require_data_free(crit, "sparsify")
    assert require_data_free(get_criterion("l1"), "sparsify").name == "l1"


def test_register_rejects_duplicates_and_non_criteria(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "_CRITERIA", dict(base._CRITERIA))
    with pytest.raises(ConfigError, match="'l1' is already registered"):
        register_criterion(get_criterion("l1"))
    with pytest.raises(TypeError, match="register_criterion"):
        register_criterion(object())  # type: ignore[arg-type]
