"""Every reason a reshape keeps channels whole names the fix."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.graph.test_unfold import _zero_removed_outputs
from torch import Tensor, nn

from prunekit.structured.pruning import prune


class _TwoHolders(nn.Module):
    """Splits its 8 channels as (2, 4), with 4 held by two int attributes and computed a
    statement before the call from both (so which one sizes it is unknown; a local holding
    one attribute, ``width = self.width``, is read as that attribute)."""

    def __init__(self) -> None:
        super().__init__()
        self.width, self.size = 4, 4
        self.proj_in, self.proj_out = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.proj_in(x)
        b, t, _ = h.shape
        width = self.width or self.size
        h = h.view(b, t, 2, width).relu()
        return self.proj_out(h.reshape(b, t, 8))


def test_a_size_held_by_several_attributes_names_the_fix() -> None:
    model = _TwoHolders().eval()
    result = prune(model, torch.randn(2, 5, 6), ratio=0.5)
    reason = {e.name: e.reason for e in result.coverage.entries}["proj_in.weight"]
    assert "by 4, which several attributes of the model hold (width, size)" in reason
    assert "write -1 for that factor, or keep its size in one int attribute" in reason
    assert result.model.proj_in.out_features == 8  # kept whole


class _PointFeature(nn.Module):
    """PointNet's global feature: the max over points, then ``view`` with the width
    written as a literal (fxia22's ``view(-1, 1024)``)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv, self.fc = nn.Conv1d(3, 32, 1), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.max(torch.relu(self.conv(x)), 2, keepdim=True)[0]
        if self.how == "literal":
            return self.fc(h.view(-1, 32))
        if self.how == "batch_literal":
            return self.fc(h.view(x.size(0), 32))
        return self.fc(h.view(x.size(0), -1))


def test_a_literal_width_in_a_view_keeps_the_channels_whole_by_name() -> None:
    """Was: the cut model failed its forward check, and the error blamed hidden width
    reads; now the trace names the literal and the fix."""
    x = torch.randn(2, 3, 10)
    for how in ("literal", "batch_literal"):
        result = prune(_PointFeature(how).eval(), x, ratio=0.5)
        assert result.model.conv.out_channels == 32
        assert "by 32, a literal in the code" in result.coverage.fixed["conv.weight"]
    result = prune(_PointFeature("minus_one").eval(), x, ratio=0.5)
    assert result.model.conv.out_channels == result.model.fc.in_features == 16


class _EspnetAttention(nn.Module):
    """ESPnet's MultiHeadedAttention: ``view(B, -1, self.h, self.d_k)``; at width 16 with 4
    heads, ``h == d_k == 4``."""

    def __init__(self, width: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.d_k, self.h = width // heads, heads
        self.linear_q, self.linear_k, self.linear_v, self.linear_out = (
            nn.Linear(width, width) for _ in range(4))

    def forward(self, x: Tensor) -> Tensor:
        b = x.size(0)
        q, k, v = (proj(x).view(b, -1, self.h, self.d_k).transpose(1, 2)
                   for proj in (self.linear_q, self.linear_k, self.linear_v))
        attn = torch.softmax(q @ k.transpose(-2, -1) * 0.5, dim=-1)
        return self.linear_out((attn @ v).transpose(1, 2).reshape(b, -1, self.h * self.d_k))


def test_a_size_several_attributes_hold_is_told_by_the_attribute_the_call_names() -> None:
    """Was: with ``h == d_k``, which attribute sized the last factor was unknown, and the
    attention was kept whole; the call names ``self.h`` and ``self.d_k`` at their
    positions. ``self.h`` written as a leading factor counts heads: whole heads go, and
    ``d_k`` (the scale's head width) keeps its value. Before, each head lost half its
    width instead and ``h`` stayed 4."""
    torch.manual_seed(0)
    model, x = _EspnetAttention().eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5, importance="random", seed=3)
    pruned = result.model
    assert pruned.d_k == 4 and pruned.h == 2 and pruned.linear_q.out_features == 8
    keep = result.plan["modules"]["linear_q"]["keep"]["out"]
    heads = sorted({c // 4 for c in keep})
    assert keep == [4 * head + j for head in heads for j in range(4)]  # whole heads
    zeroed = _zero_removed_outputs(model, result.plan)
    with torch.no_grad():
        assert pruned(x).shape == (2, 5, 16)
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-4, atol=1e-5)


class _ListWidthHead(nn.Module):
    """megvii ShuffleNetV2's head: ``x.view(-1, self.stage_out_channels[-1])``, a width read
    from a list attribute, which prune does not rewrite."""

    def __init__(self) -> None:
        super().__init__()
        self.stage_out_channels = [-1, 16, 32]
        self.body = nn.Conv2d(3, 16, 3, padding=1)
        self.last = nn.Conv2d(16, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.last(torch.relu(self.body(x))), 1)
        return self.fc(x.contiguous().view(-1, self.stage_out_channels[-1]))


def test_a_width_read_from_a_list_attribute_is_kept_whole() -> None:
    # was cut, and the check failed with "shape '[-1, 32]' is invalid"
    torch.manual_seed(0)
    model, x = _ListWidthHead().eval(), torch.randn(2, 3, 8, 8)
    result = prune(model, x, ratio=0.5)
    assert result.model.last.out_channels == 32 and result.model.body.out_channels == 8
    assert "read from stage_out_channels[...] in the code" in str(result.coverage)


def test_a_width_read_from_a_dict_in_the_call_is_kept_whole() -> None:
    class FromDict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.sizes = nn.Conv2d(3, 8, 3), nn.Linear(8, 2), {"width": 8}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.conv(x).mean((2, 3)).reshape(-1, self.sizes["width"]))

    # the forward check failed (the dict's width cannot follow); now kept whole, said why
    result = prune(FromDict().eval(), torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.model.conv.out_channels == 8
    assert "read from sizes['width'] in the code" in str(result.coverage)
