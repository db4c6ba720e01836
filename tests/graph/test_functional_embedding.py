"""``F.embedding`` called by code: an ``nn.Embedding`` subclass with a forward of its own (a
scaled word embedding, as in Gemma/BART/OPT) or a computed table. The weight's columns are
the output's channels and are cut with the layers that read them; the indices couple nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class _ScaledEmbedding(nn.Embedding):
    def forward(self, ids: Tensor) -> Tensor:  # not nn.Embedding's: traced op by op
        return super().forward(ids) * self.embedding_dim ** 0.5


class _TextNet(nn.Module):
    def __init__(self, computed: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.computed = computed
        self.embed = _ScaledEmbedding(50, 16)
        self.table = nn.Parameter(torch.randn(50, 16))
        self.up = nn.Linear(16, 32)
        self.down = nn.Linear(32, 4)

    def forward(self, ids: Tensor) -> Tensor:
        x = F.embedding(ids, self.table * 2.0) if self.computed else self.embed(ids)
        return self.down(torch.relu(self.up(x))).mean(1)


def test_embedding_subclass_columns_are_cut(tmp_path: Path) -> None:
    model, ids = _TextNet().eval(), torch.randint(0, 50, (2, 7))
    result = pk.prune(model, ids, ratio=0.5)
    pruned = result.model
    assert pruned.embed.weight.shape == (50, 8) and pruned.embed.embedding_dim == 8
    assert pruned.up.in_features == 8 and pruned.up.out_features == 16
    kept = result.plan["params"]["embed.weight"]["keep"]["1"]
    assert torch.equal(pruned.embed.weight, model.embed.weight[:, kept])
    pk.save(result, tmp_path / "out")
    reloaded = pk.load(tmp_path / "out", _TextNet().eval())
    with torch.no_grad():
        assert torch.equal(reloaded(ids), pruned(ids))


def test_computed_embedding_table_is_cut_along_its_columns() -> None:
    model, ids = _TextNet(computed=True).eval(), torch.randint(0, 50, (2, 7))
    pruned = pk.prune(model, ids, ratio=0.5).model
    assert pruned.table.shape == (50, 8) and pruned.up.in_features == 8
    with torch.no_grad():
        assert pruned(ids).shape == (2, 4)
