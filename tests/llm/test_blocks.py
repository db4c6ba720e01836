"""Locating the repeated blocks, capturing block 0's inputs, and true-sequential stages."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.blocks import capture_block_inputs, find_blocks
from prunekit.llm.sequential import execution_stages, prunable_layers


def test_find_blocks_picks_the_largest_list_of_identical_blocks(tiny_gpt) -> None:
    tiny_gpt.extras = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])
    path, blocks = find_blocks(tiny_gpt)
    assert path == "blocks" and blocks is tiny_gpt.blocks
    assert find_blocks(tiny_gpt, "extras")[1] is tiny_gpt.extras


def test_find_blocks_errors(tiny_gpt) -> None:
    with pytest.raises(ConfigError, match="no submodule"):
        find_blocks(tiny_gpt, "model.layers")
    with pytest.raises(ConfigError, match=re.escape("not a non-empty nn.ModuleList")):
        find_blocks(tiny_gpt, "head")
    with pytest.raises(ConfigError, match=re.escape("blocks='model.layers'")):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))


def _fed_to_block0(model: nn.Module, blocks: nn.ModuleList, batches) -> list[tuple[Any, Any]]:
    seen: list[tuple[Any, Any]] = []
    handle = blocks[0].register_forward_pre_hook(
        lambda _m, a, k: seen.append((a, k)), with_kwargs=True
    )
    with torch.no_grad():
        for batch in batches:
            model(batch)
    handle.remove()
    return seen


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    else:
        assert a == b or (a is None and b is None)


def test_capture_equals_what_the_model_feeds_block0(tiny_gpt, calib) -> None:
    captured = capture_block_inputs(tiny_gpt, tiny_gpt.blocks, calib)
    expected = _fed_to_block0(tiny_gpt, tiny_gpt.blocks, calib)
    assert len(captured) == len(calib)
    for item, (args, kwargs) in zip(captured, expected, strict=True):
        _assert_same(item.args, args)
        _assert_same(item.kwargs, kwargs)
    assert set(captured[0].kwargs) == {"attn_mask"}


def test_capture_llama_kwargs(tiny_llama, calib) -> None:
    blocks = find_blocks(tiny_llama)[1]
    assert blocks is tiny_llama.model.layers
    captured = capture_block_inputs(tiny_llama, blocks, calib)
    expected = _fed_to_block0(tiny_llama, blocks, calib)
    for item, (args, kwargs) in zip(captured, expected, strict=True):
        _assert_same(item.args, args)
        assert "position_embeddings" in item.kwargs
        _assert_same(item.kwargs["position_embeddings"], kwargs["position_embeddings"])
        _assert_same(item.kwargs["position_ids"], kwargs["position_ids"])


def test_capture_error_when_block_is_not_run(tiny_gpt, calib) -> None:
    with pytest.raises(ConfigError, match="without calling the first block"):
        capture_block_inputs(tiny_gpt, nn.ModuleList([nn.Linear(2, 2)]), calib)


def test_stages_follow_execution_order(tiny_gpt, calib) -> None:
    block = tiny_gpt.blocks[0]
    sample = capture_block_inputs(tiny_gpt, tiny_gpt.blocks, calib[:1])[0]
    stages = execution_stages(block, prunable_layers(block), sample)
    assert [list(s) for s in stages] == [["q", "k", "v"], ["o"], ["gate", "up"], ["down"]]


def test_stages_llama(tiny_llama, calib) -> None:
    blocks = tiny_llama.model.layers
    sample = capture_block_inputs(tiny_llama, blocks, calib[:1])[0]
    stages = execution_stages(blocks[0], prunable_layers(blocks[0]), sample)
    assert [sorted(s) for s in stages] == [
        ["self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj"],
        ["self_attn.o_proj"],
        ["mlp.gate_proj", "mlp.up_proj"],
        ["mlp.down_proj"],
    ]
