"""Parameters used directly by the code as a functional layer's weight.

A layer's own tensor is cut only along the axes the layer itself cuts, since the layer's
attributes follow those: an embedding table propagated by a graph (LightGCN's ``A @
self.emb.weight``) had its rows cut, the vocabulary, with the adjacency's columns, so
``emb(11)`` then failed on the pruned model. A weight scaled by a number (the equalized
learning rate of ProGAN's and StyleGAN's layers) or viewed with dims of size 1 added
(Glow's ``F.conv2d(x, self.weight.view(c, c, 1, 1))``) is the layer's weight."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
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


class EqualLinear(nn.Module):
    """ProGAN's / StyleGAN's equalized learning rate: the weight scaled by a Python float in
    the forward (and the bias by ``lr_mul``)."""

    def __init__(self, cin: int, cout: int, lr_mul: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.randn(cout))
        self.scale, self.lr_mul = cin ** -0.5 * lr_mul, lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, bias=self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.randn(cout))
        self.scale = (cin * 9) ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.scale * self.weight, self.bias, padding=1)


class InvertibleConv1x1(nn.Module):
    """Glow's 1x1 convolution: a 2-D weight viewed as a conv kernel (``how`` writes it)."""

    def __init__(self, channels: int, how: str) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linalg.qr(torch.randn(channels, channels))[0])
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        w, c = self.weight, self.weight.shape[0]
        kernel = {"view": lambda: w.view(c, c, 1, 1), "index": lambda: w[:, :, None, None],
                  "unsqueeze": lambda: w.unsqueeze(2).unsqueeze(3),
                  "reshape": lambda: w.reshape(c, c, 1, 1)}[self.how]()
        return F.conv2d(x, kernel)


def _zero_read_columns(model: nn.Module, plan: dict) -> nn.Module:  # type: ignore[type-arg]
    """``model`` with the input columns that the plan removes zeroed in every weight that
    reads them (layers and parameters)."""
    ref = copy.deepcopy(model)
    cuts = {path: entry["keep"]["in"] for path, entry in plan["modules"].items()
            if "in" in entry["keep"]}
    cuts.update({path.removesuffix(".weight"): entry["keep"]["1"]
                 for path, entry in plan["params"].items()
                 if path.endswith(".weight") and "1" in entry["keep"]})
    with torch.no_grad():
        for path, keep in cuts.items():
            weight = ref.get_submodule(path).weight
            weight[:, sorted(set(range(weight.shape[1])) - set(keep))] = 0
    return ref


def test_equalized_learning_rate_layers_prune_as_layers() -> None:
    """Before: EqualLinear's weight was "only used by parameters, not by any layer" (nothing
    pruned) and EqualConv2d's was refused as computed."""
    torch.manual_seed(0)
    mlp = nn.Sequential(EqualLinear(16, 32), nn.LeakyReLU(0.2), EqualLinear(32, 32),
                        nn.LeakyReLU(0.2), EqualLinear(32, 4)).eval()
    cnn = nn.Sequential(EqualConv2d(3, 16), nn.LeakyReLU(0.2), EqualConv2d(16, 16),
                        nn.LeakyReLU(0.2), EqualConv2d(16, 3)).eval()
    for model, x, other, wide in ((mlp, torch.randn(2, 16), torch.randn(3, 16), 16),
                                  (cnn, torch.randn(2, 3, 8, 8), torch.randn(1, 3, 6, 6), 8)):
        result = pk.prune(model, x, ratio=0.5)
        pruned = result.model
        assert pruned[0].weight.shape[0] == wide and pruned[0].bias.shape == (wide,)
        assert pruned[2].weight.shape[:2] == (wide, wide)
        zeroed = _zero_read_columns(model, result.plan)
        with torch.no_grad():
            for sample in (x, other):
                torch.testing.assert_close(pruned(sample), zeroed(sample))


@pytest.mark.parametrize("how", ["view", "index", "unsqueeze", "reshape"])
def test_a_2d_weight_viewed_as_a_conv_kernel_is_the_convs_weight(how: str) -> None:
    """Before: refused ("its weight is computed, not a parameter of the model")."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), InvertibleConv1x1(16, how),
                          nn.ReLU(), nn.Conv2d(16, 3, 1)).eval()
    x = torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model[2].weight.shape == (8, 8) and result.model[0].out_channels == 8
    zeroed = _zero_read_columns(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x))


class TiedAutoencoder(nn.Module):
    """The decoder reuses the encoder's weight transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(32, 24)
        self.b_dec = nn.Parameter(torch.randn(32))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(torch.relu(self.enc(x)), self.enc.weight.t(), self.b_dec)


def test_a_tied_decoder_through_f_linear_of_the_transpose_prunes_the_code() -> None:
    """Before, ``F.linear(h, W.t())`` read ``W.t()`` elementwise and nothing was pruned
    (``h @ W`` pruned)."""
    torch.manual_seed(0)
    model, x = TiedAutoencoder().eval(), torch.randn(4, 32)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.enc.out_features == 12 and result.model.b_dec.shape == (32,)
    gone = sorted(set(range(24)) - set(result.plan["modules"]["enc"]["keep"]["out"]))
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.enc.weight[gone] = 0
        zeroed.enc.bias[gone] = 0
        torch.testing.assert_close(result.model(x), zeroed(x))
