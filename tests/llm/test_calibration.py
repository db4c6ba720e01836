"""Calibration windows: seeded, the requested shape, cut from the source; text sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunekit.errors import ConfigError, DataError
from prunekit.llm.calibration import FORTUNES_DIR, calibration_batches, default_texts


def test_windows_from_token_ids() -> None:
    ids = torch.arange(1000)
    batches = calibration_batches(ids, nsamples=5, seqlen=32, seed=3)
    assert len(batches) == 5
    for batch in batches:
        assert batch.shape == (1, 32)
        start = int(batch[0, 0])
        assert torch.equal(batch[0], torch.arange(start, start + 32))  # a contiguous window
    again = calibration_batches(ids.view(1, -1), nsamples=5, seqlen=32, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = calibration_batches(ids, nsamples=5, seqlen=32, seed=4)
    assert not all(torch.equal(a, b) for a, b in zip(batches, other, strict=True))


def test_text_with_tokenizer_callable_or_mapping() -> None:
    def tok(text: str) -> list[int]:
        return [ord(c) for c in text]

    texts = ["hello world", "a second text"]
    batches = calibration_batches(texts, tokenizer=tok, nsamples=3, seqlen=8)
    joined = "\n\n".join(texts)
    for batch in batches:
        assert "".join(chr(int(i)) for i in batch[0]) in joined
    hf_like = calibration_batches(
        texts, tokenizer=lambda t: {"input_ids": tok(t)}, nsamples=3, seqlen=8
    )
    assert all(torch.equal(a, b) for a, b in zip(batches, hf_like, strict=True))


def test_errors() -> None:
    with pytest.raises(ConfigError, match="tokenizer"):
        calibration_batches(["text"])
    with pytest.raises(DataError, match="fewer than seqlen=64"):
        calibration_batches(torch.arange(10), seqlen=64)
    with pytest.raises(ConfigError, match="nsamples=0"):
        calibration_batches(torch.arange(10), nsamples=0, seqlen=4)
    with pytest.raises(ConfigError, match="seqlen=-1"):
        calibration_batches(torch.arange(10), seqlen=-1)


def test_default_texts_reads_fortune_files(tmp_path: Path) -> None:
    (tmp_path / "wisdom").write_text("First saying.\n%\nSecond\nsaying.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x01index")
    assert default_texts(tmp_path) == ["First saying.", "Second\nsaying."]


def test_default_texts_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="pass your own text"):
        default_texts(tmp_path / "absent")


@pytest.mark.skipif(not FORTUNES_DIR.is_dir(), reason="Debian package 'fortunes' not installed")
def test_installed_fortunes() -> None:
    texts = default_texts()
    assert len(texts) > 100 and all(texts)
