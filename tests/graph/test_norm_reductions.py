"""``torch.linalg.norm`` / ``matrix_norm`` reduce like ``Tensor.norm``: over the channel
dim they mix channels (CLIP-style embedding normalisation prunes), over other dims the
channels pass; their dims come after ``ord``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import prune


class Normed(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.a(x))  # [B, T, 16]
        if self.how == "linalg_norm channels":
            h = h / torch.linalg.norm(h, dim=-1, keepdim=True)
        elif self.how == "linalg_norm ord tokens":
            h = h / (torch.linalg.norm(h, 2, 1, True) + 1e-6)
        elif self.how == "matrix_norm":  # over (tokens, channels): one value per sample
            h = h / torch.linalg.matrix_norm(h)[:, None, None]
        elif self.how == "vector_norm":
            h = h * torch.linalg.vector_norm(h, ord=1, dim=(1,), keepdim=True)
        return self.b(h)


@pytest.mark.parametrize("how", ["linalg_norm channels", "linalg_norm ord tokens",
                                 "matrix_norm", "vector_norm"])
def test_linalg_norms_prune(how: str) -> None:
    torch.manual_seed(0)
    model, x = Normed(how).eval(), torch.randn(2, 5, 6)
    result = prune(model, x, ratio=0.5)
    assert result.model.a.out_features == result.model.b.in_features == 8
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape
        assert torch.equal(prune(model, x, ratio=0.0).model(x), model(x))
