"""A selective state-space block written as Transformers' Mamba writes its slow path: a
depthwise conv whose weight is read as ``conv.weight.squeeze(1).unsqueeze(1)``, a step size
made by ``dt_proj.weight @ x`` (a parameter on the left of a product), and a scan in which
``A[None, :, None, :]`` meets ``dt[..., None]`` (a parameter's row scaled by one channel).
Its inner channels prune, and pruning them equals zeroing them (the scan keeps channels
apart)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.structured.residual import Residual
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.structured import prune

INNER, STATE, RANK = 16, 4, 3


class Mixer(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, 2 * INNER)
        self.conv1d = nn.Conv1d(INNER, INNER, 3, groups=INNER, padding=2)
        self.x_proj = nn.Linear(INNER, RANK + 2 * STATE, bias=False)
        self.dt_proj = nn.Linear(RANK, INNER)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, STATE + 1.0)).repeat(INNER, 1))
        self.D = nn.Parameter(torch.ones(INNER))
        self.out_proj = nn.Linear(INNER, dim)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.shape[1]
        hidden, gate = self.in_proj(x).transpose(1, 2).chunk(2, dim=1)
        weight = self.conv1d.weight.squeeze(1)
        hidden = F.conv1d(hidden, weight.unsqueeze(1), self.conv1d.bias, padding=2,
                          groups=hidden.shape[1])[..., :seq]
        hidden = F.silu(hidden)
        step, b, c = torch.split(self.x_proj(hidden.transpose(1, 2)), [RANK, STATE, STATE], -1)
        dt = F.softplus(self.dt_proj.weight @ step.transpose(1, 2) + self.dt_proj.bias[:, None])
        a = -torch.exp(self.A_log)
        decay = torch.exp(a[None, :, None, :] * dt[:, :, :, None])
        push = dt[:, :, :, None] * b[:, None, :, :] * hidden[:, :, :, None]
        batch, inner, _ = hidden.shape
        state = torch.zeros(batch, inner, a.shape[-1])
        outs = []
        for i in range(seq):
            state = decay[:, :, i] * state + push[:, :, i]
            outs.append((state @ c[:, i, :].unsqueeze(-1))[:, :, 0])
        y = torch.stack(outs, -1) + hidden * self.D[None, :, None]
        return self.out_proj((y * F.silu(gate)).transpose(1, 2))


def Net() -> Residual:
    return Residual("mixer", Mixer(), 5, 8, 2)


def test_the_inner_channels_of_a_state_space_block_prune() -> None:
    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(2, 6, 5)
    result = prune(model, x, ratios={"mixer.in_proj": 0.5}, importance="random", seed=5)
    mixer = result.model.mixer
    assert mixer.conv1d.weight.shape == (8, 1, 3) and mixer.conv1d.groups == 8
    assert mixer.A_log.shape == (8, STATE) and mixer.D.shape == (8,)
    assert mixer.dt_proj.weight.shape == (8, RANK)
    assert mixer.x_proj.weight.shape == (RANK + 2 * STATE, 8)
    assert mixer.in_proj.out_features == 16 and mixer.out_proj.in_features == 8
    assert result.model.embed.out_features == 8  # the residual was not asked to shrink

    keep = result.plan["params"]["mixer.conv1d.weight"]["keep"]["0"]
    drop = [i for i in range(INNER) if i not in keep]
    zeroed = Net().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():  # the removed channels' input rows and their gate rows
        for rows in (drop, [INNER + i for i in drop]):
            zeroed.mixer.in_proj.weight[rows] = 0
            zeroed.mixer.in_proj.bias[rows] = 0
        zeroed.mixer.conv1d.bias[drop] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mixer.A_log, model.mixer.A_log[keep])


class TokenMix(nn.Module):
    """``W @ x`` with ``x``'s channels along its last dim: ``W`` mixes tokens, not channels."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 8)
        self.tokens = nn.Parameter(torch.randn(6, 6))
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.tokens @ torch.relu(self.lin(x)))


def test_a_parameter_mixing_tokens_on_the_left_passes_channels_through() -> None:
    torch.manual_seed(0)
    model, x = TokenMix().eval(), torch.randn(2, 6, 5)
    result = prune(model, x, ratio=0.5)
    assert result.model.lin.out_features == 4
    assert result.model.tokens.shape == (6, 6)


