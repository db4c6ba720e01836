"""OWL allocation: mean equals the target, more outliers keep more weights, outlier ratio."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.owl import outlier_ratio, owl_sparsities
from prunekit.llm.solvers import WandaSolver


def test_mean_is_target_and_order_follows_outliers() -> None:
    ratios = [0.01, 0.05, 0.02, 0.03, 0.011]
    out = owl_sparsities(ratios, 0.7, lam=0.08)
    assert sum(out) / len(out) == pytest.approx(0.7, abs=1e-12)
    assert max(out) - min(out) == pytest.approx(0.16)
    assert sorted(range(5), key=lambda i: out[i]) == sorted(range(5), key=lambda i: -ratios[i])


def test_equal_ratios_give_uniform_sparsity() -> None:
    assert owl_sparsities([0.2, 0.2, 0.2], 0.5, lam=0.1) == pytest.approx([0.5] * 3)


def test_errors() -> None:
    with pytest.raises(ConfigError, match="smaller lam"):
        owl_sparsities([0.0, 1.0], 0.95, lam=0.1)
    with pytest.raises(ConfigError, match=re.escape("lam=-0.1")):
        owl_sparsities([0.0, 1.0], 0.5, lam=-0.1)


def test_outlier_ratio_counts_scores_above_m_times_mean() -> None:
    layer = nn.Linear(8, 4, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.weight[0, 0] = 100.0
    solver = WandaSolver(layer)
    solver.add_batch(torch.ones(3, 8), layer(torch.ones(3, 8)))
    # 32 scores: 31 of √3 and one of 100·√3; mean = (31 + 100)/32·√3 ≈ 4.1·√3
    assert outlier_ratio({"w": solver}, m=5.0) == (1, 32)
    assert outlier_ratio({"w": solver}, m=30.0) == (0, 32)
