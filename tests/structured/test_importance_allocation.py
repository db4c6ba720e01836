"""Group criteria (l1, l2, random, bn_scale, fpgm; aggregation, normalisation, the BN
penalty) and allocation (uniform, per-layer, global, min_keep, round_to)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.allocation.ratio import Allocation, allocate
from prunekit.errors import ConfigError
from prunekit.graph.dependency import Group, Member
from prunekit.importance.group import (
    bn_l1_penalty,
    get_group_criterion,
    group_criterion_names,
    score_groups,
)
from prunekit.structured import analyze


def _chain() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1, bias=False), nn.BatchNorm2d(4),
                          nn.Conv2d(4, 3, 1, bias=False))
    with torch.no_grad():
        filters = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(4, 1, 1, 1)
        model[0].weight.copy_(filters.expand(4, 2, 1, 1))
        model[2].weight.zero_()
        model[1].weight.copy_(torch.tensor([4.0, 0.1, 2.0, 1.0]))
    return model.eval()


def test_registry_lists_the_criteria() -> None:
    assert {"l1", "l2", "random", "bn_scale", "fpgm"} <= set(group_criterion_names())
    with pytest.raises(ConfigError, match="importance"):
        get_group_criterion("nope")


def test_l1_and_l2_are_filter_norms() -> None:
    model, x = _chain(), torch.randn(1, 2, 3, 3)
    found = analyze(model, x, importance="l1")
    (group,) = found.graph.groups
    l1 = found.scores[0]
    # conv filter |w| sums (2 entries each) + BN |γ| + |β|; next conv's columns are zero
    bn = model[1]
    expected = torch.tensor([2.0, 4.0, 6.0, 8.0]) + bn.weight.abs() + bn.bias.abs()
    torch.testing.assert_close(l1, expected.detach())
    l2 = analyze(model, x, importance="l2").scores[0]
    conv = torch.tensor([2.0, 8.0, 18.0, 32.0]).sqrt()  # ‖filter‖₂ of the first conv
    norm = (bn.weight.square() + bn.bias.square()).sqrt()
    torch.testing.assert_close(l2, (conv + norm).detach())
    assert group.size == 4


def test_bn_scale_ranks_by_gamma() -> None:
    model, x = _chain(), torch.randn(1, 2, 3, 3)
    scores = analyze(model, x, importance="bn_scale").scores[0]
    torch.testing.assert_close(scores, torch.tensor([4.0, 0.1, 2.0, 1.0]))


def test_fpgm_scores_outliers_high() -> None:
    model = nn.Sequential(nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0], [1.1, 0, 0], [0.9, 0, 0],
                                            [-5.0, 0, 0]]))
    scores = analyze(model, torch.randn(2, 3), importance="fpgm").scores[0]
    assert int(scores.argmax()) == 3  # farthest from the others: least redundant
    assert int(scores.argmin()) == 0  # the geometric median: most redundant


def test_random_is_seeded() -> None:
    model, x = _chain(), torch.randn(1, 2, 3, 3)
    one = analyze(model, x, importance="random", seed=1).scores[0]
    two = analyze(model, x, importance="random", seed=1).scores[0]
    other = analyze(model, x, importance="random", seed=2).scores[0]
    assert torch.equal(one, two) and not torch.equal(one, other)


def test_aggregation_and_normalization_options() -> None:
    model, x = _chain(), torch.randn(1, 2, 3, 3)
    total = analyze(model, x, importance="l1", aggregation="sum").scores[0]
    biggest = analyze(model, x, importance="l1", aggregation="max").scores[0]
    mean = analyze(model, x, importance="l1", aggregation="mean").scores[0]
    assert bool((biggest <= total).all()) and bool((mean <= total).all())
    normed = analyze(model, x, importance="l1", normalization="max").scores[0]
    assert float(normed.max()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="aggregation"):
        score_groups(get_group_criterion("l1"), [], aggregation="median")  # type: ignore[arg-type]


def test_bn_l1_penalty() -> None:
    model = _chain()
    penalty = bn_l1_penalty(model, 0.5)
    assert float(penalty.detach()) == pytest.approx(0.5 * 7.1)
    penalty.backward()
    assert model[1].weight.grad is not None
    with pytest.raises(ConfigError, match="BatchNorm"):
        bn_l1_penalty(nn.Linear(2, 2), 1e-4)
    with pytest.raises(ConfigError, match="strength"):
        bn_l1_penalty(model, -1.0)


def _group(size: int, name: str = "a") -> Group:
    units = torch.arange(size) + 10
    return Group(0, units, (Member("module", name, "out", units, True),))


def test_uniform_allocation_floor_and_rounding() -> None:
    group, score = _group(10), torch.arange(10.0)
    (mask,) = allocate([group], [score], Allocation(ratio=0.3))
    assert mask.tolist() == [False] * 3 + [True] * 7  # lowest scores go
    (mask,) = allocate([group], [score], Allocation(ratio=0.3, round_to=4))
    assert int(mask.sum()) == 8
    (mask,) = allocate([group], [score], Allocation(ratio=0.99))
    assert int(mask.sum()) == 1
    (mask,) = allocate([group], [score], Allocation(ratio=0.9, min_keep=0.5))
    assert int(mask.sum()) == 5


def test_round_to_counts_channels_of_multi_channel_units() -> None:
    units = torch.arange(4) + 10
    heads = Group(0, units, (Member("module", "q", "out", units.repeat_interleave(8), True),))
    (mask,) = allocate([heads], [torch.arange(4.0)], Allocation(ratio=0.5, round_to=8))
    assert int(mask.sum()) == 2  # 2 heads x 8 rows = 16, already a multiple of 8
    groups = Group(0, units, (Member("module", "c", "out", units.repeat_interleave(4), True),))
    (mask,) = allocate([groups], [torch.arange(4.0)], Allocation(ratio=0.75, round_to=8))
    assert int(mask.sum()) == 2  # 1 group x 4 channels rounds up to 2 groups = 8 channels


@pytest.mark.parametrize("name", ["llama", "resnext"])
def test_round_to_still_prunes_units_already_a_multiple_wide(name: str) -> None:
    from tests.structured.zoo import BY_NAME

    from prunekit.structured import prune

    entry = BY_NAME[name]
    plain = prune(entry.build().eval(), entry.example_inputs(), ratio=0.5)
    rounded = prune(entry.build().eval(), entry.example_inputs(), ratio=0.5, round_to=8)
    # heads of 8+ rows and ResNeXt groups of 8 channels need no rounding at all
    assert rounded.params_kept == pytest.approx(plain.params_kept)
    original = dict(entry.build().named_modules())
    for path, module in rounded.model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            width, before = (getattr(m, "out_features", None) or m.out_channels
                             for m in (module, original[path]))
            assert width % 8 == 0 or width == before, path


def test_per_layer_ratios_and_global_ranking() -> None:
    a, b = _group(4, "a"), _group(4, "b")
    masks = allocate([a, b], [torch.ones(4), torch.ones(4)], Allocation(ratios={"b": 0.5}))
    assert [int(m.sum()) for m in masks] == [4, 2]
    low, high = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])
    masks = allocate([a, b], [low, high], Allocation(ratio=0.5, global_ranking=True))
    assert [int(m.sum()) for m in masks] == [1, 3]  # a loses 3 (keeps 1), then b loses 1


def test_allocation_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="ratio"):
        Allocation(ratio=1.0)
    with pytest.raises(ConfigError, match="min_keep"):
        Allocation(min_keep=2.0)
    with pytest.raises(ConfigError, match="round_to"):
        Allocation(round_to=-1)


def test_gradient_criterion_reads_weight_view_grads() -> None:
    from tests.structured.zoo import BY_NAME, call

    from prunekit.structured import prune

    for name in ("resnet_basic", "vit", "lstm_classifier"):
        entry = BY_NAME[name]
        model, inputs = entry.build().eval(), entry.example_inputs()
        call(model, inputs).float().pow(2).mean().backward()
        result = prune(model, inputs, ratio=0.5, importance="taylor")
        assert result.params_kept < 0.6


def test_max_keep_prunes_every_group() -> None:
    a, b = _group(4, "a"), _group(4, "b")
    low, high = torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])
    masks = allocate([a, b], [low, high],
                     Allocation(ratio=0.25, global_ranking=True, max_keep=0.75))
    assert [int(m.sum()) for m in masks] == [3, 3]
    with pytest.raises(ConfigError, match="max_keep"):
        Allocation(min_keep=0.5, max_keep=0.25)
