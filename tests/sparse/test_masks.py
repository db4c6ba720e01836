"""Masks made by sparsify last through training, strip cleanly and round-trip state_dict."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from prunekit.sparse.masks import apply_mask, get_mask, masked_tensors, strip
from prunekit.sparse.sparsify import sparsify
from prunekit.zoo import LeNet5


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, steps: int) -> None:
    model.train()
    target = torch.randint(0, 10, (x.shape[0],), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()


OPTIMIZERS: dict[str, Callable[[nn.Module], torch.optim.Optimizer]] = {
    "sgd-momentum-wd": lambda m: torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9,
                                                 weight_decay=1e-2),
    "adam": lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
    "adamw": lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1),
}


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS.values(), ids=list(OPTIMIZERS))
@pytest.mark.parametrize("before_masking", [False, True], ids=["opt-after", "opt-before"])
def test_pruned_weights_stay_zero_through_training(
    lenet: LeNet5, lenet_input: torch.Tensor,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer], before_masking: bool,
) -> None:
    optimizer = make_optimizer(lenet) if before_masking else None
    result = sparsify(lenet, 0.8)
    optimizer = optimizer or make_optimizer(lenet)
    masks = {n: m.clone() for n, m in masked_tensors(lenet).items()}
    weights_before = {n: lenet.get_submodule(n.rpartition(".")[0]).weight.detach().clone()
                      for n in masks}
    _train(lenet, optimizer, lenet_input, steps=5)
    for name, mask in masks.items():
        weight = lenet.get_submodule(name.rpartition(".")[0]).weight
        assert not weight[~mask].any(), name
        assert not torch.equal(weight.detach(), weights_before[name]), f"{name} did not train"
    zeros = sum(int((lenet.get_submodule(n.rpartition(".")[0]).weight == 0).sum())
                for n in masks)
    assert zeros >= result.num_pruned


def test_strip_keeps_outputs_and_leaves_no_parametrizations(
    lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    sparsify(lenet, 0.9, scope="layer")
    masks = {n: m.clone() for n, m in masked_tensors(lenet).items()}
    before = lenet(lenet_input)
    strip(lenet)
    assert torch.equal(lenet(lenet_input), before)
    assert masked_tensors(lenet) == {}
    assert not any(parametrize.is_parametrized(m) for m in lenet.modules())
    assert all(isinstance(p, nn.Parameter) for p in (lenet.fc1.weight, lenet.conv1.weight))
    for name, mask in masks.items():
        assert not lenet.get_submodule(name.rpartition(".")[0]).weight[~mask].any()
    assert set(lenet.state_dict()) == set(LeNet5().state_dict())


def test_state_dict_round_trips_into_a_masked_fresh_model(
    lenet: LeNet5, lenet_input: torch.Tensor
) -> None:
    sparsify(lenet, 0.7)
    state = lenet.state_dict()
    assert "fc1.parametrizations.weight.original" in state
    assert "fc1.parametrizations.weight.0.mask" in state
    fresh = LeNet5().eval()
    sparsify(fresh, 0.0)  # attach all-keep masks so the keys match
    fresh.load_state_dict(state)
    for name, mask in masked_tensors(lenet).items():
        assert torch.equal(masked_tensors(fresh)[name], mask)
    assert torch.equal(fresh(lenet_input), lenet(lenet_input))


def test_apply_mask_replaces_and_get_mask_reads(mlp: nn.Sequential) -> None:
    layer = mlp[0]
    keep = torch.rand(layer.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    apply_mask(layer, "weight", keep)
    mask = get_mask(layer, "weight")
    assert mask is not None and torch.equal(mask, keep)
    apply_mask(layer, "weight", torch.ones_like(keep))
    assert len(layer.parametrizations.weight) == 1
    assert get_mask(mlp[2], "weight") is None
