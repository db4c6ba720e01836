"""Regressions the random-network fuzz (tests/graph/test_trace_fuzz.py) found, minimised.

Seeds 1541, 1574 and 2159 share one cause. A grouped conv prunes channel ``j`` of every
group together, so its output labels repeat with the group size; ``x.view(b, self.groups,
c // self.groups, h, w)`` then splits channels along the trailing factor only. When
``self.groups == c // self.groups``, the call writes that size twice and the attribute,
matched by value, was taken to size the trailing factor: it was rewritten with the channels
and the pruned forward failed. Which factor it sizes cannot be told from the values, so
those channels are now kept whole (a ``-1`` for the trailing factor lets them go), unless
the attribute's name says which factor it sizes (``head_dim``). The same ambiguity on a
split along two varying factors (tokens) and in the per-head size check (nanoGPT with as
many heads as channels per head) follows.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

import prunekit
from prunekit.structured.pruning import analyze


class _TiedGroupView(nn.Module):
    """A grouped conv (2 groups of 2) whose output is viewed as ``(b, self.groups=2, 2, h,
    w)``, then scaled within groups (seed 1541), by group (1574) or summed over groups
    (2159). The trailing factor is written ``self.width // self.groups`` (a plain int equal
    to the group count: ambiguous), ``c // self.groups`` with ``c`` read from the shape
    (``trailing="read"``) or -1 (``"infer"``)."""

    def __init__(self, variant: str, trailing: str = "attribute") -> None:
        super().__init__()
        self.variant, self.trailing = variant, trailing
        self.groups, self.width = 2, 4
        self.stem = nn.Conv2d(3, 4, 1)
        self.grouped = nn.Conv2d(4, 4, 1, groups=2)
        self.within = nn.Parameter(torch.rand(1, 1, 2, 1, 1) + 0.5)
        self.by_group = nn.Parameter(torch.rand(1, 2, 1, 1, 1) + 0.5)
        self.head = nn.Conv2d(2 if variant == "sum_groups" else 4, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped(self.stem(x))
        b, c, h, w = x.shape
        size = {"attribute": self.width // self.groups, "read": c // self.groups,
                "infer": -1}[self.trailing]
        y = x.view(b, self.groups, size, h, w)
        if self.variant == "sum_groups":
            return self.head(y.sum(1))
        y = y * (self.within if self.variant == "scale_within" else self.by_group)
        return self.head(y.reshape(b, -1, h, w))


VARIANTS = ["scale_within", "scale_groups", "sum_groups"]


def _prune(model: nn.Module, x: Tensor) -> nn.Module:
    """Prune must succeed (no PruneValidationError), keep the output shape and remove
    parameters."""
    with torch.no_grad():
        reference = model(x)
    before = sum(p.numel() for p in model.parameters())
    pruned = prunekit.prune(model, x, ratio=0.5).model
    with torch.no_grad():
        assert pruned(x).shape == reference.shape
    assert sum(p.numel() for p in pruned.parameters()) < before
    return pruned


@pytest.mark.parametrize("variant", VARIANTS)
def test_ambiguous_group_count_keeps_the_split_channels(variant: str) -> None:
    torch.manual_seed(0)
    model = _TiedGroupView(variant).eval()
    x = torch.randn(2, 3, 4, 4)
    pruned = _prune(model, x)  # (before the fix: PruneValidationError, or for
    assert isinstance(pruned, _TiedGroupView)  # scale_within, groups rewritten to 1)
    assert (pruned.groups, pruned.grouped.out_channels) == (2, 4)  # kept whole
    assert pruned.stem.out_channels == 2  # the grouped conv's inputs still prune
    reasons = analyze(model, x).graph.blocked.values()
    assert any("writes 2 for another factor too" in r for r in reasons)
    assert any("'groups' of the model holds 2" in r for r in reasons)  # not "module ''"


@pytest.mark.parametrize("trailing", ["infer", "read"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_group_view_with_inferred_factor_prunes_its_channels(variant: str,
                                                             trailing: str) -> None:
    """The same split with -1 or the width read over the group count for the trailing
    factor: nothing is ambiguous, the grouped conv loses channel j of both groups and the
    group count stays."""
    torch.manual_seed(0)
    pruned = _prune(_TiedGroupView(variant, trailing).eval(), torch.randn(2, 3, 4, 4))
    assert isinstance(pruned, _TiedGroupView)
    assert (pruned.groups, pruned.grouped.out_channels) == (2, 2)
    if variant == "scale_within":
        assert pruned.within.shape == (1, 1, 1, 1, 1)


class _TokenGroups(nn.Module):
    """The same ambiguity on tokens, with channels varying along both factors:
    ``view(b, t, self.groups=4, c // self.groups)`` with 16 channels. The last factor
    shrinks, and ``groups`` was rewritten as if it sized it. The last factor is the width
    read, ``c``, over the group count before it: every group shrinks alike and ``groups``
    is left alone (no attribute is bound), so the channels prune. With ``per_head=True`` the
    attribute is ``self.head_dim`` and sizes the last factor (``view(b, t, c //
    self.head_dim, self.head_dim)``): its name says which factor it sizes, so it is bound."""

    def __init__(self, per_head: bool = False) -> None:
        super().__init__()
        self.per_head = per_head
        if per_head:
            self.head_dim = 4
        else:
            self.groups = 4
        self.stem, self.fc = nn.Linear(8, 6), nn.Linear(6, 16)
        self.scale = nn.Parameter(torch.rand(1, 1, 1, 4) + 0.5)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(self.stem(x))
        b, t, c = y.shape
        if self.per_head:
            y = y.view(b, t, c // self.head_dim, self.head_dim)
        else:
            y = y.view(b, t, self.groups, c // self.groups)
        return self.head((y * self.scale).reshape(b, t, -1))


def test_group_count_on_tokens_stays_and_every_group_shrinks() -> None:
    torch.manual_seed(0)
    pruned = _prune(_TokenGroups().eval(), torch.randn(2, 5, 8))
    assert isinstance(pruned, _TokenGroups)
    assert (pruned.groups, pruned.fc.out_features, pruned.scale.shape[-1]) == (4, 8, 2)
    assert pruned.stem.out_features == 3


def test_per_head_size_named_by_its_attribute_still_prunes() -> None:
    torch.manual_seed(0)
    pruned = _prune(_TokenGroups(per_head=True).eval(), torch.randn(2, 5, 8))
    assert isinstance(pruned, _TokenGroups)
    assert (pruned.head_dim, pruned.fc.out_features, pruned.scale.shape[-1]) == (2, 8, 2)


class _SquareHeads(nn.Module):
    """nanoGPT-style attention whose per-head size is computed, ``C // self.n_head``, with
    as many heads as channels per head (4 of 4), then an MLP. The per-head size was taken to
    be held by ``n_head`` (equal value), so heads went while ``C`` (read from the residual
    stream) stayed and the view failed. The heads stay, as for any per-head size computed
    from the width read, and every head shrinks alike with that width; the MLP prunes."""

    def __init__(self) -> None:
        super().__init__()
        self.n_head, self.n_embd = 4, 16
        self.inp = nn.Linear(8, 16)
        self.c_attn, self.c_proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.fc1, self.fc2 = nn.Linear(16, 12), nn.Linear(12, 16)
        self.out = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        b, t, c = h.shape
        q, k, v = (part.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)
                   for part in self.c_attn(h).split(self.n_embd, dim=2))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        h = h + self.c_proj(y.transpose(1, 2).reshape(b, t, c))
        return self.out(h + self.fc2(torch.relu(self.fc1(h))))


def test_head_count_does_not_hold_an_equal_per_head_size() -> None:
    torch.manual_seed(0)
    pruned = _prune(_SquareHeads().eval(), torch.randn(2, 5, 8))
    assert isinstance(pruned, _SquareHeads)
    assert (pruned.n_head, pruned.c_attn.out_features, pruned.inp.out_features) == (4, 24, 8)
    assert pruned.fc1.out_features == 6


class _TiedHeadView(_TiedGroupView):
    """The grouped conv's output viewed as ``(b, c // self.head_dim, self.head_dim, h, w)``
    with 2 and 2: the call writes 2 twice, but the name says ``head_dim`` sizes the trailing
    factor, so it is bound and shrinks with the channels."""

    def __init__(self) -> None:
        super().__init__("scale_within")
        del self.groups
        self.head_dim = 2

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped(self.stem(x))
        b, c, h, w = x.shape
        y = x.view(b, c // self.head_dim, self.head_dim, h, w) * self.within
        return self.head(y.reshape(b, -1, h, w))


def test_per_head_size_named_on_a_tied_split_still_prunes() -> None:
    torch.manual_seed(0)
    pruned = _prune(_TiedHeadView().eval(), torch.randn(2, 3, 4, 4))
    assert isinstance(pruned, _TiedHeadView)
    assert (pruned.head_dim, pruned.grouped.out_channels, pruned.within.shape[2]) == (1, 2, 1)
