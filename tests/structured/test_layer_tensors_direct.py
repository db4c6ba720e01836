"""A layer's own tensor used directly by the code as a functional layer's weight: it is cut
only along the axes the layer itself cuts, since the layer's attributes follow those. An
embedding table propagated by a graph (LightGCN's ``A @ self.emb.weight``) had its rows cut,
the vocabulary, with the adjacency's columns: ``emb(11)`` then failed on the pruned model
and a graph of the original size no longer fitted."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

import prunekit as pk


class Propagated(nn.Module):
    def __init__(self, nodes: int = 12, dim: int = 16) -> None:
        super().__init__()
        self.emb = nn.Embedding(nodes, dim)
        adjacency = (torch.rand(nodes, nodes) < 0.3).float()
        adjacency = adjacency + adjacency.T
        self.register_buffer("A", adjacency / adjacency.sum(1, keepdim=True).clamp(min=1))
        self.head = nn.Linear(dim, 2)

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        table = self.A @ self.emb.weight
        return self.head(table[users] * table[items])


def test_an_embedding_table_used_directly_keeps_its_vocabulary(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = Propagated().eval()
    users, items = torch.tensor([0, 3, 8, 11]), torch.tensor([1, 2, 9, 10])
    result = pk.prune(model, (users, items), ratio=0.5)
    pruned = result.model
    assert pruned.emb.weight.shape == (12, 8) and pruned.emb.num_embeddings == 12
    assert pruned.emb.embedding_dim == 8 and pruned.A.shape == (12, 12)
    assert "A" not in result.plan["params"]
    keep = result.plan["params"]["emb.weight"]["keep"]["1"]
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.emb.weight[:, sorted(set(range(16)) - set(keep))] = 0
        torch.testing.assert_close(pruned(users, items), zeroed(users, items))
        assert pruned.emb(torch.tensor([11])).shape == (1, 8)  # every row still there
    pk.save(result, tmp_path / "graph")
    torch.manual_seed(1)
    fresh = Propagated()
    with torch.no_grad():
        torch.testing.assert_close(pk.load(tmp_path / "graph", fresh)(users, items),
                                   pruned(users, items))
