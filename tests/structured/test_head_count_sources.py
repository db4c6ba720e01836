"""Where a head split reads its head count from: the module's own int attribute (heads go,
the attribute is rewritten) or a config object, a dict or a global constant (the count is
fixed, as a literal is: channels go inside every head). Before, an unread
``self.num_heads`` of the same value was rewritten while the split kept reading the config,
so the pruned model split its channels into the old number of heads (max diff 1.3e-2, no
warning, and save/load kept it)."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prunekit.structured import prune

N_HEAD = 4


class _Attention(nn.Module):
    def __init__(self, source: str, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.source = source
        self.config = SimpleNamespace(num_attention_heads=heads)
        self.cfg = {"n_heads": heads}
        self.num_heads = heads  # read only by the "attribute" source
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (
            nn.Linear(dim, dim) for _ in range(4))

    def _split(self, h: Tensor) -> Tensor:
        B, T, _ = h.shape
        if self.source == "config":
            return h.view(B, T, self.config.num_attention_heads, -1).transpose(1, 2)
        if self.source == "dict":
            return h.view(B, T, self.cfg["n_heads"], -1).transpose(1, 2)
        if self.source == "global":
            return h.view(B, T, N_HEAD, -1).transpose(1, 2)
        return h.view(B, T, self.num_heads, -1).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (self._split(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, scale=0.125)
        return self.o_proj(out.transpose(1, 2).flatten(2))


def _removed_zeroed(model: nn.Module, plan: dict) -> nn.Module:
    """The unpruned model with every removed channel zeroed where it is made and read."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            layer = ref.get_submodule(path)
            keep = entry["keep"]
            if "in" in keep:
                gone = sorted(set(range(layer.weight.shape[1])) - set(keep["in"]))
                layer.weight[:, gone] = 0
            if "out" in keep:
                gone = sorted(set(range(layer.weight.shape[0])) - set(keep["out"]))
                layer.weight[gone] = 0
                layer.bias[gone] = 0
    return ref


@pytest.mark.parametrize("source", ["attribute", "config", "dict", "global"])
def test_the_head_count_the_split_reads_is_the_one_that_changes(source: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(_Attention(source), nn.Linear(32, 5)).eval()
    x = torch.randn(2, 6, 32)
    result = prune(model, x, ratio=0.5)
    attn = result.model[0]
    assert attn.q_proj.out_features == 16
    if source == "attribute":  # two whole heads go
        assert result.plan["attrs"] == {"0": {"num_heads": 2}} and attn.num_heads == 2
    else:  # four heads of 4 channels: the number read stays true
        assert result.plan["attrs"] == {} and attn.num_heads == 4
    reference = _removed_zeroed(model, result.plan)
    with torch.no_grad():
        for inputs in (x, torch.randn(3, 9, 32)):
            torch.testing.assert_close(result.model(inputs), reference(inputs))
