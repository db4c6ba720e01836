"""``prunekit llm`` on tiny random-init LLaMA (GQA) and BERT directories with a word-level
tokenizer: what it writes reloads with from_pretrained (or prunekit.load) and holds the
pruning asked for; bad flags fail before anything is written."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from torch import nn

from prunekit.cli.main import main
from prunekit.llm.calibration import calibration_batches
from prunekit.llm.hf_io import load_pretrained

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "runs",
    "sleeps",
    "over",
    "under",
    "quick",
    "brown",
    "lazy",
    "fox",
    "jumps",
    "and",
    "or",
    "but",
    "if",
]


def _tokenizer() -> object:
    vocab = {"[UNK]": 0, "[PAD]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]"
    )


@pytest.fixture(scope="module")
def text_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "calib.txt"
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=10)) for _ in range(60)))
    return path


def _saved(factory: pytest.TempPathFactory, model: nn.Module) -> Path:
    path = factory.mktemp(type(model).__name__)
    model.save_pretrained(path)  # type: ignore[operator]
    _tokenizer().save_pretrained(path)  # type: ignore[attr-defined]
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return _saved(tmp_path_factory, transformers.LlamaForCausalLM(config))


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(WORDS) + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64,
    )
    return _saved(tmp_path_factory, transformers.BertModel(config))


def _run(model: Path, text: Path, out: Path, *flags: str) -> int:
    return main(
        [
            "llm",
            "--model",
            str(model),
            "--calib",
            str(text),
            "--nsamples",
            "4",
            "--seqlen",
            "16",
            "--out",
            str(out),
            *flags,
        ]
    )


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.model.layers.named_modules() if isinstance(m, nn.Linear)}


def test_wanda_half_reloads_with_exact_sparsity(
    llama_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _run(llama_dir, text_file, out, "--sparsity", "0.5", "--eval", str(text_file)) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    dense = transformers.AutoModelForCausalLM.from_pretrained(llama_dir)
    layers = _linears(reloaded)
    assert len(layers) == 3 * 7
    for name, layer in layers.items():
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5), name
    # outside the blocks nothing changed
    assert torch.equal(reloaded.lm_head.weight, dense.lm_head.weight)
    assert (out / "tokenizer.json").is_file()


def test_stream_writes_what_the_in_memory_run_writes(
    llama_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    flags = ("--method", "sparsegpt", "--sparsity", "0.5")
    assert _run(llama_dir, text_file, tmp_path / "memory", *flags) == 0
    assert _run(llama_dir, text_file, tmp_path / "stream", *flags, "--stream") == 0
    memory, stream = (
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path / name)
        for name in ("memory", "stream")
    )
    pairs = zip(memory.state_dict().items(), stream.state_dict().items(), strict=True)
    for (name, a), (_, b) in pairs:
        assert torch.allclose(a, b, atol=1e-6), name
        assert torch.equal(a == 0, b == 0), name
    assert (tmp_path / "stream" / "tokenizer.json").is_file()


def test_two_four_pattern_alone_sets_the_sparsity(
    llama_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _run(llama_dir, text_file, out, "--method", "sparsegpt", "--pattern", "2:4") == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    for name, layer in _linears(reloaded).items():
        groups = (layer.weight != 0).reshape(-1, 4).sum(dim=1)
        assert int(groups.max()) <= 2, name


def test_layers_heads_ffn_update_the_config(
    llama_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    code = _run(
        llama_dir,
        text_file,
        out,
        "--layers",
        "1",
        "--heads",
        "0.5",
        "--ffn",
        "0.25",
        "--reconstruct",
        "--eval",
        str(text_file),
    )
    assert code == 0
    assert "ppl" in capsys.readouterr().out
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    config = reloaded.config
    assert (
        config.num_hidden_layers,
        config.num_attention_heads,
        config.num_key_value_heads,
        config.intermediate_size,
    ) == (2, 2, 1, 48)
    ids = torch.randint(0, len(WORDS) + 2, (1, 12))
    with torch.no_grad():
        assert reloaded(ids).logits.shape == (1, 12, len(WORDS) + 2)


@pytest.fixture(scope="module")
def mixtral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.MixtralConfig(
        vocab_size=len(WORDS) + 2, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_local_experts=4, num_experts_per_tok=2,
    )
    return _saved(tmp_path_factory, transformers.MixtralForCausalLM(config))


def test_experts_drop_the_least_routed_and_reload(
    mixtral_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert _run(mixtral_dir, text_file, out, "--experts", "0.5", "--eval", str(text_file)) == 0
    assert "drop 2 experts per MoE layer" in capsys.readouterr().out
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_local_experts == 2
    for layer in reloaded.model.layers:
        assert layer.mlp.experts.gate_up_proj.shape[0] == 2
        assert layer.mlp.gate.weight.shape == (2, 32)
    ids = torch.randint(0, len(WORDS) + 2, (1, 12))
    with torch.no_grad():
        assert reloaded(ids).logits.shape == (1, 12, len(WORDS) + 2)


def test_experts_on_a_dense_model_fail_before_writing(
    llama_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    assert _run(llama_dir, text_file, out, "--experts", "1") == 1
    assert "no mixture-of-experts layer found" in capsys.readouterr().err
    assert not out.exists()


def test_bert_heads_need_prunekit_format_and_reload_identically(
    bert_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import prunekit as pk

    out = tmp_path / "out"
    assert _run(bert_dir, text_file, out, "--heads", "0.5") == 1
    assert "prunekit.save" in capsys.readouterr().err
    assert not out.exists()
    assert (
        _run(
            bert_dir,
            text_file,
            out,
            "--heads",
            "0.5",
            "--sparsity",
            "0.3",
            "--prunekit-format",
            "--eval",
            str(text_file),
        )
        == 0
    )
    assert "cos" in capsys.readouterr().out
    config = transformers.AutoConfig.from_pretrained(bert_dir)
    reloaded = pk.load(out, transformers.AutoModel.from_config(config)).eval()
    assert reloaded.encoder.layer[0].attention.self.query.out_features == 16
    # the same pipeline through the Python API gives the same model
    model, tok = load_pretrained(bert_dir)
    calib = calibration_batches([text_file.read_text()], tokenizer=tok, nsamples=4, seqlen=16)
    expected = pk.prune_hf(
        model, {"input_ids": calib[0]}, heads=0.5, require_reloadable=False
    ).model
    pk.prune_llm(expected, calib, method="wanda", sparsity=0.3)
    ids = torch.randint(0, len(WORDS) + 2, (1, 9))
    with torch.no_grad():
        assert torch.equal(
            reloaded(input_ids=ids).last_hidden_state, expected(input_ids=ids).last_hidden_state
        )
    weights = [m.weight for m in reloaded.encoder.layer.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert 0.25 < zeros < 0.35


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ((), "nothing to prune"),
        (("--sparsity", "1.5"), "--sparsity=1.5 is out of range"),
        (("--heads", "-0.1"), "--heads=-0.1 is out of range"),
        (("--layers", "-1"), "--layers -1: must be >= 0"),
        (("--sparsity", "0.5", "--nsamples", "0"), "--nsamples 0"),
        (("--layers", "1", "--prunekit-format"), "cannot record dropped layers"),
        (("--experts", "1", "--prunekit-format"), "cannot record dropped experts"),
        (("--experts", "1.5"), "--experts 1.5: a count >= 0 or a fraction in [0, 1)"),
        (("--stream", "--sparsity", "0.5", "--experts", "1"), "drop --experts"),
        (("--sparsity", "0.3", "--pattern", "2:4"), "fixes the sparsity at 0.5"),
        (("--stream", "--sparsity", "0.5", "--heads", "0.5"), "--stream prunes weights only"),
        (("--stream", "--layers", "1"), "--stream prunes weights only; drop --layers"),
    ],
)
def test_bad_flags_fail_before_writing(
    llama_dir: Path,
    text_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    flags: tuple[str, ...],
    message: str,
) -> None:
    out = tmp_path / "out"
    assert _run(llama_dir, text_file, out, *flags) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_inputs_are_named(
    llama_dir: Path, text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _run(tmp_path / "nope", text_file, tmp_path / "o", "--sparsity", "0.5") == 1
    assert "has no config.json" in capsys.readouterr().err
    assert _run(llama_dir, tmp_path / "none.txt", tmp_path / "o", "--sparsity", "0.5") == 1
    assert "--calib" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _run(llama_dir, text_file, tmp_path / "file", "--sparsity", "0.5") == 1
    assert "is a file" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert _run(llama_dir, text_file, tmp_path / "busy", "--sparsity", "0.5") == 1
    assert "not a Hugging Face model directory" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
