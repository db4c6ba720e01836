"""``unflatten(d, (-1, k))`` reads as ``view(..., -1, k, ...)``: the factor left to -1
shrinks (whole groups of k go) and a k written in the code stays. Before, the sizes of an
unflatten did not line up with its result's dims, so the inner factor was cut without k
being rewritten (a literal, a local variable, ``nn.Unflatten``'s tuple): the pruned model
regrouped the kept channels by k again, silently (0.44 to 0.64 off the zeroed model; found
by the audio/super-resolution probe's channel shuffle)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class Shuffle(nn.Module):
    """A channel shuffle written with unflatten: (B, C, H, W) -> (B, C/4, 4, H, W) -> swap."""

    def __init__(self, idiom: str) -> None:
        super().__init__()
        self.idiom, self.k = idiom, 4
        self.unflat = nn.Unflatten(1, (-1, 4))
        self.c1, self.c2 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 5, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(x)
        if self.idiom == "module":
            h = self.unflat(h)
        elif self.idiom == "literal":
            h = h.unflatten(1, (-1, 4))
        elif self.idiom == "local":
            k = self.k
            h = h.unflatten(1, (-1, k))
        else:
            h = h.unflatten(1, (-1, self.k))
        return self.c2(F.relu(h.transpose(1, 2).flatten(1, 2)))


@pytest.mark.parametrize("idiom", ["module", "literal", "local", "attribute"])
def test_an_unflatten_shuffle_prunes_whole_groups(idiom: str) -> None:
    torch.manual_seed(0)
    model = Shuffle(idiom).eval()
    x = torch.randn(2, 3, 6, 6)
    result = pk.prune(model, x, ratio=0.5)
    keep = result.plan["modules"]["c1"]["keep"]["out"]
    assert len(keep) == 16 and result.plan["attrs"] == {}
    assert {c // 4 for c in keep} == {c // 4 for c in keep[::4]}  # whole groups of 4
    reference = copy.deepcopy(model)
    removed = sorted(set(range(32)) - set(keep))
    with torch.no_grad():
        reference.c1.weight[removed] = 0
        reference.c1.bias[removed] = 0
        for inputs in (x, torch.randn(3, 3, 6, 6)):
            assert torch.allclose(result.model(inputs), reference(inputs), atol=1e-5)
