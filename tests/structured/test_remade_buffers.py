"""A tensor that the model's code remakes after construction (ConViT's relative positions,
``self.rel_indices = self.get_rel_indices(N)`` when N changes) is not cut: the code would
remake it at its own width on another input size, and in a model that ``pk.load`` builds
afresh (a non-persistent buffer is not saved), where the cut layer reading it then fails.
Found by benchmarks/structured_roundtrip.py on timm's convit_tiny, whose reload failed."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

import prunekit as pk


class RelativePositions(nn.Module):
    """ConViT's GPSA position branch: a [1, N, N, 3] table of (dx, dy, d²) made by the forward
    for the current N, projected to one score per head."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(3, heads)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("rel_indices", torch.zeros(1, 1, 1, 3), persistent=False)

    def get_rel_indices(self, n: int) -> Tensor:
        ind = torch.arange(n, dtype=torch.float32)
        dx = ind.view(1, -1) - ind.view(-1, 1)
        rel = torch.zeros(1, n, n, 3)
        rel[..., 0], rel[..., 1], rel[..., 2] = dx, dx.t(), dx ** 2 + dx.t() ** 2
        return rel

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if self.rel_indices.shape[1] != n:
            self.rel_indices = self.get_rel_indices(n)
        scores = self.pos_proj(self.rel_indices.expand(x.shape[0], -1, -1, -1))
        attn = scores.permute(0, 3, 1, 2).softmax(-1).mean(1)  # [B, N, N]
        return self.out(attn @ torch.relu(self.inp(x)))


class FourierFeatures(nn.Module):
    """A fixed random projection made once, at construction: its columns may be cut."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("B", torch.randn(2, 16))
        self.mlp = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3))

    def forward(self, x: Tensor) -> Tensor:
        proj = x @ self.B
        return self.mlp(torch.cat([proj.sin(), proj.cos()], dim=-1))


def test_a_tensor_the_forward_remakes_keeps_the_channels_it_makes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = RelativePositions().eval()
    x = torch.randn(2, 5, 16)
    model(x)  # users run their model before pruning it: the table is already there
    result = pk.prune(model, x, ratio=0.5, ignore=[model.out])

    pruned = result.model
    assert pruned.pos_proj.in_features == 3 and pruned.rel_indices.shape == (1, 5, 5, 3)
    assert pruned.inp.out_features == 8  # the rest still prunes
    assert "rel_indices" not in str(result.plan["params"])
    with torch.no_grad():
        assert pruned(torch.randn(2, 7, 16)).shape == (2, 7, 16)  # the code remakes it
    loaded = pk.load(pk.save(result, tmp_path / "ckpt"), RelativePositions())
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_the_reason_names_the_line_that_remakes_it() -> None:
    from prunekit.graph.numbers import rebound_attributes

    found = dict(rebound_attributes(RelativePositions))
    assert set(found) == {"rel_indices"}
    path, line = found["rel_indices"].rsplit(":", 1)
    assert Path(path).read_text().splitlines()[int(line) - 1].strip().startswith(
        "self.rel_indices = self.get_rel_indices(n)")


def test_a_buffer_made_once_at_construction_is_still_cut(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FourierFeatures().eval()
    x = torch.randn(4, 2)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.B.shape == (2, 8) and result.model.mlp[0].in_features == 16
    loaded = pk.load(pk.save(result, tmp_path / "ckpt"), FourierFeatures())
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))
