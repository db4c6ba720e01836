"""drop_experts on hand-written MoE models: the pruned model equals the dense one with the
dropped experts' router logits at -inf, routing statistics choose the unused experts, bad
arguments are refused and a failed prune leaves the model as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.llm.moe_models import (
    CosineMoE,
    DictMoE,
    HashMoE,
    ListMoE,
    MixedLM,
    NestedMoE,
    NormedMoE,
    ShazeerMoE,
    StackedMoE,
    TinyMoELM,
    routers_masked,
)
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.experts import drop_experts, expert_usage, find_moe_layers


def _model(moe: type[nn.Module] = ListMoE, **kwargs: int) -> TinyMoELM:
    torch.manual_seed(0)
    return TinyMoELM(moe, **kwargs).eval()


def _ids(n: int = 4, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50, (n, length), generator=torch.Generator().manual_seed(seed))


def _router_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {layer.path: layer.router_weight for layer in find_moe_layers(model)}


@pytest.mark.parametrize("moe", [ListMoE, StackedMoE, ShazeerMoE, DictMoE, NestedMoE])
def test_pruned_model_matches_dense_with_dropped_logits_masked(moe: type[nn.Module]) -> None:
    model, ids = _model(moe), _ids()
    removed = {"layers.0": [1, 3], "layers.1": [0, 4]}
    weights = _router_weights(model)
    with torch.no_grad(), routers_masked({weights[p]: r for p, r in removed.items()}):
        reference = model(ids)
    result = drop_experts(model, removed, calib=ids)
    with torch.no_grad():
        got = result.model(ids)
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert not torch.allclose(model(ids), reference)  # the masking did change something
    count = 5 if moe is StackedMoE else 6
    assert result.experts_before == 2 * count and result.experts_after == 2 * (count - 2)
    assert result.params_after < result.params_before
    assert result.params_after == sum(p.numel() for p in result.model.parameters())
    for layer in find_moe_layers(result.model):
        assert layer.count == count - 2
        assert layer.router_weight.shape[layer.router_dim] == count - 2


def test_raw_gate_and_noise_parameters_lose_the_same_columns() -> None:
    model = _model(ShazeerMoE)
    layer = find_moe_layers(model)[0]
    assert (layer.router_name, layer.router_dim) == ("w_gate", 1)
    with torch.no_grad():
        model.layers[0].w_noise.normal_()
    result = drop_experts(model, {"layers.0": [0, 2], "layers.1": [5, 1]}, calib=_ids())
    pruned = result.model.layers[0]
    torch.testing.assert_close(pruned.w_gate, model.layers[0].w_gate[:, [1, 3, 4, 5]])
    torch.testing.assert_close(pruned.w_noise, model.layers[0].w_noise[:, [1, 3, 4, 5]])
    assert pruned.num_experts == 4 and len(pruned.experts) == 4
    usage = expert_usage(model, _ids())["layers.0"]["frequency"]
    assert sum(usage) == pytest.approx(2.0)


def test_list_experts_keep_their_own_weights_and_counts_follow() -> None:
    model = _model()
    result = drop_experts(model, {"layers.0": [0, 5], "layers.1": [2, 3]}, calib=_ids())
    pruned = result.model.layers[0]
    assert pruned.num_experts == 4 and pruned.gate.out_features == 4
    assert len(pruned.experts) == 4
    assert pruned.experts[0] is not model.layers[0].experts[1]  # a copy, not the user's
    torch.testing.assert_close(pruned.experts[0].w1.weight, model.layers[0].experts[1].w1.weight)
    torch.testing.assert_close(pruned.gate.weight, model.layers[0].gate.weight[[1, 2, 3, 4]])
    assert len(model.layers[0].experts) == 6  # the user's model is untouched


def test_stacked_experts_router_bias_and_selection_bias_are_cut() -> None:
    model = _model(StackedMoE)
    model.layers[0].expert_bias.copy_(torch.arange(5.0))
    result = drop_experts(model, {"layers.0": [1], "layers.1": [4]}, calib=_ids())
    layer = result.model.layers[0]
    assert layer.experts.up.shape == (4, 24, 16) and layer.experts.down.shape == (4, 16, 24)
    assert layer.router.bias.shape == (4,) and layer.experts.num_experts == 4
    assert layer.expert_bias.tolist() == [0.0, 2.0, 3.0, 4.0]


def test_zero_experts_gives_identical_outputs() -> None:
    model, ids = _model(), _ids()
    result = drop_experts(model, 0, calib=ids)
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids), model(ids), rtol=0, atol=0)
    assert result.removed == {"layers.0": (), "layers.1": ()}
    assert result.params_after == result.params_before


def test_usage_counts_router_choices_and_ranks_unused_experts_first() -> None:
    model, ids = _model(), _ids(8)
    usage = expert_usage(model, ids)
    freq = usage["layers.0"]["frequency"]
    assert sum(freq) == pytest.approx(2.0)  # top-2: every token counts twice
    assert sum(usage["layers.1"]["probability"]) == pytest.approx(1.0)
    # recount layer 0's choices by hand from the inputs the layer sees
    seen: list[torch.Tensor] = []
    handle = model.layers[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model(ids)
    handle.remove()
    with torch.no_grad():
        chosen = model.layers[0].gate(seen[0].reshape(-1, 16)).topk(2, dim=-1).indices
    expected = torch.bincount(chosen.reshape(-1), minlength=6).double() / chosen.shape[0]
    assert torch.allclose(torch.tensor(freq, dtype=torch.float64), expected)
    # a router with a bias (counted in the logits) that rules expert 4 out
    torch.manual_seed(3)
    model.layers[0].gate = nn.Linear(16, 6)
    with torch.no_grad():
        model.layers[0].gate.bias[4] = -100.0
    usage = expert_usage(model, ids)
    assert usage["layers.0"]["frequency"][4] == 0.0
    result = drop_experts(model, 1, calib=ids)
    assert result.removed["layers.0"] == (4,)
    assert result.usage == usage
    least = min(range(6), key=lambda i: (usage["layers.1"]["frequency"][i],
                                         usage["layers.1"]["probability"][i]))
    assert result.removed["layers.1"] == (least,)


def test_fraction_and_probability_importance() -> None:
    model, ids = _model(), _ids()
    by_fraction = drop_experts(model, 0.34, calib=ids, importance="probability")
    assert all(len(r) == 2 for r in by_fraction.removed.values())
    usage = expert_usage(model, ids)
    for path, removed in by_fraction.removed.items():
        prob = usage[path]["probability"]
        assert max(prob[i] for i in removed) <= min(prob[i] for i in range(6)
                                                    if i not in removed)


def test_padding_is_left_out_of_usage() -> None:
    model, ids = _model(), _ids(2)
    batch = {"ids": ids, "attention_mask": torch.ones_like(ids)}
    batch["attention_mask"][1] = 0

    class Keyword(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(ids)

    masked = expert_usage(Keyword(), [batch])
    first_row = expert_usage(model, ids[:1])
    assert sorted(masked) == ["inner.layers.0", "inner.layers.1"]
    for path in first_row:
        assert masked[f"inner.{path}"]["frequency"] == pytest.approx(first_row[path]["frequency"])
        assert masked[f"inner.{path}"] != expert_usage(model, ids)[path]


def test_bad_arguments_are_refused_with_the_fix() -> None:
    model, ids = _model(), _ids()
    with pytest.raises(ConfigError, match="between 0 and 4"):
        drop_experts(model, 5, calib=ids)  # 6 experts, top-2
    with pytest.raises(ConfigError, match=r"fraction must lie in \[0, 1\)"):
        drop_experts(model, 1.0, calib=ids)
    with pytest.raises(TypeError, match="experts must be"):
        drop_experts(model, True, calib=ids)
    with pytest.raises(ConfigError, match="needs calib"):
        drop_experts(model, 1)
    with pytest.raises(ConfigError, match="importance='l2'"):
        drop_experts(model, 1, calib=ids, importance="l2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not MoE layers"):
        drop_experts(model, {"layers.9": [0]}, calib=ids)
    with pytest.raises(ConfigError, match="each expert once"):
        drop_experts(model, {"layers.0": [1, 1], "layers.1": [0, 2]}, calib=ids)
    with pytest.raises(ConfigError, match="same number"):
        drop_experts(model, {"layers.0": [1], "layers.1": [0, 2]}, calib=ids)
    with pytest.raises(ConfigError, match="no mixture-of-experts layer"):
        drop_experts(nn.Sequential(nn.Linear(4, 4)), 1, calib=torch.randn(2, 4))


class _HardCoded(ListMoE):
    """Loops over a literal expert count: fails once an expert is gone."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _ = [self.experts[e] for e in range(6)]
        return super().forward(x)


