"""Structured ``prune`` on graph neural networks of PyTorch Geometric: does it prune, and is
the pruned model exactly the unpruned one with the removed channels zeroed?

Each model is random-init, in eval mode, pruned at ratio 0.5 (L2, default ``strict=True``)
on one random graph (50 nodes, 200 edges, 16 features) and run on it and on another (73
nodes, 311 edges). ``diff``: the largest difference from the unpruned model whose layers
ignore the removed input channels (every ``in`` dim of the plan's layers and every axis 1
of a 2-D parameter it cuts: PyG's own ``Linear`` is called through ``F.linear``, so its
weight is cut as a parameter); none of these models normalises or averages over the
channels it prunes, so the two should agree to float rounding. ``user``: the user's model
left as it was (``GCNConv(cached=True)`` caches the graph it first sees).

torch_geometric is a benchmark-only dependency, installed with the vision extras:

    .venv-vision/bin/pip install -c constraints.txt torch_geometric
    PYTHONPATH=src .venv-vision/bin/python benchmarks/structured_pyg.py
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.structured import prune


def _graph(nodes: int, edges: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(nodes, 16, generator=gen),
            torch.randint(0, nodes, (2, edges), generator=gen))


class Stack(nn.Module):
    """Two graph convolutions with ReLU, then a linear classifier per node."""

    def __init__(self, make: Callable[[int, int], nn.Module], hidden: int = 32) -> None:
        super().__init__()
        self.conv1, self.conv2 = make(16, hidden), make(hidden, hidden)
        self.head = nn.Linear(hidden, 7)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        h = self.conv1(x, edge_index).relu()
        return self.head(self.conv2(h, edge_index).relu())


class Pooled(nn.Module):
    """Graph classification: GCN, then the mean of each graph's nodes."""

    def __init__(self) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv1, self.conv2 = GCNConv(16, 32), GCNConv(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        from torch_geometric.nn import global_mean_pool

        batch = torch.arange(x.shape[0]) * 4 // x.shape[0]  # four graphs
        h = self.conv2(self.conv1(x, edge_index).relu(), edge_index).relu()
        return self.head(global_mean_pool(h, batch))


class Builtin(nn.Module):
    """One of torch_geometric.nn.models (GCN, GraphSAGE, GIN), three layers."""

    def __init__(self, name: str) -> None:
        super().__init__()
        from torch_geometric.nn import models

        self.net = getattr(models, name)(16, 32, num_layers=3, out_channels=7)

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        return self.net(x, edge_index)


def models() -> dict[str, Callable[[], nn.Module]]:
    from torch_geometric import nn as gnn

    def mlp(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Linear(i, o), nn.ReLU(), nn.Linear(o, o))

    return {
        "GCNConv": lambda: Stack(gnn.GCNConv),
        "GCNConv cached": lambda: Stack(lambda i, o: gnn.GCNConv(i, o, cached=True)),
        "SAGEConv mean": lambda: Stack(gnn.SAGEConv),
        "SAGEConv max": lambda: Stack(lambda i, o: gnn.SAGEConv(i, o, aggr="max")),
        "GINConv": lambda: Stack(lambda i, o: gnn.GINConv(mlp(i, o))),
        "GraphConv": lambda: Stack(gnn.GraphConv),
        "TAGConv": lambda: Stack(gnn.TAGConv),
        "EdgeConv": lambda: Stack(lambda i, o: gnn.EdgeConv(mlp(2 * i, o))),
        "GATConv heads=4": lambda: Stack(lambda i, o: gnn.GATConv(i, o // 4, heads=4)),
        "GATv2Conv heads=4": lambda: Stack(lambda i, o: gnn.GATv2Conv(i, o // 4, heads=4)),
        "TransformerConv heads=4": lambda: Stack(
            lambda i, o: gnn.TransformerConv(i, o // 4, heads=4)),
        "GCN + global_mean_pool": Pooled,
        "models.GCN": lambda: Builtin("GCN"),
        "models.GraphSAGE": lambda: Builtin("GraphSAGE"),
        "models.GIN": lambda: Builtin("GIN"),
    }


def zeroed(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """A copy of ``model`` whose layers ignore the input channels the plan removes."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            module = ref.get_submodule(path)
            keep = entry["keep"].get("in")
            if keep is not None and isinstance(getattr(module, "weight", None), Tensor):
                _zero_columns(module.weight, keep)
        for path, entry in plan["params"].items():
            tensor = ref.get_parameter(path)
            if tensor.dim() == 2 and "1" in entry["keep"]:
                _zero_columns(tensor, entry["keep"]["1"])
    return ref


def _zero_columns(weight: Tensor, keep: list[int]) -> None:
    removed = sorted(set(range(weight.shape[1])) - set(keep))
    weight[:, removed] = 0


def attempt(make: Callable[[], nn.Module], graphs: list[tuple[Tensor, Tensor]]) -> str:
    torch.manual_seed(0)
    model = make().eval()
    cached = [m for m in model.modules() if hasattr(m, "_cached_edge_index")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = prune(model, graphs[0], ratio=0.5)
    except Exception as exc:  # a benchmark reports failures instead of stopping
        return f"{'FAIL':>6}  {type(exc).__name__}: {' '.join(str(exc).split())[:90]}"
    untouched = all(m._cached_edge_index is None for m in cached)
    diffs = []
    for graph in graphs:  # fresh copies: a cached layer keeps the first graph it sees
        pruned, reference = copy.deepcopy(result.model), zeroed(model, result.plan)
        with torch.no_grad():
            diffs.append(float((pruned(*graph) - reference(*graph)).abs().max()))
    return (f"{'ok':>6}{result.params_kept:>7.2f}{diffs[0]:>10.1e}{diffs[1]:>10.1e}"
            f"{'yes' if untouched else 'NO':>6}")


def main() -> None:
    torch.set_num_threads(1)
    graphs = [_graph(50, 200, 0), _graph(73, 311, 1)]
    print(f"{'model':<26}{'prune':>6}{'kept':>7}{'diff':>10}{'diff new':>10}{'user':>6}")
    rows = [(name, attempt(make, graphs)) for name, make in models().items()]
    for name, row in rows:
        print(f"{name:<26}{row}")
    ok = [row for _, row in rows if row.split()[0] == "ok"]
    exact = [row for row in ok if max(float(row.split()[2]), float(row.split()[3])) < 1e-5]
    print(f"{len(rows)} models: {len(ok)} prune, {len(exact)} of them equal to the zeroed "
          f"model within 1e-5 on both graphs")


if __name__ == "__main__":
    main()