class S4DKernel(nn.Module):
    """S4D's kernel: ``dtA = A * dt.unsqueeze(-1)`` with ``dt = exp(log_dt)``, two tensors
    built from parameters alone, one broadcast along the other's state axis; the kernel
    (H, L) then convolves each channel through FFT."""

    def __init__(self, how: str, h: int = 16, n: int = 4) -> None:
        super().__init__()
        self.how = how
        self.enc, self.dec = nn.Linear(8, h), nn.Linear(h, 3)
        self.log_dt = nn.Parameter(torch.rand(h) - 3)
        self.A = nn.Parameter(-0.5 - torch.rand(h, n))
        self.C = nn.Parameter(torch.randn(h, n))

    def forward(self, x: Tensor) -> Tensor:
        u = self.enc(x).transpose(1, 2)  # (B, H, L)
        length = u.shape[-1]
        dt = torch.exp(self.log_dt)
        scale = dt.unsqueeze(-1) if self.how == "unsqueeze" else (
            dt[:, None] if self.how == "index" else dt.reshape(-1, 1))
        dt_a = self.A * scale
        steps = torch.arange(length, dtype=u.dtype)
        kernel = (self.C.unsqueeze(-1) * torch.exp(dt_a.unsqueeze(-1) * steps)).sum(1)  # (H, L)
        y = torch.fft.irfft(torch.fft.rfft(u, n=2 * length) * torch.fft.rfft(kernel, n=2 * length),
                            n=2 * length)[..., :length]
        return self.dec(F.gelu(y).transpose(1, 2))


@pytest.mark.parametrize("how", ["unsqueeze", "index", "reshape"])
def test_a_scale_built_from_a_parameter_follows_the_rows_it_scales(how: str) -> None:
    """Was: for ``exp(log_dt).unsqueeze(-1)``, ``log_dt[:, None]`` or ``.reshape(-1, 1)``,
    ``log_dt`` was kept whole while ``A``'s rows were cut, and the check failed."""
    torch.manual_seed(0)
    model, x = S4DKernel(how).eval(), torch.randn(2, 6, 8)
    result = prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.log_dt.shape == (8,) and pruned.A.shape == pruned.C.shape == (8, 4)
    keep = result.plan["modules"]["enc"]["keep"]["out"]
    assert result.plan["params"]["log_dt"]["keep"]["0"] == keep
    zeroed = S4DKernel(how).eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.dec.weight[:, [c for c in range(16) if c not in keep]] = 0
        for inputs in (x, torch.randn(1, 9, 8)):
            torch.testing.assert_close(pruned(inputs), zeroed(inputs), rtol=1e-4, atol=1e-5)


class MinimalMamba(nn.Module):
    """mamba-minimal's block: ``A = -torch.exp(self.A_log.float())`` read by
    ``einsum('bld,dn->bldn', delta, A)``, the state by three-operand einsums."""

    def __init__(self, d_model: int = 8, d_inner: int = 16, d_state: int = 4,
                 dt_rank: int = 2, d_conv: int = 3) -> None:
        super().__init__()
        self.d_inner, self.dt_rank = d_inner, dt_rank
        self.in_proj = nn.Linear(d_model, 2 * d_inner)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        a = torch.arange(1, d_state + 1, dtype=torch.float).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model)

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        x, res = self.in_proj(x).split(split_size=[self.d_inner, self.d_inner], dim=-1)
        x = F.silu(self.conv1d(x.transpose(1, 2))[:, :, :length].transpose(1, 2))
        return self.out_proj(self.ssm(x) * F.silu(res))

    def ssm(self, u: Tensor) -> Tensor:
        n = self.A_log.shape[1]
        a = -torch.exp(self.A_log.float())
        delta, b, c = self.x_proj(u).split(split_size=[self.dt_rank, n, n], dim=-1)
        delta = F.softplus(self.dt_proj(delta))
        delta_a = torch.exp(torch.einsum("bld,dn->bldn", delta, a))
        delta_b_u = torch.einsum("bld,bln,bld->bldn", delta, b, u)
        state = torch.zeros((u.shape[0], u.shape[2], n))
        ys = []
        for i in range(u.shape[1]):
            state = delta_a[:, i] * state + delta_b_u[:, i]
            ys.append(torch.einsum("bdn,bn->bd", state, c[:, i, :]))
        return torch.stack(ys, dim=1) + u * self.D.float()


def test_mamba_minimal_einsum_scan_prunes_its_inner_channels() -> None:
    """Was: ``A``, a function of the parameter ``A_log``, read as an activation whose
    channels vary along ``d`` and ``n``, kept the whole block."""
    torch.manual_seed(0)
    model, x = Residual("block", MinimalMamba(), 8, 8, 3).eval(), torch.randn(2, 6, 8)
    result = prune(model, x, ratio=0.5)
    block = result.model.block
    assert block.d_inner == 8 and block.A_log.shape == (8, 4) and block.D.shape == (8,)
    assert block.conv1d.out_channels == block.dt_proj.out_features == 8
    zeroed = _zero_removed_inputs(model, result.plan)
    with torch.no_grad():
        for inputs in (x, torch.randn(1, 9, 8)):
            torch.testing.assert_close(result.model(inputs), zeroed(inputs), rtol=1e-4,
                                       atol=1e-5)
