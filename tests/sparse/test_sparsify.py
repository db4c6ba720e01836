"""sparsify: exact counts, scopes, thresholds, overrides, iteration, and every error path."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn
from torch.nn.utils import parametrize

from prunekit.errors import ConfigError, NonFiniteWeightsError, NothingToPruneError
from prunekit.sparse import sparsify as sparsify_module
from prunekit.sparse.masks import apply_mask, masked_tensors
from prunekit.sparse.ranking import prune_count, smallest_k
from prunekit.sparse.report import sparsity_report
from prunekit.sparse.sparsify import SparsifyResult, sparsify
from prunekit.zoo import LeNet5

LENET_WEIGHTS = {"conv1.weight": 150, "conv2.weight": 2400, "fc1.weight": 48000,
                 "fc2.weight": 10080, "fc3.weight": 840}


def _torch_global_masks(model: nn.Module, amount: float) -> dict[str, torch.Tensor]:
    reference = copy.deepcopy(model)
    params = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured,
                                    amount=amount)
    return {f"{n}.weight": m.weight_mask.bool() for n, m in reference.named_modules()
            if hasattr(m, "weight_mask")}


# -- counts and equality with torch.nn.utils.prune -------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_global_l1_matches_torch_global_unstructured(lenet: LeNet5, sparsity: float) -> None:
    expected = _torch_global_masks(lenet, sparsity)
    result = sparsify(lenet, sparsity)
    masks = masked_tensors(lenet)
    assert list(masks) == list(LENET_WEIGHTS)
    for name, mask in masks.items():
        assert torch.equal(mask, expected[name]), name
    assert result.num_weights == sum(LENET_WEIGHTS.values())
    assert result.num_pruned == round(sparsity * result.num_weights)
    assert result.global_sparsity == result.num_pruned / result.num_weights


def test_prune_count_rounds_like_torch() -> None:
    for fraction, total in [(0.25, 10), (0.35, 10), (0.5, 5), (0.05, 30), (0.9, 61470)]:
        expected = torch_prune._compute_nparams_toprune(fraction, total)
        assert prune_count(fraction, total) == expected
    assert prune_count(0.25, 10) == 2  # half to even, as torch


def test_smallest_k_is_exact_and_breaks_ties_as_torch_topk() -> None:
    scores = torch.tensor([3.0, 1.0, 1.0, 0.0, 1.0, 5.0])
    for k in range(7):
        marked = smallest_k(scores, k)
        assert int(marked.sum()) == k
        reference = torch.zeros(6, dtype=torch.bool)
        reference[torch.topk(scores, k, largest=False).indices] = True
        assert torch.equal(marked, reference), k
    assert torch.equal(smallest_k(scores, 2), smallest_k(scores, 2))
    assert smallest_k(torch.tensor([-math.inf, 2.0, -math.inf]), 2).tolist() == [True, False, True]


def test_global_l1_matches_torch_with_ties_at_the_cut() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    with torch.no_grad():  # 40 equal magnitudes straddle the 50 % cut
        model[0].weight.copy_(torch.randn(8, 8).abs().round(decimals=1) + 0.5)
        model[0].weight[:5] = 0.3
        model[1].weight.copy_(model[0].weight.flip(0) * -1)
    expected = _torch_global_masks(model, 0.5)
    sparsify(model, 0.5)
    for name, mask in masked_tensors(model).items():
        assert torch.equal(mask, expected[name]), name


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.8])
def test_layer_scope_prunes_each_tensor_exactly(lenet: LeNet5, sparsity: float) -> None:
    result = sparsify(lenet, sparsity, scope="layer")
    for name, mask in masked_tensors(lenet).items():
        n = LENET_WEIGHTS[name]
        assert n - int(mask.sum()) == round(sparsity * n), name
        assert result.tensor_sparsity[name] == round(sparsity * n) / n
    weight = lenet.fc3.weight.detach().abs()
    kept = masked_tensors(lenet)["fc3.weight"]
    assert weight[kept].min() >= weight[~kept].max()


def _two_scales() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.Linear(20, 20))
    with torch.no_grad():
        model[0].weight.mul_(0.1)  # small-scale layer
    return model


def test_global_scope_prunes_the_small_scale_layer_more() -> None:
    globally, per_layer = _two_scales(), _two_scales()
    g = sparsify(globally, 0.5, scope="global").tensor_sparsity
    p = sparsify(per_layer, 0.5, scope="layer").tensor_sparsity
    assert p == {"0.weight": 0.5, "1.weight": 0.5}
    assert g["0.weight"] > 0.8 and g["1.weight"] < 0.2
    assert (g["0.weight"] + g["1.weight"]) / 2 == pytest.approx(0.5)


def test_normalized_global_evens_out_the_scales() -> None:
    model = _two_scales()
    g = sparsify(model, 0.5, criterion="normalized").tensor_sparsity
    assert 0.3 < g["0.weight"] < 0.7 and 0.3 < g["1.weight"] < 0.7


# -- threshold -------------------------------------------------------------------------------


def test_threshold_prunes_exactly_the_entries_at_or_below_tau(mlp: nn.Sequential) -> None:
    with torch.no_grad():
        mlp[0].weight[0, 0] = 0.1
        mlp[0].weight[0, 1] = -0.1
    expected = {f"{i}.weight": mlp[i].weight.detach().abs() > 0.1 for i in (0, 2)}
    result = sparsify(mlp, threshold=0.1)
    for name, mask in masked_tensors(mlp).items():
        assert torch.equal(mask, expected[name]), name
    assert not masked_tensors(mlp)["0.weight"][0, :2].any()
    assert result.num_pruned == sum(int((~m).sum()) for m in expected.values())
    assert result.config.threshold == 0.1 and result.config.sparsity is None


def test_normalized_threshold_uses_the_share_of_the_layer_sum(mlp: nn.Sequential) -> None:
    tau = 1e-3
    expected = {}
    for i in (0, 2):
        w = mlp[i].weight.detach().abs()
        expected[f"{i}.weight"] = w / w.sum() > tau
    sparsify(mlp, threshold=tau, criterion="normalized")
    for name, mask in masked_tensors(mlp).items():
        assert torch.equal(mask, expected[name]), name


def test_l2_threshold_compares_squares(mlp: nn.Sequential) -> None:
    expected = mlp[2].weight.detach().square() > 0.01
    sparsify(mlp, threshold=0.01, criterion="l2")
    assert torch.equal(masked_tensors(mlp)["2.weight"], expected)


# -- outputs, overrides, ignore, layer types --------------------------------------------------


def test_sparsity_zero_leaves_outputs_identical(lenet: LeNet5, lenet_input: torch.Tensor) -> None:
    before = lenet(lenet_input)
    result = sparsify(lenet, 0.0)
    assert torch.equal(lenet(lenet_input), before)
    assert result.num_pruned == 0 and all(m.all() for m in masked_tensors(lenet).values())


def test_overrides_take_layers_out_of_the_global_ranking(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.8, overrides={"fc3": 0.1, "conv1": 0.0})
    masks = masked_tensors(lenet)
    assert 840 - int(masks["fc3.weight"].sum()) == round(0.1 * 840)
    assert masks["conv1.weight"].all()
    rest = [n for n in LENET_WEIGHTS if n not in ("fc3.weight", "conv1.weight")]
    rest_total = sum(LENET_WEIGHTS[n] for n in rest)
    assert sum(LENET_WEIGHTS[n] - int(masks[n].sum()) for n in rest) == round(0.8 * rest_total)
    assert result.config.overrides == {"fc3": 0.1, "conv1": 0.0}


def test_overrides_with_threshold(lenet: LeNet5) -> None:
    sparsify(lenet, threshold=0.05, overrides={"fc3": 0.5})
    masks = masked_tensors(lenet)
    assert 840 - int(masks["fc3.weight"].sum()) == 420
    assert torch.equal(masks["fc2.weight"], lenet.fc2.weight.detach().abs() > 0.05)


def test_ignore_by_module_and_by_name(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.5, ignore=[lenet.conv1, "fc3"])
    assert set(masked_tensors(lenet)) == {"conv2.weight", "fc1.weight", "fc2.weight"}
    assert result.config.ignore == ("conv1", "fc3")
    assert result.num_weights == 2400 + 48000 + 10080


def test_ignore_a_container_skips_its_subtree() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)), nn.Linear(4, 2))
    sparsify(model, 0.5, ignore=model[0])
    assert set(masked_tensors(model)) == {"1.weight"}


def test_biases_and_norms_untouched_conv_transpose_pruned() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ConvTranspose2d(8, 4, 2))
    bn_before = copy.deepcopy(model[1].state_dict())
    bias_before = model[0].bias.detach().clone()
    sparsify(model, 0.5)
    assert set(masked_tensors(model)) == {"0.weight", "2.weight"}
    assert torch.equal(model[0].bias, bias_before)
    for key, value in model[1].state_dict().items():
        assert torch.equal(value, bn_before[key])


def test_layers_selects_the_module_types(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.5, layers=(nn.Linear,))
    assert set(masked_tensors(lenet)) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert result.config.layers == ("Linear",)


# -- criteria and iteration ------------------------------------------------------------------


def test_l2_ranks_like_l1_for_single_weights(lenet: LeNet5) -> None:
    other = copy.deepcopy(lenet)
    sparsify(lenet, 0.7, criterion="l1")
    sparsify(other, 0.7, criterion="l2")
    for name, mask in masked_tensors(lenet).items():
        assert torch.equal(mask, masked_tensors(other)[name])


def test_random_is_seeded(mlp: nn.Sequential) -> None:
    a, b, c = copy.deepcopy(mlp), copy.deepcopy(mlp), copy.deepcopy(mlp)
    sparsify(a, 0.5, criterion="random", seed=1)
    sparsify(b, 0.5, criterion="random", seed=1)
    sparsify(c, 0.5, criterion="random", seed=2)
    ma, mb, mc = masked_tensors(a), masked_tensors(b), masked_tensors(c)
    assert all(torch.equal(ma[n], mb[n]) for n in ma)
    assert not all(torch.equal(ma[n], mc[n]) for n in ma)
    assert sum(int((~m).sum()) for m in ma.values()) == round(0.5 * (16 * 32 + 32 * 8))


def test_iterative_pruning_keeps_earlier_pruned_entries(lenet: LeNet5) -> None:
    sparsify(lenet, 0.5)
    first = {n: m.clone() for n, m in masked_tensors(lenet).items()}
    with torch.no_grad():  # a pruned weight "regrows" in the stored original: still pruned
        original = lenet.fc1.parametrizations.weight.original
        original[~first["fc1.weight"]] = 10.0
    result = sparsify(lenet, 0.8, scope="layer")
    for name, mask in masked_tensors(lenet).items():
        assert not (mask & ~first[name]).any(), name
        n = LENET_WEIGHTS[name]
        assert n - int(mask.sum()) == max(round(0.8 * n), n - int(first[name].sum()))
    assert result.global_sparsity >= 0.8


def test_iterating_to_a_lower_sparsity_keeps_what_is_pruned(mlp: nn.Sequential) -> None:
    first = sparsify(mlp, 0.6)
    again = sparsify(mlp, 0.2)
    assert again.num_pruned == first.num_pruned


def test_result_is_frozen_and_reports_per_tensor(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.9)
    assert isinstance(result, SparsifyResult)
    with pytest.raises(AttributeError):
        result.global_sparsity = 0.0  # type: ignore[misc]
    assert set(result.tensor_sparsity) == set(LENET_WEIGHTS)
    weighted = sum(result.tensor_sparsity[n] * LENET_WEIGHTS[n] for n in LENET_WEIGHTS)
    assert weighted == pytest.approx(result.num_pruned)
    assert result.config.criterion == "l1" and result.config.scope == "global"


def test_sparsity_report_counts_zeros_of_the_effective_weight(lenet: LeNet5) -> None:
    assert sparsity_report(lenet) == dict.fromkeys(LENET_WEIGHTS, 0.0)
    result = sparsify(lenet, 0.75, ignore=["fc3"])
    report = sparsity_report(lenet)
    assert list(report) == list(LENET_WEIGHTS)
    assert report["fc3.weight"] == 0.0
    for name, value in result.tensor_sparsity.items():
        assert report[name] == pytest.approx(value)


# -- errors leave the model exactly as it was -----------------------------------------------


def _snapshot(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list]:
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    masks = {k: v.clone() for k, v in masked_tensors(model).items()}
    parametrized = [n for n, m in model.named_modules() if parametrize.is_parametrized(m)]
    return state, masks, parametrized


def _assert_unchanged(model: nn.Module, before: tuple[Any, Any, Any]) -> None:
    state, masks, parametrized = _snapshot(model)
    assert list(state) == list(before[0])
    for key, value in state.items():  # NaN-aware, bit-exact
        torch.testing.assert_close(value, before[0][key], rtol=0, atol=0, equal_nan=True)
    assert list(masks) == list(before[1])
    assert all(torch.equal(masks[k], before[1][k]) for k in masks)
    assert parametrized == before[2]


BAD_INPUTS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"sparsity": 1.0}, ConfigError, r"sparsity=1.0 is out of range"),
    ({"sparsity": -0.1}, ConfigError, r"sparsity=-0.1"),
    ({"sparsity": math.nan}, ConfigError, r"sparsity=nan"),
    ({"sparsity": "0.5"}, TypeError, r"sparsity must be a float"),
    ({"threshold": -1.0}, ConfigError, r"threshold=-1.0.*>= 0"),
    ({"threshold": math.inf}, ConfigError, r"threshold=inf"),
    ({"sparsity": 0.5, "threshold": 0.1}, ConfigError, r"both sparsity=0.5 and threshold=0.1"),
    ({}, ConfigError, r"neither sparsity nor threshold"),
    ({"sparsity": 0.5, "criterion": "l3"}, ConfigError, r"criterion='l3'.*l1, l2"),
    ({"sparsity": 0.5, "pattern": "diagonal"}, ConfigError, r"pattern='diagonal'.*kernel, block"),
    ({"sparsity": 0.5, "scope": "local"}, ConfigError, r"scope='local'.*global, layer"),
    ({"sparsity": 0.5, "ignore": ["conv1", "conv2", "fc1", "fc2", "fc3"]}, NothingToPruneError,
     r"no weights to prune"),
    ({"sparsity": 0.5, "layers": (nn.LSTM,)}, NothingToPruneError, r"no LSTM layers"),
    ({"sparsity": 0.5, "layers": ("Linear",)}, TypeError, r"layers must hold nn.Module classes"),
    ({"sparsity": 0.5, "ignore": ["fc9"]}, ConfigError, r"ignore entry 'fc9'.*'conv1'"),
    ({"sparsity": 0.5, "ignore": [nn.Linear(2, 2)]}, ConfigError, r"not a submodule"),
    ({"sparsity": 0.5, "overrides": {"fc9": 0.5}}, ConfigError, r"overrides key 'fc9'.*'fc1'"),
    ({"sparsity": 0.5, "overrides": {"fc1": 1.5}}, ConfigError, r"overrides\['fc1'\]=1.5"),
    ({"pattern": "2:4"}, ConfigError, r"conv1.weight \(size 1.*M=4"),
    ({"pattern": "2:4", "sparsity": 0.7, "ignore": ["conv1", "conv2"]}, ConfigError,
     r"sparsity=0.7 conflicts with pattern='2:4'.*0.5"),
    ({"pattern": "2:4", "threshold": 0.1}, ConfigError, r"threshold=0.1 does not apply"),
    ({"pattern": "2:4", "overrides": {"fc1": 0.9}, "ignore": ["conv1", "conv2"]}, ConfigError,
     r"overrides\['fc1'\]=0.9 conflicts"),
    ({"sparsity": 0.5, "pattern": "kernel"}, ConfigError, r"fc1.weight.*no kernel"),
    ({"sparsity": 0.5, "pattern": "block", "block_shape": (0, 4)}, ConfigError, r"block_shape="),
    ({"sparsity": 0.5, "seed": 1.5}, TypeError, r"seed must be an int"),
]


@pytest.mark.parametrize("premasked", [False, True], ids=["fresh", "masked"])
@pytest.mark.parametrize(("kwargs", "error", "needle"), BAD_INPUTS)
def test_bad_input_is_a_clear_error_and_changes_nothing(
    lenet: LeNet5, premasked: bool, kwargs: dict[str, Any], error: type[Exception], needle: str
) -> None:
    if premasked:
        sparsify(lenet, 0.3, layers=(nn.Linear,))
    before = _snapshot(lenet)
    with pytest.raises(error, match=needle):
        sparsify(lenet, **kwargs)
    _assert_unchanged(lenet, before)


@pytest.mark.parametrize("premasked", [False, True], ids=["fresh", "masked"])
def test_non_finite_weights_name_the_tensor(lenet: LeNet5, premasked: bool) -> None:
    if premasked:
        sparsify(lenet, 0.3)
        stored = lenet.fc2.parametrizations.weight.original
    else:
        stored = lenet.fc2.weight
    with torch.no_grad():
        stored[3, 4] = math.nan
        stored[5, 6] = math.inf
    before = _snapshot(lenet)
    with pytest.raises(NonFiniteWeightsError, match=r"fc2.weight holds 2 NaN/inf.*ignore"):
        sparsify(lenet, 0.5)
    _assert_unchanged(lenet, before)


def test_criterion_needing_data_is_rejected(lenet: LeNet5) -> None:
    before = _snapshot(lenet)
    with pytest.raises(ConfigError, match=r"'taylor' needs calibration data.*data="):
        sparsify(lenet, 0.5, criterion="taylor")
    _assert_unchanged(lenet, before)


def test_tied_weights_are_rejected() -> None:
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Linear(4, 4))
    model[1].weight = shared.weight
    with pytest.raises(ConfigError, match=r"1.weight and 0.weight are the same Parameter"):
        sparsify(model, 0.5)
    assert masked_tensors(model) == {}


@pytest.mark.parametrize("premasked", [False, True], ids=["fresh", "masked"])
def test_failure_while_applying_rolls_back(
    lenet: LeNet5, premasked: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if premasked:
        sparsify(lenet, 0.3, layers=(nn.Conv2d, nn.Linear))
    before = _snapshot(lenet)
    calls = {"n": 0}

    def flaky(module: nn.Module, name: str, mask: torch.Tensor) -> None:
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("disk on fire")
        apply_mask(module, name, mask)

    monkeypatch.setattr(sparsify_module, "apply_mask", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        sparsify(lenet, 0.9)
    _assert_unchanged(lenet, before)


def test_n_of_m_after_unstructured_keeps_both(mlp: nn.Sequential) -> None:
    sparsify(mlp, 0.3)
    first = {n: m.clone() for n, m in masked_tensors(mlp).items()}
    result = sparsify(mlp, pattern="2:4")
    for name, mask in masked_tensors(mlp).items():
        assert not (mask & ~first[name]).any()
        assert bool((mask.reshape(-1, 4).sum(dim=1) <= 2).all())
        # a group keeps min(2, what was still alive) weights
        alive = first[name].reshape(-1, 4).sum(dim=1).clamp(max=2)
        assert torch.equal(mask.reshape(-1, 4).sum(dim=1), alive)
    assert result.global_sparsity >= 0.5


def test_ignore_takes_a_single_name(lenet: LeNet5) -> None:
    sparsify(lenet, 0.5, ignore="fc1")
    assert "fc1.weight" not in masked_tensors(lenet)


def test_sparsity_report_rejects_bad_layers(lenet: LeNet5) -> None:
    with pytest.raises(TypeError, match=r"layers must hold nn\.Module classes"):
        sparsity_report(lenet, layers=(3,))  # type: ignore[arg-type]
