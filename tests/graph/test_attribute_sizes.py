"""Sizes a reshape takes from module attributes for dims whose channels pass through it
unchanged: a tuple attribute passed whole (``view(self.shape)``, ``view(self.bias_shape)``)
and a head count (``view(-1, self.num_heads)``), read by the module whose code made the call
(a child's helper method included). The attribute is rewritten with the channels kept."""

from __future__ import annotations

import copy
import itertools
import os
from pathlib import Path

import pytest
import torch
from tests.structured.test_equivalence import _zero_removed_inputs as _zeroed
from torch import Tensor, nn

import prunekit
from prunekit.errors import PruneValidationError
from prunekit.graph.callers import NOT_USER_CODE
from prunekit.io.checkpoint import load, save
from prunekit.structured import prune


class Scale(nn.Module):
    """MetaFormer's ``Scale``: a per-channel scale reshaped by a tuple attribute."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shape = (dim, 1, 1)
        self.scale = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(self.shape)


class PoolBlock(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(dim, 32, 1), nn.Conv2d(32, dim, 1)
        self.res_scale = Scale(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.res_scale(x) + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean((2, 3)))


def test_a_tuple_attribute_passed_whole_is_rewritten(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = PoolBlock().eval(), torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        expected = model(x)
    with torch.no_grad():
        assert torch.equal(prune(model, x, ratio=0.0, ignore=[model.head]).model(x), expected)
    result = prune(model, x, ratio=0.5, ignore=[model.head])
    pruned = result.model
    assert pruned.res_scale.shape == (8, 1, 1) and pruned.res_scale.scale.shape == (8,)
    assert result.plan["attrs"]["res_scale"] == {"shape[0]": 8}
    assert model.res_scale.shape == (16, 1, 1)  # the user's model is left as it was
    save(result, tmp_path / "p")
    torch.manual_seed(0)
    loaded = load(tmp_path / "p", PoolBlock().eval())
    assert loaded.res_scale.shape == (8, 1, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), pruned(x))


def test_a_tuple_of_equal_value_built_in_code_is_not_taken_for_the_attribute() -> None:
    class Literal(Scale):
        def forward(self, x: Tensor) -> Tensor:
            shape = list(self.shape)  # equal value, not the attribute (a copy read into a
            return x * self.scale.view(shape)  # local: read in the call, it is kept whole)

    model, x = PoolBlock().eval(), torch.randn(2, 3, 6, 6)
    model.res_scale = Literal(16)
    with pytest.raises(PruneValidationError, match="forward check"):
        prune(model, x, ratio=0.5, ignore=[model.head])


class RelPosBias(nn.Module):
    """timm's ``RelPosMlp``: an MLP over the relative offsets' coordinates gives a bias per
    head, gathered and reshaped by ``bias_shape``; its parent calls the helper method, not
    ``forward``, so the sizes it reads (``self.num_heads``) are its own."""

    def __init__(self, window: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.bias_shape = (window * window, window * window, heads)
        points = list(itertools.product(range(window), range(window)))
        offsets: dict[tuple[int, int], int] = {}
        idx = [offsets.setdefault((a[0] - b[0], a[1] - b[1]), len(offsets))
               for a in points for b in points]
        self.register_buffer("index", torch.tensor(idx), persistent=False)
        self.register_buffer("coords", torch.tensor(list(offsets), dtype=torch.float),
                             persistent=False)
        self.mlp = nn.Linear(2, heads)

    def get_bias(self) -> Tensor:
        table = self.mlp(self.coords).view(-1, self.num_heads)
        return table[self.index].view(self.bias_shape).permute(2, 0, 1)


class RelPosAttention(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 4, window: int = 3) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos = RelPosBias(window, heads)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)
        attn = (q @ k.transpose(-2, -1) + self.rel_pos.get_bias()).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class RelPosNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = RelPosAttention()
        self.head = nn.Linear(24, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head((x + self.attn(x)).mean(1))


def test_sizes_a_childs_helper_method_reads_are_rewritten(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = RelPosNet().eval(), torch.randn(2, 9, 24)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(prune(model, x, ratio=0.0, ignore=[model.head]).model(x), expected)
    result = prune(model, x, ratio=0.5, ignore=[model.head])
    rel_pos = result.model.attn.rel_pos
    assert result.model.attn.num_heads == 2
    assert rel_pos.num_heads == 2 and rel_pos.bias_shape == (9, 9, 2)
    assert rel_pos.mlp.out_features == 2
    assert result.plan["attrs"]["attn.rel_pos"] == {"num_heads": 2, "bias_shape[2]": 2}
    with torch.no_grad():
        assert rel_pos.get_bias().shape == (2, 9, 9)
        assert result.model(x).shape == (2, 3)
    save(result, tmp_path / "p")
    torch.manual_seed(0)
    loaded = load(tmp_path / "p", RelPosNet().eval())
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_model_code_beside_an_installed_prunekit_is_user_code() -> None:
    """Only torch's and prunekit's own frames are passed over when looking for the code
    that made an op: not those of packages installed beside prunekit (transformers, timm in
    site-packages), which hold the model's code."""
    package = os.path.dirname(prunekit.__file__)
    beside = os.path.join(os.path.dirname(package), "transformers", "modeling.py")
    assert not beside.startswith(NOT_USER_CODE)
    assert os.path.join(package, "graph", "trace.py").startswith(NOT_USER_CODE)
    assert torch.nn.modules.module.__file__.startswith(NOT_USER_CODE)


