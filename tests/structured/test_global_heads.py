"""Global ranking counts channels: an attention head (a unit of ``head_dim`` channels) costs
``head_dim`` channels of the budget and competes with channels on its normalised score, so
``ratio`` is the fraction of all prunable channels removed, heads included; groups of
one-channel units are allocated as before."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
from tests.structured.zoo import BY_NAME, ViT
from torch import Tensor, nn

import prunekit as pk
from prunekit.allocation.ratio import Allocation, allocate, unit_width
from prunekit.graph.dependency import Group, Member
from prunekit.structured import PrunedMultiheadAttention, analyze


def _group(size: int, name: str, width: int = 1, index: int = 0) -> Group:
    units = torch.arange(size) + 100 * (index + 1)
    return Group(index, units, (Member("module", name, "out", units, True, width=width),))


def _removed(masks: list[Tensor]) -> list[int]:
    return [int((~m).sum()) for m in masks]


# --- the width of a unit -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "widths"), [
    ("vit", {16}),  # nn.MultiheadAttention: the heads dim, head_dim = 64 / 4
    ("transformer_encoder", {16}),
    ("gpt", {16}),  # fused c_attn holds 3 · 16 rows a head, c_proj's input 16: a head is 16
    ("tied_lm", {12}),
    ("llama", {16}),  # a key/value group: 16 rows of k_proj (and 2 query heads)
    ("swin", {16}),
    ("resnext", {8}),  # grouped convs: 8 channels a group
    ("lenet5", set()),  # conv2 feeding a flatten block is one channel, not 25 inputs of fc1
    ("resnet_basic", set()),
])
def test_unit_width_is_the_narrowest_slice_of_a_layer(name: str, widths: set[int]) -> None:
    entry = BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = analyze(entry.build().eval(), entry.example_inputs()).graph
    found = {unit_width(g) for g in graph.groups}
    assert found - {1} == widths


def test_unit_width_of_members_without_layers_is_one() -> None:
    units = torch.arange(3)
    group = Group(0, units, (Member("param", "bias_table", "axis1", units, True, axis=1),))
    assert unit_width(group) == 1
    assert unit_width(_group(4, "heads", width=16)) == 16


# --- the budget, on hand-made groups -----------------------------------------------------


def test_a_head_costs_head_dim_channels_of_the_budget() -> None:
    heads, mlp = _group(4, "attn", width=16), _group(64, "mlp", index=1)
    head_scores = torch.tensor([0.1, 1.3, 1.4, 1.5])  # head 0 clearly least important
    mlp_scores = torch.linspace(0.5, 1.5, 64)
    masks = allocate([heads, mlp], [head_scores, mlp_scores],
                     Allocation(ratio=0.5, global_ranking=True))
    # 128 channels, 64 go: head 0 (16) and the 48 lowest mlp channels; counted as one unit
    # each (34 of 68 units), the head left 33 channels and 49 of 128 went
    assert _removed(masks) == [1, 48]
    assert masks[0].tolist() == [False, True, True, True]


def test_a_head_wider_than_the_rest_of_the_budget_is_passed_over() -> None:
    heads, mlp = _group(4, "attn", width=16), _group(64, "mlp", index=1)
    head_scores = torch.tensor([0.1, 0.2, 1.3, 1.4])
    mlp_scores = torch.linspace(0.5, 1.5, 64)
    masks = allocate([heads, mlp], [head_scores, mlp_scores],
                     Allocation(ratio=0.2, global_ranking=True))
    # budget 25 of 128 channels: head 0 (16), head 1 does not fit in the 9 left, 9 channels
    assert _removed(masks) == [1, 9]


def test_max_keep_and_min_keep_count_heads_in_channels() -> None:
    heads, mlp = _group(4, "attn", width=16), _group(64, "mlp", index=1)
    scores = [torch.tensor([1.3, 1.4, 1.5, 1.6]), torch.linspace(0.5, 1.5, 64)]
    # max_keep=0.75 takes one head (16 channels) and 16 mlp channels whatever they score;
    # the other 32 of the 64 are the next mlp channels (a head counted as one: 17 more)
    masks = allocate([heads, mlp], scores,
                     Allocation(ratio=0.5, global_ranking=True, max_keep=0.75))
    assert _removed(masks) == [1, 48]
    # min_keep counts units: 0.75 keeps 3 of 4 heads and 48 of 64 channels
    scores[0] = torch.tensor([0.1, 0.2, 1.3, 1.4])
    masks = allocate([heads, mlp], scores,
                     Allocation(ratio=0.5, global_ranking=True, min_keep=0.75))
    assert _removed(masks) == [1, 16]


def test_max_keep_ranks_the_rest_above_the_units_it_took() -> None:
    a, b = _group(4, "a"), _group(4, "b", index=1)
    low, mid = torch.tensor([0.1, 0.2, 0.9, 0.95]), torch.tensor([0.3, 0.4, 0.5, 0.6])
    masks = allocate([a, b], [low, mid],
                     Allocation(ratio=0.5, global_ranking=True, max_keep=0.75))
    # max_keep takes 0.1 and 0.3; the two lowest left are 0.2 and 0.4, not 0.2 and 0.9
    assert low[~masks[0]].tolist() == pytest.approx([0.1, 0.2])
    assert mid[~masks[1]].tolist() == pytest.approx([0.3, 0.4])


def _reference_counts(sizes: list[int], scores: list[Tensor], config: Allocation) -> list[int]:
    """Units kept per group by the definition, every unit one channel: max_keep takes each
    group's lowest, then the lowest of the rest go, down to min_keep, until ``ratio`` of all
    units went. With max_keep=1 it is the loop global ranking ran before widths counted."""
    ceilings = [max(1, math.floor(config.max_keep * s + 1e-9)) for s in sizes]
    floors = [min(s, max(1, math.ceil(config.min_keep * s))) for s in sizes]
    budget = math.floor(config.ratio * sum(sizes) + 1e-9) - sum(
        s - c for s, c in zip(sizes, ceilings, strict=True))
    rest = sorted((float(v), gi) for gi, score in enumerate(scores)
                  for v in sorted(score.tolist())[sizes[gi] - ceilings[gi]:])
    keep = list(ceilings)
    for _, gi in rest:
        if budget <= 0:
            break
        if keep[gi] > floors[gi]:
            keep[gi] -= 1
            budget -= 1
    return [max(min(k, c), f) for k, c, f in zip(keep, ceilings, floors, strict=True)]


def test_one_channel_units_are_ranked_by_the_definition() -> None:
    rng = random.Random(0)
    for _ in range(300):
        sizes = [rng.randint(1, 40) for _ in range(rng.randint(1, 6))]
        groups = [_group(s, f"g{i}", index=i) for i, s in enumerate(sizes)]
        scores = [torch.rand(s, generator=torch.Generator().manual_seed(rng.randint(0, 99)))
                  .round(decimals=1) for s in sizes]  # rounded: ties across groups too
        min_keep = rng.choice([0.0, 0.2, 0.5])
        max_keep = rng.choice([1.0, 1.0, 0.8, max(min_keep, 0.6)])
        config = Allocation(ratio=rng.choice([0.1, 0.3, 0.5, 0.9]), global_ranking=True,
                            min_keep=min_keep, max_keep=max_keep)
        masks = allocate(groups, scores, config)
        assert [int(m.sum()) for m in masks] == _reference_counts(sizes, scores, config)


# --- whole models ------------------------------------------------------------------------


def _weak_heads(model: nn.Module, heads: list[int], scale: float) -> nn.Module:
    """Scale the q/k/v rows and out_proj columns of ``heads`` in every attention layer."""
    with torch.no_grad():
        for attn in model.modules():
            if not isinstance(attn, nn.MultiheadAttention):
                continue
            rows = attn.in_proj_weight.view(3, attn.num_heads, attn.head_dim, -1)
            rows[:, heads] *= scale
            attn.in_proj_bias.view(3, attn.num_heads, -1)[:, heads] *= scale
            attn.out_proj.weight.view(-1, attn.num_heads, attn.head_dim)[:, :, heads] *= scale
    return model


def _vit_channels(model: nn.Module) -> tuple[int, list[int]]:
    """(prunable channels of the zoo ViT: residual width + per block heads · head_dim and
    mlp width, heads kept per block)."""
    total, heads = model.conv_proj.out_channels, []
    for block in model.blocks:
        attn = block.self_attention
        count = attn.num_heads
        heads.append(count)
        total += count * attn.head_dim + block.mlp[0].out_features
    return total, heads


def test_vit_loses_its_weak_heads_and_half_its_channels() -> None:
    torch.manual_seed(0)
    model = _weak_heads(ViT().eval(), [0], 0.1)
    assert isinstance(model, ViT)
    x = torch.randn(2, 3, 32, 32)
    before, _ = _vit_channels(model)
    result = pk.prune(model, x, ratio=0.5, global_ranking=True)
    after, heads = _vit_channels(result.model)
    assert heads == [3, 3]  # the weak head of each block went, the others are as good as mlp
    for path in ("blocks.0.self_attention", "blocks.1.self_attention"):
        assert result.plan["modules"][path]["keep"]["heads"] == [1, 2, 3]
        assert isinstance(result.model.get_submodule(path), PrunedMultiheadAttention)
    # 704 channels, 352 go (heads counted as 16 each); counted as one each, 322 went
    assert (before, before - after) == (704, 352)


def test_transformer_encoder_loses_its_weak_heads() -> None:
    entry = BY_NAME["transformer_encoder"]
    model = _weak_heads(entry.build().eval(), [1, 3], 0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(model, entry.example_inputs(), ratio=0.5, global_ranking=True)
    for path in ("encoder.layers.0.self_attn", "encoder.layers.1.self_attn"):
        assert result.plan["modules"][path]["keep"]["heads"] == [0, 2]


@pytest.mark.parametrize("ratio", [0.3, 0.4, 0.5, 0.6])
def test_removed_channel_fraction_meets_the_ratio_on_attention_models(ratio: float) -> None:
    for name in ("vit", "transformer_encoder", "gpt", "llama", "swin"):
        entry = BY_NAME[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = analyze(entry.build().eval(), entry.example_inputs(), normalization="mean")
        groups = found.graph.groups
        masks = allocate(groups, found.scores, Allocation(ratio=ratio, global_ranking=True))
        widths = [unit_width(g) for g in groups]
        total = sum(g.size * w for g, w in zip(groups, widths, strict=True))
        removed = sum(int((~m).sum()) * w for m, w in zip(masks, widths, strict=True))
        assert ratio - 0.01 <= removed / total <= ratio, (name, removed / total)


@pytest.mark.parametrize("name", ["vit", "transformer_encoder"])
def test_macs_target_is_met_on_attention_models(name: str) -> None:
    entry = BY_NAME[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = pk.prune(entry.build().eval(), entry.example_inputs(), target={"macs": 0.5})
    assert 0.48 <= result.macs_kept <= 0.5


@pytest.mark.parametrize(("normalization", "heads"), [
    ("mean", [8, 8, 7, 4, 2, 2]),  # the heads' scores bunch: they all go between 0.35 and 0.6
    ("standard", [6, 6, 5, 4, 4, 2]),  # spread over the ratios
])
def test_head_removal_over_ratios_by_normalization(normalization: str,
                                                   heads: list[int]) -> None:
    """README's global_ranking note: the zoo ViT (random weights, 2 blocks × 4 heads)."""
    entry = BY_NAME["vit"]
    kept = []
    for ratio in (0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pk.prune(entry.build().eval(), entry.example_inputs(), ratio=ratio,
                             global_ranking=True, normalization=normalization).model
        kept.append(sum(m.num_heads for m in model.modules()
                        if isinstance(m, nn.MultiheadAttention)))
    assert kept == heads
