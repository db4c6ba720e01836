"""``masked_scatter`` of whole rows: Hugging Face's LLaVA, BLIP-2 and Idefics put the
projected image features in place of the image tokens with ``embeds.masked_scatter((ids ==
image_token).unsqueeze(-1).expand_as(embeds), features)``. Before, the op had no handler:
refused, and with ``strict=False`` the language model's width was kept whole."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError


class TinyLlava(nn.Module):
    def __init__(self, rows: bool = True) -> None:
        super().__init__()
        self.rows = rows
        self.vision = nn.Linear(12, 32)
        self.projector = nn.Sequential(nn.Linear(32, 24), nn.GELU(), nn.Linear(24, 24))
        self.embed_tokens = nn.Embedding(40, 24)
        self.mlp = nn.Sequential(nn.Linear(24, 48), nn.SiLU(), nn.Linear(48, 24))
        self.lm_head = nn.Linear(24, 40, bias=False)

    def forward(self, input_ids: Tensor, patches: Tensor) -> Tensor:
        embeds = self.embed_tokens(input_ids)
        features = self.projector(self.vision(patches))
        mask = (input_ids == 1).unsqueeze(-1).expand_as(embeds)
        if not self.rows:  # a mask of single elements: positions inside rows
            mask = mask & (torch.arange(24) < 12)
        x = embeds.masked_scatter(mask, features)
        return self.lm_head(x + self.mlp(x))


def _zeroed(model: nn.Module, plan: dict) -> nn.Module:  # type: ignore[type-arg]
    """``model`` with every removed output channel zeroed where it is made."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            keep, layer = entry["keep"].get("out"), ref.get_submodule(path)
            if keep is None:
                continue
            if isinstance(layer, nn.Embedding):
                layer.weight[:, sorted(set(range(layer.weight.shape[1])) - set(keep))] = 0
            else:
                gone = sorted(set(range(layer.weight.shape[0])) - set(keep))
                layer.weight[gone] = 0
                if layer.bias is not None:
                    layer.bias[gone] = 0
    return ref


def test_image_features_scattered_into_token_rows_prune_with_the_language_model() -> None:
    torch.manual_seed(0)
    model = TinyLlava().eval()
    ids = torch.randint(2, 40, (2, 6))
    ids[:, 1:5] = 1  # four image tokens per sample
    x = (ids, torch.randn(2, 4, 12))
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.embed_tokens.embedding_dim == 12 and pruned.projector[2].out_features == 12
    assert result.plan["modules"]["embed_tokens"]["keep"]["out"] == \
        result.plan["modules"]["projector.2"]["keep"]["out"]
    with torch.no_grad():
        torch.testing.assert_close(pruned(*x), _zeroed(model, result.plan)(*x))
        other = (torch.tensor([[5, 1, 1, 7, 1, 1], [1, 1, 9, 1, 1, 3]]),  # tokens elsewhere
                 torch.randn(2, 4, 12))
        torch.testing.assert_close(pruned(*other), _zeroed(model, result.plan)(*other))


def test_a_mask_inside_rows_is_refused() -> None:
    torch.manual_seed(0)
    ids = torch.randint(2, 40, (2, 6))
    ids[:, 1:3] = 1
    with pytest.raises(UnsupportedOpError, match="masked_scatter"):
        pk.prune(TinyLlava(rows=False).eval(), (ids, torch.randn(2, 4, 12)), ratio=0.5)
