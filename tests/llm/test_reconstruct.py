"""Block-wise reconstruction keeps the masks and brings block outputs closer to dense."""

from __future__ import annotations

import copy
import re

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.llm import prune_llm
from prunekit.llm.blocks import block_outputs, capture_block_inputs
from prunekit.llm.reconstruct import ReconstructConfig, reconstruct_block
from prunekit.llm.sequential import prunable_layers
from prunekit.sparse.masks import masked_tensors


def test_reconstruct_block_lowers_error_and_keeps_masks(tiny_gpt, calib) -> None:
    block = tiny_gpt.blocks[0]
    inputs = capture_block_inputs(tiny_gpt, tiny_gpt.blocks, calib)
    dense = block_outputs(block, inputs)
    prune_llm(tiny_gpt, calib, method="magnitude", sparsity=0.6)
    masks = {k: v.clone() for k, v in masked_tensors(tiny_gpt).items()}
    before, after = reconstruct_block(
        block, inputs, dense, list(prunable_layers(block).values()), ReconstructConfig(5, 1e-3)
    )
    assert after < 0.7 * before
    assert all(torch.equal(masks[k], v) for k, v in masked_tensors(tiny_gpt).items())
    for layer in prunable_layers(block).values():
        assert (layer.weight[~layer.parametrizations.weight[0].mask] == 0).all()
        assert layer.parametrizations.weight.original.grad is None
    assert not any(p.grad is not None for p in tiny_gpt.parameters())


def test_prune_llm_with_reconstruction(tiny_gpt, calib) -> None:
    plain = copy.deepcopy(tiny_gpt)
    dense = tiny_gpt(calib[0])
    prune_llm(plain, calib, method="wanda", sparsity=0.6)
    result = prune_llm(
        tiny_gpt, calib, method="wanda", sparsity=0.6, reconstruct=ReconstructConfig(5, 1e-3)
    )
    assert all(s == pytest.approx(0.6, abs=0.02) for s in result.layer_sparsity.values())
    err_plain = (plain(calib[0]) - dense).pow(2).mean()
    err_rec = (tiny_gpt(calib[0]) - dense).pow(2).mean()
    assert err_rec < err_plain


def test_config_errors() -> None:
    with pytest.raises(ConfigError, match=re.escape("steps=0")):
        ReconstructConfig(steps=0)