def test_failed_prune_in_place_leaves_the_model_as_it_was() -> None:
    model, ids = _model(_HardCoded), _ids()
    state = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        before = model(ids)
    with pytest.raises(ConfigError, match=r"fails to run .IndexError.*literal expert count"):
        drop_experts(model, {"layers.0": [2], "layers.1": [3]}, calib=ids, inplace=True)
    assert len(model.layers[0].experts) == 6 and model.layers[0].num_experts == 6
    assert model.layers[0].gate.out_features == 6
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        torch.testing.assert_close(model(ids), before, rtol=0, atol=0)


def test_in_place_prunes_the_given_model() -> None:
    model, ids = _model(), _ids()
    result = drop_experts(model, 2, calib=ids, inplace=True)
    assert result.model is model and len(model.layers[1].experts) == 4


def test_grouped_routing_is_refused() -> None:
    model = _model()
    model.layers[0].gate.n_group = 2  # DeepSeek-style group-limited routing
    with pytest.raises(ConfigError, match="n_group=2"):
        drop_experts(model, {"layers.0": [1], "layers.1": [1]})


def test_per_expert_tensors_in_submodules_of_the_experts_are_cut() -> None:
    model, ids = _model(NormedMoE), _ids()
    removed = {"layers.0": [3], "layers.1": [0]}
    weights = _router_weights(model)
    with torch.no_grad(), routers_masked({weights[p]: r for p, r in removed.items()}):
        reference = model(ids)
    result = drop_experts(model, removed, calib=ids)
    post = result.model.layers[0].experts.post
    assert post.weight.shape == (4, 16) and post.num_experts == 4
    torch.testing.assert_close(post.weight, model.layers[0].experts.post.weight[[0, 1, 2, 4]])
    with torch.no_grad():
        torch.testing.assert_close(result.model(ids), reference, rtol=1e-5, atol=1e-6)


