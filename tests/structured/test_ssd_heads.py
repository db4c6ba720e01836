"""A Mamba2-style mixer (state-space duality, SSD): one projection split into unequal parts
by int attributes (``[self.inner, self.conv_dim, self.num_heads]``), then the conv output
split into x, B and C (``[self.inner, n_groups * state, n_groups * state]``), and a scan in
which B and C, shared by all heads, are repeated to ``num_heads = x.shape[2]`` heads
(``repeat_interleave(..., output_size=heads)``) and meet x per head in einsums.

Whole heads prune (x, gate and dt rows, the conv's x channels, ``A_log``/``D``/``dt_bias``,
``out_proj``'s columns), the attributes the splits read are rewritten, and pruning equals
zeroing; B and C, whose sizes the code computes, keep their width. Transformers' own
Mamba2: tests/structured/test_transformers.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.structured.residual import Residual
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune


def _segsum(a: Tensor) -> Tensor:
    """``out[..., t, s] = a[..., s+1] + ... + a[..., t]`` below the diagonal, -inf above."""
    cs = torch.cumsum(a, dim=-1)
    seg = cs[..., :, None] - cs[..., None, :]
    length = a.shape[-1]
    upper = ~torch.tril(torch.ones(length, length, dtype=torch.bool))
    return seg.masked_fill(upper, float("-inf"))


def ssd_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, d: Tensor) -> Tensor:
    """The quadratic (one-chunk) form of the SSD scan, x ``[B, L, H, P]``, dt ``[B, L, H]``,
    b and c ``[B, L, G, N]``: ``y_t = sum_s (c_t · b_s) exp(sum a dt) dt_s x_s + d x_t``."""
    heads, groups = x.shape[2], b.shape[2]
    b = b.repeat_interleave(heads // groups, dim=2, output_size=heads)
    c = c.repeat_interleave(heads // groups, dim=2, output_size=heads)
    decay = torch.exp(_segsum((a * dt).permute(0, 2, 1)))  # [B, H, L, L]
    scores = torch.einsum("blhn,bshn->blsh", c, b) * decay.permute(0, 2, 3, 1)
    y = torch.einsum("blsh,bshp->blhp", scores, x * dt[..., None])
    return y + d[:, None] * x


class SSDMixer(nn.Module):
    def __init__(self, dim: int = 8, heads: int = 4, head_dim: int = 3, state: int = 5,
                 groups: int = 1, dt_written: str = "attribute") -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.state_size, self.n_groups = \
            heads, head_dim, state, groups
        self.inner = heads * head_dim
        self.conv_dim = self.inner + 2 * groups * state
        self.dt_written = dt_written
        self.in_proj = nn.Linear(dim, self.inner + self.conv_dim + heads)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, 3, groups=self.conv_dim,
                                padding=2)
        self.A_log = nn.Parameter(torch.rand(heads))
        self.D = nn.Parameter(torch.randn(heads))
        self.dt_bias = nn.Parameter(torch.randn(heads))
        self.out_proj = nn.Linear(self.inner, dim)

    def forward(self, u: Tensor) -> Tensor:
        batch, length, _ = u.shape
        if self.dt_written == "literal":  # the dt part's size written as a number
            gate, xbc, dt = self.in_proj(u).split([self.inner, self.conv_dim, 4], dim=-1)
        else:
            gate, xbc, dt = self.in_proj(u).split(
                [self.inner, self.conv_dim, self.num_heads], dim=-1)
        xbc = F.silu(self.conv1d(xbc.transpose(1, 2))[..., :length]).transpose(1, 2)
        x, b, c = torch.split(xbc, [self.inner, self.n_groups * self.state_size,
                                    self.n_groups * self.state_size], dim=-1)
        y = ssd_scan(x.view(batch, length, self.num_heads, self.head_dim),
                     F.softplus(dt + self.dt_bias), -torch.exp(self.A_log),
                     b.view(batch, length, self.n_groups, self.state_size),
                     c.view(batch, length, self.n_groups, self.state_size), self.D)
        return self.out_proj(y.reshape(batch, length, self.inner) * F.silu(gate))


def Net(**mixer: object) -> Residual:
    return Residual("mixer", SSDMixer(**mixer), 6, 8, 2)  # type: ignore[arg-type]


def test_ssd_heads_prune_whole_and_equal_zeroing() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 6, 6)
    result = prune(model, x, ratios={"mixer.in_proj": 0.5}, importance="random", seed=3)
    mixer = result.model.mixer
    assert mixer.num_heads == 2 and mixer.inner == 6 and mixer.head_dim == 3
    assert mixer.conv_dim == 6 + 2 * 5 and mixer.state_size == 5
    assert mixer.in_proj.out_features == 6 + 16 + 2
    assert mixer.conv1d.weight.shape == (16, 1, 3) and mixer.conv1d.groups == 16
    assert mixer.A_log.shape == mixer.D.shape == mixer.dt_bias.shape == (2,)
    assert mixer.out_proj.in_features == 6
    assert result.model.embed.out_features == 8  # the residual was not asked to shrink

    keep = result.plan["modules"]["mixer.out_proj"]["keep"]["in"]
    heads = sorted({i // 3 for i in keep})
    assert keep == [h * 3 + p for h in heads for p in range(3)]  # whole heads
    torch.testing.assert_close(mixer.A_log, model.mixer.A_log[heads])
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_a_split_part_written_as_a_literal_keeps_its_width() -> None:
    torch.manual_seed(0)
    model, x = Net(dt_written="literal").eval(), torch.randn(2, 6, 6)
    result = prune(model, x, ratios={"mixer.in_proj": 0.5}, importance="random", seed=3)
    mixer = result.model.mixer
    assert mixer.num_heads == 4 and mixer.out_proj.in_features == 12  # heads kept whole
    assert "unequal parts" in result.coverage.fixed["mixer.dt_bias"]
    with torch.no_grad():
        assert result.model(x).shape == model(x).shape


def test_groups_of_heads_go_whole_with_their_b_and_c() -> None:
    """Three groups of B and C, each repeated to two heads: whole groups go, each with its
    two heads and its B and C channels; ``n_groups`` is rewritten (the split's part
    ``self.n_groups * self.state_size`` follows it) and pruning equals zeroing."""
    torch.manual_seed(0)
    model, x = Net(groups=3, heads=6).eval(), torch.randn(2, 6, 6)
    result = prune(model, x, ratios={"mixer.in_proj": 0.5}, importance="random", seed=1)
    mixer = result.model.mixer
    assert (mixer.n_groups, mixer.num_heads, mixer.inner) == (2, 4, 12)
    assert mixer.conv_dim == 12 + 2 * 2 * 5 and mixer.state_size == 5
    assert mixer.in_proj.out_features == 12 + 32 + 4 and mixer.conv1d.groups == 32
    assert not result.coverage.fixed

    keep = result.plan["modules"]["mixer.conv1d"]["keep"]["out"]
    heads = sorted({i // 3 for i in keep if i < 18})
    groups = sorted({(i - 18) // 5 for i in keep if 18 <= i < 33})
    assert heads == [h for g in groups for h in (2 * g, 2 * g + 1)]  # a group's own heads
    assert keep[len(heads) * 3:] == [18 + 15 * part + 5 * g + n
                                     for part in (0, 1) for g in groups for n in range(5)]
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)


def test_one_head_per_group_keeps_the_head_count() -> None:
    """A group per head: the head and group counts stay (what may shrink is each head's
    width), and pruning still equals zeroing."""
    torch.manual_seed(0)
    model, x = Net(groups=4).eval(), torch.randn(2, 6, 6)
    result = prune(model, x, ratio=0.5, importance="random", seed=1)
    mixer = result.model.mixer
    assert (mixer.num_heads, mixer.n_groups, mixer.state_size) == (4, 4, 5)
    assert mixer.A_log.shape == (4,)
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