class LastTokens(nn.Module):
    """Reshapes back by sizes read from the input's shape; ``self.window`` (16, the width
    too) counts tokens and must never be taken for the width."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.inp, self.fc, self.out = nn.Linear(8, d), nn.Linear(d, d), nn.Linear(d, 4)
        self.window = 16

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        b, t, d = h.shape
        y = self.fc(h.reshape(-1, d)).reshape(b, t, d)
        return self.out(y[:, -self.window:].mean(1))


def test_an_attribute_equal_to_a_size_read_from_a_shape_is_not_rewritten() -> None:
    torch.manual_seed(0)
    model = LastTokens().eval()
    # one token: the reshape (1, 16) -> (1, 1, 16) puts the size-1 dims beside the width
    result = prune(model, torch.randn(1, 1, 8), ratio=0.5)
    assert result.model.window == 16 and "window" not in str(result.plan.get("attrs", {}))
    assert result.model.fc.out_features == 8
    x = torch.randn(2, 30, 8)  # 30 tokens: the window matters
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), _zeroed(model, result.plan)(x))


class SharedPlanes(nn.Module):
    """Point Transformer v1's position encoding split into groups of ``mid_planes``, the
    group count computed from the same attribute (``out_planes // mid_planes``)."""

    def __init__(self, how: str, width: int = 16) -> None:
        super().__init__()
        self.how = how
        self.out_planes = self.mid_planes = width
        self.inp, self.pos = nn.Linear(3, width), nn.Linear(3, width)
        self.q, self.head = nn.Linear(width, width), nn.Linear(width, 5)

    def forward(self, x: Tensor) -> Tensor:
        p = self.pos(x)
        if self.how == "quotient":
            parts = p.view(p.shape[0], p.shape[1], self.out_planes // self.mid_planes,
                           self.mid_planes)
        else:
            parts = p.view(p.shape[0], p.shape[1], 1, -1)
        return self.head(torch.relu(self.q(self.inp(x)) + parts.sum(2)))


def test_an_attribute_that_sizes_two_factors_is_not_rewritten_for_one() -> None:
    # before, mid_planes was rewritten to 8, the quotient became 2 and the check failed
    model, x = SharedPlanes("quotient").eval(), torch.randn(2, 10, 3)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.mid_planes == pruned.out_planes == 16 and pruned.pos.out_features == 16
    assert "computes another factor from it" in result.coverage.fixed["pos.weight"]
    assert pruned.inp.out_features == 8  # the hidden width of q is still cut
    x = torch.randn(3, 7, 3)
    torch.testing.assert_close(pruned(x), _zeroed(model, result.plan)(x))


def test_the_same_split_written_with_minus_one_prunes() -> None:
    model = SharedPlanes("minus_one").eval()
    result = prune(model, torch.randn(2, 10, 3), ratio=0.5)
    assert result.model.pos.out_features == 8


class FlatFields(nn.Module):
    """DeepFM's deep part: field embeddings flattened by ``view(-1, self.num_fields *
    self.embed_dim)``."""

    def __init__(self, fields: int = 5, dim: int = 16) -> None:
        super().__init__()
        self.num_fields, self.embed_dim = fields, dim
        self.emb = nn.Embedding(50, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.fc = nn.Linear(fields * dim, 1)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.mlp(self.emb(ids))
        return self.fc(x.view(-1, self.num_fields * self.embed_dim))


def test_the_factor_of_a_product_that_counts_the_channels_is_rewritten() -> None:
    # before, neither factor followed and the forward check failed
    torch.manual_seed(0)
    model = FlatFields().eval()
    result = prune(model, torch.randint(0, 50, (4, 5)), ratio=0.5)
    pruned = result.model
    assert (pruned.embed_dim, pruned.num_fields, pruned.fc.in_features) == (8, 5, 40)
    ids = torch.randint(0, 50, (3, 5))
    torch.testing.assert_close(pruned(ids), _zeroed(model, result.plan)(ids))


def test_a_product_none_of_whose_factors_counts_the_channels_keeps_them() -> None:
    model = FlatFields().eval()
    model.num_fields, model.embed_dim = 10, 8  # 10 * 8 == 5 * 16, but no factor is 16
    result = prune(model, torch.randint(0, 50, (4, 5)), ratio=0.5)
    assert result.model.mlp[0].out_features == 16
    assert "product of attributes" in result.coverage.fixed["fc.weight"]
    assert result.model.emb.embedding_dim == 8  # the hidden width before still prunes


class FlatFieldsOther(nn.Module):
    """The same flatten written with other attributes, on another line."""

    def __init__(self, fields: int = 3, dim: int = 12) -> None:
        super().__init__()
        self.n_fields, self.width = fields, dim
        self.emb = nn.Embedding(50, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.fc = nn.Linear(fields * dim, 1)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.mlp(self.emb(ids))
        return self.fc(x.view(-1, self.width * self.n_fields))


class TwoTowers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.one, self.other = FlatFields(), FlatFieldsOther()

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.one(a) + self.other(b)


def test_each_product_is_read_from_its_own_call() -> None:
    # a cached reading of the first call was once returned for every later one
    torch.manual_seed(0)
    model = TwoTowers().eval()
    a, b = torch.randint(0, 50, (4, 5)), torch.randint(0, 50, (4, 3))
    result = prune(model, (a, b), ratio=0.5)
    pruned = result.model
    assert (pruned.one.embed_dim, pruned.other.width, pruned.other.n_fields) == (8, 6, 3)
    torch.testing.assert_close(pruned(a, b), _zeroed(model, result.plan)(a, b))


class CopiedConv1D(nn.Module):
    """GPT-2's ``Conv1D`` copied into user code: its output size is put together a line
    before the view that uses it."""

    def __init__(self, nf: int, nx: int, starred: bool = False) -> None:
        super().__init__()
        self.nf, self.starred = nf, starred
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        size_out = x.size()[:-1] + (self.nf,)  # noqa: RUF005 (as GPT-2 writes it)
        x = torch.addmm(self.bias, x.view(-1, x.size(-1)), self.weight)
        return x.view(*size_out) if self.starred else x.view(size_out)


@pytest.mark.parametrize("starred", [False, True])
def test_a_size_put_together_in_an_earlier_statement_is_rewritten(starred: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(CopiedConv1D(32, 8, starred), nn.GELU(),
                          CopiedConv1D(8, 32, starred), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 5, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert (pruned[0].nf, pruned[0].weight.shape, pruned[2].weight.shape) == \
        (16, (8, 16), (16, 4))
    assert result.plan["attrs"]["0"] == {"nf": 16}
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        kept = result.plan["params"]["2.weight"]["keep"]["0"]
        zeroed[2].weight[[i for i in range(32) if i not in kept]] = 0
        kept = result.plan["modules"]["3"]["keep"]["in"]
        zeroed[3].weight[:, [i for i in range(8) if i not in kept]] = 0
    for inputs in (x, torch.randn(3, 2, 8)):
        torch.testing.assert_close(pruned(inputs), zeroed(inputs))