def test_integer_routing_tables_are_refused() -> None:
    model = _model(HashMoE)
    with pytest.raises(ConfigError, match=r"integer table tid2eid \(\(50, 2\)"):
        drop_experts(model, {"layers.0": [1], "layers.1": [1]})
    assert len(model.layers[0].experts) == 6


def test_usage_and_check_leave_every_module_mode_as_it_was() -> None:
    model, ids = _model(), _ids()
    model.train()
    model.layers[1].eval()  # a mixed model: layer 1 frozen in eval mode
    drop_experts(model, 1, calib=ids, inplace=True)
    assert model.training and model.layers[0].training and not model.layers[1].training


def test_dict_experts_are_renumbered_and_layer_vectors_cut() -> None:
    model = _model(DictMoE)
    model.train()
    model(_ids())  # leaves a non-leaf aux_loss on every layer: copying must still work
    model.eval()
    result = drop_experts(model, {"layers.0": [1, 2], "layers.1": [0, 5]})
    pruned, dense = result.model.layers[0], model.layers[0]
    assert list(pruned.experts) == ["expert_0", "expert_1", "expert_2", "expert_3"]
    assert pruned.experts["expert_1"].w1.weight.equal(dense.experts["expert_3"].w1.weight)
    torch.testing.assert_close(pruned.alpha, dense.alpha[[0, 3, 4, 5]])
    assert pruned.step.shape == ()  # an integer scalar is not a routing table


def test_usage_reads_the_logits_the_router_computes() -> None:
    model, ids = _model(CosineMoE), _ids(8)
    seen: list[torch.Tensor] = []
    handle = model.layers[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    with torch.no_grad():
        model(ids)
        handle.remove()
        logits = model.layers[0].logits(seen[0].reshape(-1, 16))
    chosen = logits.topk(2, dim=-1).indices.reshape(-1)
    expected = torch.bincount(chosen, minlength=6).double() / logits.shape[0]
    got = expert_usage(model, ids)["layers.0"]["frequency"]
    assert torch.allclose(torch.tensor(got, dtype=torch.float64), expected)
    # probabilities come from the product itself, before the temperature divides it
    probability = expert_usage(model, ids)["layers.0"]["probability"]
    assert torch.allclose(torch.tensor(probability), (logits * 0.3).softmax(-1).mean(0),
                          atol=1e-6)
    result = drop_experts(model, {"layers.0": [1], "layers.1": [2]}, calib=ids)
    kept = [0, 2, 3, 4, 5]
    with torch.no_grad():
        torch.testing.assert_close(result.model.layers[0].logits(seen[0].reshape(-1, 16)),
                                   logits[:, kept])


def test_a_count_on_a_layer_that_is_not_found_is_refused() -> None:
    torch.manual_seed(0)
    model = MixedLM().eval()
    with pytest.raises(ConfigError, match=r"'layers.1' .HiddenListMoE. has num_experts=6"):
        drop_experts(model, {"layers.0": [1]}, calib=_ids())
    assert model.layers[1].num_experts == 6 and len(model.layers[0].experts) == 6


def test_routers_tied_across_layers_are_refused() -> None:
    model = _model()
    model.layers[1].gate = model.layers[0].gate
    with pytest.raises(ConfigError, match="tied across layers"):
        drop_experts(model, {"layers.0": [1], "layers.1": [1]})


def test_a_square_router_is_refused_naming_it() -> None:
    torch.manual_seed(0)
    model = TinyMoELM(ListMoE, experts=16).eval()  # gate Linear(16, 16)
    with pytest.raises(ConfigError, match=r"layers.0.gate.weight is square \(16 x 16\)"):
        find_moe_layers(model)
