"""prune_checkpoint: streamed pruning equals prune_llm, reloads, fails cleanly, stays in memory."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.llm import prune_checkpoint, prune_llm
from prunekit.llm.shards import read_checkpoint, write_shard
from prunekit.llm.streaming import parameters_on_meta, synthetic_checkpoint
from prunekit.sparse.masks import strip

transformers = pytest.importorskip("transformers")

SRC = Path(__file__).resolve().parents[2] / "src"


def _config(layers: int = 3, tied: bool = False) -> object:
    return transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        tie_word_embeddings=tied,
    )


def _save(tmp_path: Path, tied: bool = False) -> Path:
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(_config(tied=tied)).eval()
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="40KB")  # every block spans several shards
    (src / "tokenizer_config.json").write_text("{}", encoding="utf-8")
    return src


def _calib() -> torch.Tensor:
    return torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))


def _load(path: Path) -> nn.Module:
    return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_equals_prune_llm_and_reloads(method: str, pattern: str, tmp_path: Path) -> None:
    src = _save(tmp_path)
    weight_map = json.loads((src / "model.safetensors.index.json").read_text())["weight_map"]
    assert len({weight_map[k] for k in weight_map if k.startswith("model.layers.0.")}) > 1

    result = prune_checkpoint(src, tmp_path / "out", _calib(), method=method, pattern=pattern)
    reference = _load(src)
    expected = prune_llm(reference, _calib(), method=method, pattern=pattern)
    strip(reference)
    pruned = _load(tmp_path / "out")

    want, got = reference.state_dict(), pruned.state_dict()
    assert want.keys() == got.keys()
    for key, value in want.items():
        if method == "wanda":
            assert torch.equal(got[key], value), key
        else:
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-6)
            assert torch.equal(got[key] == 0, value == 0), key
    assert result.layer_sparsity == pytest.approx(expected.layer_sparsity)
    assert len(result.layer_sparsity) == 3 * 7 and result.sparsity == pytest.approx(0.5)
    ids = _calib()[:1]
    torch.testing.assert_close(pruned(ids).logits, reference(ids).logits)

    out = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert out == [
        "config.json",
        "generation_config.json",
        *(f"model-{i:05d}-of-00004.safetensors" for i in range(1, 5)),
        "model.safetensors.index.json",
        "tokenizer_config.json",
    ]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_owl_and_tied_embeddings(tmp_path: Path) -> None:
    src = _save(tmp_path, tied=True)
    assert "lm_head.weight" not in read_checkpoint(src)
    result = prune_checkpoint(src, tmp_path / "out", _calib(), sparsity=0.6, owl=True)
    reference = _load(src)
    expected = prune_llm(reference, _calib(), sparsity=0.6, owl=True)
    strip(reference)
    pruned = _load(tmp_path / "out")
    assert pruned.lm_head.weight is pruned.model.embed_tokens.weight
    assert result.block_sparsity == pytest.approx(expected.block_sparsity)
    assert len(set(result.block_sparsity)) == 3
    for key, value in reference.state_dict().items():
        assert torch.equal(pruned.state_dict()[key], value), key


def test_failure_leaves_no_output(tmp_path: Path) -> None:
    src = _save(tmp_path)
    out = tmp_path / "out"

    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(src, out, _calib(), progress=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]

    out.mkdir()
    (out / "keep.txt").write_text("old", encoding="utf-8")
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoint(src, out, _calib(), progress=stop, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def test_errors_name_the_argument(tmp_path: Path) -> None:
    calib = _calib()
    with pytest.raises(ConfigError, match=r"src_dir='.*nowhere' is not a directory"):
        prune_checkpoint(tmp_path / "nowhere", tmp_path / "out", calib)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        prune_checkpoint(empty, tmp_path / "out", calib)
    _config().save_pretrained(empty)
    (empty / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(DataError, match=r"no model.safetensors.*pytorch_model.bin.*convert"):
        prune_checkpoint(empty, tmp_path / "out", calib)
    src = _save(tmp_path)
    with pytest.raises(ConfigError, match="method='nope' is not supported; choose one of"):
        prune_checkpoint(src, tmp_path / "out", calib, method="nope")
    with pytest.raises(ConfigError, match=r"pattern=.2:4. fixes the sparsity at 0\.5"):
        prune_checkpoint(src, tmp_path / "out", calib, pattern="2:4", sparsity=0.7)
    with pytest.raises(ConfigError, match=r"out_dir=.* is src_dir"):
        prune_checkpoint(src, src, calib)
    with pytest.raises(ConfigError, match="exists and is not empty; pass overwrite=True"):
        prune_checkpoint(src, empty, calib)
    with pytest.raises(ConfigError, match="calib is empty"):
        prune_checkpoint(src, tmp_path / "out", [])
    assert not (tmp_path / "out").exists()


def test_parameters_on_meta_keeps_buffers_and_restores() -> None:
    register = nn.Module.register_parameter
    with parameters_on_meta():
        model = transformers.LlamaForCausalLM(_config())
    assert nn.Module.register_parameter is register
    assert all(p.is_meta for p in model.parameters())
    inv_freq = model.model.rotary_emb.inv_freq
    assert not inv_freq.is_meta and inv_freq.abs().sum() > 0
    assert not nn.Linear(2, 2).weight.is_meta


def test_write_shard_is_read_by_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
    }
    write_shard(tmp_path / "one.safetensors", tensors)
    entries = read_checkpoint(tmp_path)
    write_shard(tmp_path / "two.safetensors", {"x": entries["b"], "y": tensors["a"].t()})
    first, second = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    for key, value in tensors.items():
        assert torch.equal(first[key], value), key
    assert torch.equal(second["x"], tensors["b"]) and torch.equal(second["y"], tensors["a"].t())


def test_read_header_rejects_a_range_that_does_not_fit_the_shape(tmp_path: Path) -> None:
    header = json.dumps({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode()
    file = tmp_path / "bad.safetensors"
    file.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
    with pytest.raises(DataError, match=r"'a' spans 8 bytes, but .* need 12; the file is corrupt"):
        read_checkpoint(tmp_path)


def test_synthetic_checkpoint_loads_complete(tmp_path: Path) -> None:
    size = synthetic_checkpoint(_config(layers=2, tied=True), tmp_path / "syn")
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "syn", output_loading_info=True
    )
    assert not info["missing_keys"]
    assert size == sum(p.numel() * 4 for p in model.parameters())
    assert model.model.norm.weight.eq(1).all()


_MEASURE = textwrap.dedent(
    """
    import json, sys, torch, transformers
    from prunekit.llm import prune_checkpoint
    torch.set_num_threads(1)
    transformers.LlamaForCausalLM  # import the model code before the baseline
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    # the current RSS, not ru_maxrss: the import peak (~100 MB above it) would hide growth
    status = open("/proc/self/status").read()
    base = int(status.split("VmRSS:")[1].split()[0])
    prune_checkpoint(sys.argv[1], sys.argv[2], calib, method="wanda")
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent (a pytest
    # process that has loaded MiniLM reports its own ~1 GB), VmHWM belongs to this exec
    peak = int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
    print(json.dumps({"growth": (peak - base) * 1024, "peak": peak, "base": base}))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc/self/status")
def test_peak_memory_is_a_few_blocks_not_the_checkpoint(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=12,  # enough blocks that a third of the checkpoint exceeds 3 blocks
        num_attention_heads=8,
        vocab_size=512,
    )
    size = synthetic_checkpoint(config, tmp_path / "src")
    block = (4 * 1024 * 1024 + 3 * 1024 * 2816 + 2 * 1024) * 4  # 51 MB
    activations = 4 * 32 * 1024 * 4
    # a clean environment: what earlier tests left in os.environ must not change the child
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(SRC),
           "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(tmp_path / "src"), str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    growth = json.loads(run.stdout.strip().splitlines()[-1])["growth"]
    assert size > 12 * block
    assert growth < 3 * block + 3 * activations + (16 << 20), (growth, block, run.stdout[-300:])
    assert growth < size / 3, run.stdout[-300:]
    assert _load(tmp_path / "out").model.layers[11].mlp.down_proj.weight.eq(0).float().mean() == 0.5
