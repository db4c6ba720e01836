"""Sliding-window perplexity equals exp(mean cross-entropy) computed by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import ConfigError
from prunekit.llm.perplexity import perplexity


def _by_hand(model: nn.Module, ids: torch.Tensor, seqlen: int, stride: int) -> float:
    losses = []
    scored = set()
    with torch.no_grad():
        for begin in range(0, len(ids) - 1, stride):
            window = ids[begin : begin + seqlen]
            logits = model(window.unsqueeze(0))[0]
            for pos in range(1, len(window)):
                if begin + pos not in scored:
                    scored.add(begin + pos)
                    losses.append(float(F.cross_entropy(logits[pos - 1], window[pos])))
    # every token with a predecessor in its window is scored once; with disjoint windows
    # a window's first token has no context and is left out
    starts = set(range(stride, len(ids), stride)) if stride == seqlen else set()
    assert scored == set(range(1, len(ids))) - starts
    return math.exp(sum(losses) / len(losses))


@pytest.mark.parametrize(("seqlen", "stride"), [(16, 16), (16, 5), (7, 7), (50, 1)])
def test_matches_hand_computation(tiny_gpt, seqlen: int, stride: int) -> None:
    ids = torch.randint(0, 64, (50,), generator=torch.Generator().manual_seed(0))
    got = perplexity(tiny_gpt, ids, seqlen=seqlen, stride=stride)
    assert got == pytest.approx(_by_hand(tiny_gpt, ids, seqlen, stride), rel=1e-5)


def test_hf_style_output(tiny_gpt) -> None:
    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_gpt

        def forward(self, ids: torch.Tensor) -> SimpleNamespace:
            return SimpleNamespace(logits=self.inner(ids))

    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(0))
    assert perplexity(Wrapped(), ids, seqlen=16) == pytest.approx(
        perplexity(tiny_gpt, ids, seqlen=16), rel=1e-6
    )


def test_llama(tiny_llama) -> None:
    ids = torch.randint(0, 128, (40,), generator=torch.Generator().manual_seed(0))
    by_hand = _by_hand(lambda x: tiny_llama(x).logits, ids, 40, 40)  # type: ignore[arg-type]
    assert perplexity(tiny_llama, ids, seqlen=40) == pytest.approx(by_hand, rel=1e-5)


def test_errors(tiny_gpt) -> None:
    with pytest.raises(ConfigError, match="stride"):
        perplexity(tiny_gpt, torch.arange(10), seqlen=8, stride=9)
    with pytest.raises(ConfigError, match="at least 2"):
        perplexity(tiny_gpt, torch.arange(1), seqlen=8)
    with pytest.raises(ConfigError, match="needs logits"):
        perplexity(_Dict(), torch.arange(3), seqlen=2)


class _Dict(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"scores": ids.float()}
