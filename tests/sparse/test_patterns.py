"""Granularities: unit scores, expansion back to the weight, and sparsify with each one."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.importance import get_criterion
from prunekit.sparse.masks import masked_tensors
from prunekit.sparse.patterns import (
    Block,
    Kernel,
    NofM,
    PatternOptions,
    Unstructured,
    get_pattern,
    pattern_names,
)
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5

L1 = get_criterion("l1")


def test_registry_names_and_n_of_m_parsing() -> None:
    assert pattern_names()[:3] == ["unstructured", "kernel", "block"]
    assert get_pattern("unstructured") == Unstructured()
    assert get_pattern("kernel") == Kernel()
    assert get_pattern("block", PatternOptions(block_shape=(4, 4))) == Block((4, 4))
    assert get_pattern("2:4") == NofM(2, 4)
    assert get_pattern(" 4 : 8 ").name == "4:8"
    assert get_pattern("1:3").fixed_sparsity == pytest.approx(2 / 3)


@pytest.mark.parametrize("spec", ["3:7x", "dense", "2/4", ""])
def test_unknown_pattern_lists_the_valid_ones(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"pattern=.*unstructured, kernel, block, N:M"):
        get_pattern(spec)


@pytest.mark.parametrize("spec", ["4:2", "0:4", "4:4"])
def test_n_of_m_needs_n_below_m(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"0 < N < M"):
        get_pattern(spec)


@pytest.mark.parametrize("shape", [(1, 0), (2,), (1, 2, 3), (0, 4), "1x4", (1.0, 4)])
def test_bad_block_shape(shape: object) -> None:
    with pytest.raises(ConfigError, match="block_shape="):
        get_pattern("block", PatternOptions(block_shape=shape))  # type: ignore[arg-type]


def test_kernel_units_are_conv_kernels() -> None:
    w = torch.randn(3, 2, 5, 5)
    units = Kernel().unit_scores(w.abs(), L1)
    assert units.shape == (3, 2)
    assert torch.allclose(units, w.abs().sum(dim=(2, 3)))
    keep = torch.tensor([[True, False], [False, True], [True, True]])
    mask = Kernel().expand(keep, w.shape)
    assert mask.shape == w.shape
    assert torch.equal(mask.flatten(2).all(dim=2), keep)
    assert torch.equal(mask.flatten(2).any(dim=2), keep)


def test_kernel_rejects_linear_weights_naming_the_tensor() -> None:
    with pytest.raises(ConfigError, match=r"fc1.weight has shape \(120, 400\).*layers="):
        Kernel().validate("fc1.weight", torch.Size([120, 400]))


def test_block_units_tile_the_2d_view() -> None:
    w = torch.arange(24.0).reshape(4, 6)
    units = Block((2, 3)).unit_scores(w, L1)
    assert units.shape == (2, 2)
    assert units[0, 0] == w[:2, :3].sum() and units[1, 1] == w[2:, 3:].sum()
    keep = torch.tensor([[True, False], [False, True]])
    mask = Block((2, 3)).expand(keep, w.shape)
    assert torch.equal(mask[:2, :3], torch.ones(2, 3, dtype=torch.bool))
    assert not mask[:2, 3:].any() and not mask[2:, :3].any() and mask[2:, 3:].all()


def test_block_edge_blocks_are_padded_with_their_mean() -> None:
    w = torch.tensor([[1.0, 1.0, 1.0, 1.0, 2.0, 4.0]])  # second (1, 4) block holds 2 weights
    units = Block((1, 4)).unit_scores(w, L1)
    assert torch.allclose(units, torch.tensor([[4.0, 12.0]]))  # 2 + 4 + 3 + 3
    mask = Block((1, 4)).expand(torch.tensor([[False, True]]), w.shape)
    assert mask.tolist() == [[False] * 4 + [True] * 2]
    alive = Block((1, 4)).unit_alive(torch.tensor([[True] * 4 + [False] * 2]))
    assert alive.tolist() == [[True, False]]


def test_block_flattens_conv_kernels_into_columns() -> None:
    w = torch.randn(4, 2, 3, 3)  # 2-D view (4, 18)
    units = Block((2, 6)).unit_scores(w.abs(), L1)
    assert units.shape == (2, 3)
    assert torch.allclose(units[1, 2], w.reshape(4, 18)[2:, 12:].abs().sum())


def test_n_of_m_keeps_the_n_largest_of_each_group() -> None:
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.2, 3.0, 1.0, 2.0, 0.0]])
    keep = NofM(2, 4).select(scores)
    assert keep is not None
    assert keep.tolist() == [[False, True, True, False, True, False, True, False]]


def test_n_of_m_ties_keep_the_lower_index() -> None:
    keep = NofM(2, 4).select(torch.ones(1, 4))
    assert keep is not None and keep.tolist() == [[True, True, False, False]]


def test_n_of_m_groups_conv_input_channels() -> None:
    scores = torch.rand(3, 8, 2, 2, generator=torch.Generator().manual_seed(0))
    keep = NofM(1, 4).select(scores)
    assert keep is not None and keep.shape == scores.shape
    groups = keep.reshape(3, 2, 4, 2, 2)  # (out, group, M, kh, kw)
    assert torch.equal(groups.sum(dim=2), torch.ones(3, 2, 2, 2, dtype=torch.long))
    best = scores.reshape(3, 2, 4, 2, 2).argmax(dim=2, keepdim=True)
    assert groups.gather(2, best).all()


def test_n_of_m_rejects_a_non_divisible_dimension() -> None:
    with pytest.raises(ConfigError, match=r"fc2.weight \(size 6, shape \(3, 6\)\).*M=4"):
        NofM(2, 4).validate("fc2.weight", torch.Size([3, 6]))
    with pytest.raises(ConfigError, match=r"norm.weight"):
        NofM(2, 4).validate("norm.weight", torch.Size([8]))


# -- through sparsify --------------------------------------------------------------------


def test_sparsify_kernel_zeros_whole_kernels_exactly(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.5, pattern="kernel", layers=(nn.Conv2d,))
    for name, kernels in (("conv1", 6), ("conv2", 96)):
        mask = masked_tensors(lenet)[f"{name}.weight"].flatten(2)
        assert torch.equal(mask.all(dim=2), mask.any(dim=2))  # each kernel all-in or all-out
        assert kernels > 0
    total_kernels = 6 + 96
    pruned_kernels = sum(
        int((~m.flatten(2).any(dim=2)).sum()) for m in masked_tensors(lenet).values()
    )
    assert pruned_kernels == round(0.5 * total_kernels)
    assert result.config.pattern == "kernel"


def test_sparsify_kernel_on_linear_is_a_clear_error(lenet: LeNet5) -> None:
    with pytest.raises(ConfigError, match=r"fc1.weight.*no kernel dimensions"):
        sparsify(lenet, 0.5, pattern="kernel")
    assert masked_tensors(lenet) == {}


def test_sparsify_block_zeros_whole_blocks(mlp: nn.Sequential) -> None:
    sparsify(mlp, 0.5, pattern="block", block_shape=(4, 4), scope="layer")
    for name, mask in masked_tensors(mlp).items():
        rows, cols = mask.shape
        blocks = mask.reshape(rows // 4, 4, cols // 4, 4)
        assert torch.equal(blocks.all(dim=(1, 3)), blocks.any(dim=(1, 3))), name
        n_blocks = (rows // 4) * (cols // 4)
        assert int((~blocks.any(dim=(1, 3))).sum()) == round(0.5 * n_blocks)


def test_sparsify_block_with_remainders_on_lenet(lenet: LeNet5) -> None:
    result = sparsify(lenet, 0.6, pattern="block", block_shape=(4, 4))
    conv1 = masked_tensors(lenet)["conv1.weight"].reshape(6, 25)  # 6 % 4 and 25 % 4 != 0
    padded = torch.zeros(8, 28, dtype=torch.bool)
    padded[:6, :25] = conv1
    blocks = padded.reshape(2, 4, 7, 4)
    real = torch.zeros(8, 28, dtype=torch.bool)
    real[:6, :25] = True
    real_blocks = real.reshape(2, 4, 7, 4)
    # within the real part of each block, all-kept or all-pruned
    kept_any = (blocks & real_blocks).any(dim=(1, 3))
    kept_all = (blocks | ~real_blocks).all(dim=(1, 3))
    assert torch.equal(kept_any, kept_all)
    assert 0.5 < result.global_sparsity < 0.7


@pytest.mark.parametrize(("spec", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8), ("1:4", 1, 4)])
def test_sparsify_n_of_m_holds_in_every_group(spec: str, n: int, m: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Conv1d(8, 16, 3))
    result = sparsify(model, pattern=spec)
    for name, mask in masked_tensors(model).items():
        groups = mask.movedim(1, -1).reshape(-1, m)
        assert torch.equal(groups.sum(dim=1), torch.full((groups.shape[0],), n)), name
        assert result.tensor_sparsity[name] == pytest.approx(1 - n / m)
    assert result.global_sparsity == pytest.approx(1 - n / m)
    assert result.config.sparsity == pytest.approx(1 - n / m)


def test_sparsify_n_of_m_accepts_the_matching_sparsity(mlp: nn.Sequential) -> None:
    assert sparsify(mlp, 0.5, pattern="2:4").global_sparsity == 0.5


def test_sparsify_n_of_m_keeps_the_largest_magnitudes(mlp: nn.Sequential) -> None:
    weight = mlp[0].weight.detach().clone()
    sparsify(mlp, pattern="2:4")
    mask = masked_tensors(mlp)["0.weight"]
    groups, keep = weight.abs().reshape(-1, 4), mask.reshape(-1, 4)
    assert bool((groups[keep].reshape(-1, 2).min(1).values
                 >= groups[~keep].reshape(-1, 2).max(1).values).all())


def test_sparsify_n_of_m_on_lenet_names_the_layer(lenet: LeNet5) -> None:
    with pytest.raises(ConfigError, match=r"conv1.weight \(size 1.*M=4"):
        sparsify(lenet, pattern="2:4")
    with pytest.raises(ConfigError, match=r"fc3.weight \(size 84.*M=8"):
        sparsify(lenet, pattern="4:8", ignore=["conv1", "conv2"])
    assert masked_tensors(lenet) == {}
    assert math.isclose(sparsify(lenet, pattern="2:4", ignore=["conv1", "conv2"]).global_sparsity,
                        0.5)


def test_sparsify_kernel_ranks_kernels_by_the_criterion_norm() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 2, bias=False)
    with torch.no_grad():  # kernel (0,0): L1 4, L2 2; kernel (0,1): L1 3, L2 3
        conv.weight.fill_(10.0)
        conv.weight[0, 0] = torch.full((2, 2), 1.0)
        conv.weight[0, 1] = torch.tensor([[3.0, 0.0], [0.0, 0.0]])
    by_l1, by_l2 = copy.deepcopy(conv), copy.deepcopy(conv)
    sparsify(by_l1, 1 / 6, pattern="kernel", criterion="l1")  # one kernel of six
    sparsify(by_l2, 1 / 6, pattern="kernel", criterion="l2")
    assert masked_tensors(by_l1)["weight"].flatten(2).any(2)[0].tolist() == [True, False]
    assert masked_tensors(by_l2)["weight"].flatten(2).any(2)[0].tolist() == [False, True]


def test_sparsify_kernel_threshold_and_layer_scope(lenet: LeNet5) -> None:
    other = copy.deepcopy(lenet)
    expected = lenet.conv2.weight.detach().abs().sum(dim=(2, 3)) > 1.0
    sparsify(lenet, threshold=1.0, pattern="kernel", layers=(nn.Conv2d,))
    assert torch.equal(masked_tensors(lenet)["conv2.weight"].flatten(2).any(2), expected)
    sparsify(other, 0.5, pattern="kernel", scope="layer", layers=(nn.Conv2d,))
    for name, kernels in (("conv1.weight", 6), ("conv2.weight", 96)):
        alive = masked_tensors(other)[name].flatten(2).any(2)
        assert kernels - int(alive.sum()) == round(0.5 * kernels)


def test_sparsify_takes_criterion_and_pattern_objects(mlp: nn.Sequential) -> None:
    result = sparsify(mlp, criterion=get_criterion("l2"), pattern=NofM(1, 4))
    assert result.config.criterion == "l2" and result.config.pattern == "1:4"
    assert result.global_sparsity == 0.75
