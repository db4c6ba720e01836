"""prune_llm end to end on tiny decoders: exact sparsity, N:M, OWL, untouched weights, rollback."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, NothingToPruneError
from prunekit.llm import OWLConfig, prune_llm, register_solver
from prunekit.llm.solvers import SOLVERS, MagnitudeSolver
from prunekit.sparse.masks import masked_tensors

METHODS = ["magnitude", "wanda", "sparsegpt"]


def _outside_blocks(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(prefix)}


@pytest.mark.parametrize("method", METHODS)
def test_exact_sparsity_and_untouched_outside(method: str, tiny_gpt, calib) -> None:
    outside = _outside_blocks(tiny_gpt, "blocks.")
    result = prune_llm(tiny_gpt, calib, method=method, sparsity=0.5)
    assert len(result.layer_sparsity) == 3 * 7
    for name, sparsity in result.layer_sparsity.items():
        assert sparsity == 0.5, name
    assert set(masked_tensors(tiny_gpt)) == set(result.layer_sparsity)
    for key, value in _outside_blocks(tiny_gpt, "blocks.").items():
        assert torch.equal(value, outside[key]), key
    assert torch.isfinite(tiny_gpt(calib[0])).all()
    assert result.seconds > 0 and result.sparsity == 0.5


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_on_every_layer(method: str, pattern: str, tiny_gpt, calib) -> None:
    n, m = map(int, pattern.split(":"))
    prune_llm(tiny_gpt, calib, method=method, pattern=pattern, true_sequential=False)
    for name, module in tiny_gpt.blocks.named_modules():
        if isinstance(module, nn.Linear):
            groups = (module.weight != 0).reshape(module.out_features, -1, m).sum(dim=2)
            assert (groups <= n).all(), name


@pytest.mark.parametrize("method", METHODS)
def test_sparsity_zero_keeps_outputs(method: str, tiny_gpt, calib) -> None:
    before = tiny_gpt(calib[0])
    prune_llm(tiny_gpt, calib, method=method, sparsity=0.0)
    assert torch.equal(tiny_gpt(calib[0]), before)


def test_owl_sparsities_average_to_target(tiny_gpt, calib) -> None:
    result = prune_llm(tiny_gpt, calib, method="wanda", sparsity=0.6, owl=OWLConfig(m=3, lam=0.1))
    targets = result.block_sparsity
    assert sum(targets) / len(targets) == pytest.approx(0.6, abs=1e-12)
    assert max(targets) - min(targets) == pytest.approx(0.2, abs=1e-9)
    for name, sparsity in result.layer_sparsity.items():
        block = int(name.split(".")[1])
        cols = tiny_gpt.get_submodule(name.removesuffix(".weight")).in_features
        # Wanda removes floor(cols · s_block) weights from every row
        assert sparsity == pytest.approx(int(cols * targets[block]) / cols), name


def test_llama_sparsegpt_and_wanda(tiny_llama, calib) -> None:
    outside = _outside_blocks(tiny_llama, "model.layers.")
    for method, pattern in [("sparsegpt", "unstructured"), ("wanda", "2:4")]:
        model = copy.deepcopy(tiny_llama)
        result = prune_llm(model, calib, method=method, pattern=pattern)
        assert len(result.layer_sparsity) == 2 * 7
        assert all(s == 0.5 for s in result.layer_sparsity.values()), result.layer_sparsity
        for key, value in _outside_blocks(model, "model.layers.").items():
            assert torch.equal(value, outside[key]), key
        assert torch.isfinite(model(calib[0]).logits).all()


def test_failure_rolls_back(tiny_gpt, calib) -> None:
    calls = []

    class Failing(MagnitudeSolver):
        def prune(self, sparsity, pattern):
            calls.append(1)
            if len(calls) > 9:  # fails in block 1, after block 0 was pruned
                raise RuntimeError("boom")
            return super().prune(sparsity, pattern)

    before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    register_solver("failing", Failing)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            prune_llm(tiny_gpt, calib, method="failing")
    finally:
        del SOLVERS["failing"]
    assert masked_tensors(tiny_gpt) == {}
    after = tiny_gpt.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_errors(tiny_gpt, calib) -> None:
    with pytest.raises(ConfigError, match="magnitude, wanda, sparsegpt"):
        prune_llm(tiny_gpt, calib, method="obs")
    with pytest.raises(ConfigError, match=re.escape("fixes the sparsity at 0.5")):
        prune_llm(tiny_gpt, calib, pattern="2:4", sparsity=0.7)
    with pytest.raises(ConfigError, match="owl=True needs pattern='unstructured'"):
        prune_llm(tiny_gpt, calib, pattern="2:4", owl=True)
    with pytest.raises(ConfigError, match="multiple of 3"):
        prune_llm(tiny_gpt, calib, pattern="2:3", sparsity=1 / 3)
    with pytest.raises(ConfigError, match="calib is empty"):
        prune_llm(tiny_gpt, [])
    with pytest.raises(ConfigError, match=re.escape("sparsity=1.5")):
        prune_llm(tiny_gpt, calib, sparsity=1.5)
    model = nn.Sequential(nn.ModuleList([nn.ReLU(), nn.ReLU()]))
    with pytest.raises(NothingToPruneError):
        prune_llm(model, calib)
    assert masked_tensors(tiny_gpt) == {}


def test_bert_encoder_blocks_and_stages(calib) -> None:
    transformers = pytest.importorskip("transformers")
    from prunekit.llm.blocks import capture_block_inputs
    from prunekit.llm.sequential import execution_stages, prunable_layers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=64,
    )
    model = transformers.BertModel(config).eval()
    block = model.encoder.layer[0]
    sample = capture_block_inputs(model, model.encoder.layer, calib[:1])[0]
    stages = execution_stages(block, prunable_layers(block), sample)
    assert [sorted(s) for s in stages] == [
        ["attention.self.key", "attention.self.query", "attention.self.value"],
        ["attention.output.dense"],
        ["intermediate.dense"],
        ["output.dense"],
    ]
    before = model(calib[0]).last_hidden_state
    prune_llm(model, calib, method="sparsegpt", sparsity=0.0)
    assert torch.equal(model(calib[0]).last_hidden_state, before)
    result = prune_llm(model, calib, method="sparsegpt", pattern="2:4")
    assert len(result.layer_sparsity) == 12
    assert all(s == 0.5 for s in result.layer_sparsity.values())


def test_true_sequential_collects_later_stages_after_pruning(tiny_gpt, calib) -> None:
    """q/k/v see the same inputs either way; o's statistics differ once q/k/v are pruned."""
    staged, joint = copy.deepcopy(tiny_gpt), copy.deepcopy(tiny_gpt)
    prune_llm(staged, calib, method="sparsegpt", true_sequential=True)
    prune_llm(joint, calib, method="sparsegpt", true_sequential=False)
    first_staged, first_joint = staged.blocks[0], joint.blocks[0]
    for name in ("q", "k", "v"):
        assert torch.equal(getattr(first_staged, name).weight, getattr(first_joint, name).weight)
    for name in ("o", "down"):
        assert not torch.equal(
            getattr(first_staged, name).weight, getattr(first_joint, name).weight
        )
