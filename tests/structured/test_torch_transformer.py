"""``nn.Transformer`` checks ``src.size(-1) != self.d_model`` in its forward: that comparison,
in torch's own module code, now binds ``d_model`` to the width it compares, so a cut of the
model width rewrites it (before, the forward check failed: "the feature number of src and
tgt must be equal to d_model"; found by the detection probe's DETR demo)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

import prunekit as pk


class DETRDemo(nn.Module):
    def __init__(self, d: int = 32, queries: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, d, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # enable_nested_tensor without batch_first
            self.transformer = nn.Transformer(d, 4, 1, 1, dim_feedforward=64, dropout=0.0)
        self.linear_bbox = nn.Linear(d, 4)
        self.query_pos = nn.Parameter(torch.rand(queries, d))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x).flatten(2).permute(2, 0, 1)
        q = self.query_pos.unsqueeze(1).repeat(1, x.shape[0], 1)
        return self.linear_bbox(self.transformer(h, q)).sigmoid()


def test_nn_transformer_d_model_follows_the_cut(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DETRDemo().eval()
    x = torch.randn(2, 3, 4, 4)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert result.plan["attrs"] == {"transformer": {"d_model": 16}}
    assert pruned.transformer.d_model == 16 and pruned.conv.out_channels == 16
    with torch.no_grad():
        assert pruned(x).shape == (10, 2, 4)
        loaded = pk.load(pk.save(result, tmp_path / "ckpt"), DETRDemo())
        assert torch.equal(loaded(x), pruned(x))
