"""Ops this session's probes met unmapped or mapped too coarsely: an ensemble layer written
with ``baddbmm`` (MBPO/PETS: nothing pruned), a Beta policy's ``lgamma``/``digamma``
(refused), ``triplet_margin_loss`` and ``cosine_embedding_loss`` (refused), ``F.linear``
with a 1-D weight (its handler failed)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class EnsembleLinear(nn.Module):
    def __init__(self, fan_in: int, fan_out: int, fused: bool, members: int = 5) -> None:
        super().__init__()
        self.fused = fused
        self.weight = nn.Parameter(torch.randn(members, fan_in, fan_out) * 0.1)
        self.bias = nn.Parameter(torch.randn(members, 1, fan_out) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.bmm(x, self.weight) + self.bias


class Ensemble(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.l1 = EnsembleLinear(13, 48, fused)
        self.l2 = EnsembleLinear(48, 48, fused)
        self.out = EnsembleLinear(48, 20, fused)

    def forward(self, obs: Tensor, act: Tensor) -> Tensor:
        x = torch.cat([obs, act], -1).unsqueeze(0).expand(5, -1, -1)
        return self.out(F.silu(self.l2(F.silu(self.l1(x)))))


def test_baddbmm_prunes_as_bmm_plus_bias_does() -> None:
    inputs = (torch.randn(4, 10), torch.randn(4, 3))
    results = []
    for fused in (True, False):
        torch.manual_seed(0)
        results.append(pk.prune(Ensemble(fused).eval(), inputs, ratio=0.5))
    fused, plain = results
    assert fused.model.l1.weight.shape == (5, 13, 24) and fused.plan == plain.plan
    with torch.no_grad():
        assert torch.allclose(fused.model(*inputs), plain.model(*inputs), atol=1e-6)


class Losses(nn.Module):
    def __init__(self, kind: str, reduction: str) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16))
        self.kind, self.reduction = kind, reduction

    def forward(self, a: Tensor, p: Tensor, n: Tensor) -> Tensor:
        za, zp, zn = self.enc(a), self.enc(p), self.enc(n)
        if self.kind == "triplet":
            return F.triplet_margin_loss(za, zp, zn, reduction=self.reduction)
        if self.kind == "cosine":
            return F.cosine_embedding_loss(za, zp, torch.ones(a.shape[0]),
                                           reduction=self.reduction)
        beta = torch.distributions.Beta(F.softplus(za) + 1, F.softplus(zp) + 1)
        return beta.log_prob(torch.sigmoid(zn).clamp(0.01, 0.99)).sum(-1)


@pytest.mark.parametrize("kind", ["triplet", "cosine", "beta"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_losses_and_special_functions_prune_the_encoder(kind: str, reduction: str) -> None:
    torch.manual_seed(0)
    model = Losses(kind, reduction).eval()
    inputs = tuple(torch.randn(4, 8) for _ in range(3))
    result = pk.prune(model, inputs, ratio=0.5)
    assert result.model.enc[0].out_features == 16 and result.model.enc[2].out_features == 8
    with torch.no_grad():
        assert result.model(*inputs).shape == model(*inputs).shape


class Integral(nn.Module):
    """GFL's distribution-to-distance step (mmdet's ``Integral``): ``F.linear`` with a 1-D
    ``project`` vector; before, its handler failed ("The expanded size of the tensor ...")."""

    def __init__(self, reg_max: int = 8) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x: Tensor) -> Tensor:
        x = F.softmax(x.reshape(-1, self.reg_max + 1), dim=1)
        return F.linear(x, self.project.type_as(x)).reshape(-1, 4)


class GFLHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.reg_conv = nn.Conv2d(3, 16, 3, padding=1)
        self.gfl_reg = nn.Conv2d(16, 4 * 9, 3, padding=1)
        self.integral = Integral()

    def forward(self, x: Tensor) -> Tensor:
        reg = self.gfl_reg(self.reg_conv(x).relu())
        return self.integral(reg.permute(0, 2, 3, 1))


def test_linear_with_a_vector_weight_keeps_the_bins_and_prunes_the_tower() -> None:
    torch.manual_seed(0)
    model = GFLHead().eval()
    x = torch.randn(1, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.reg_conv.out_channels == 8 and result.model.gfl_reg.out_channels == 36
    assert result.model.integral.project.shape == (9,)
    reference = GFLHead().eval()
    reference.load_state_dict(model.state_dict())
    removed = sorted(set(range(16)) - set(result.plan["modules"]["reg_conv"]["keep"]["out"]))
    with torch.no_grad():
        reference.gfl_reg.weight[:, removed] = 0
        assert torch.allclose(result.model(x), reference(x), atol=1e-5)


class Distributional(nn.Module):
    """C51's head returning only Q: a softmax over 51 atoms, then the expectation against a
    fixed support. Before, the atoms (and the support buffer with them) were cut to 26, and
    Q changed by up to 0.2 (found by the reinforcement-learning probe)."""

    def __init__(self, actions: int = 4, atoms: int = 51) -> None:
        super().__init__()
        self.actions, self.atoms = actions, atoms
        self.body = nn.Sequential(nn.Linear(8, 64), nn.ReLU())
        self.head = nn.Linear(64, actions * atoms)
        self.register_buffer("support", torch.linspace(-10, 10, atoms))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.head(self.body(x)).view(-1, self.actions, self.atoms)
        return (logits.softmax(-1) * self.support).sum(-1)


def test_channels_a_softmax_normalises_over_are_kept_whole() -> None:
    torch.manual_seed(0)
    model = Distributional().eval()
    x = torch.randn(5, 8)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.head.out_features == 4 * 51 and result.model.support.shape == (51,)
    assert result.model.body[0].out_features == 32
    removed = sorted(set(range(64)) - set(result.plan["modules"]["body.0"]["keep"]["out"]))
    reference = Distributional().eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        reference.head.weight[:, removed] = 0
        assert torch.allclose(result.model(x), reference(x), atol=1e-5)


class NoisyLinear(nn.Module):
    """NoisyNet's layer as Rainbow implementations write it: ``mu + sigma * epsilon`` in
    training, ``mu`` alone in eval. Before, the two passes saw ``weight_mu`` as a layer
    weight and elementwise, and the whole network was kept (found by the RL probe)."""

    def __init__(self, fan_in: int, fan_out: int) -> None:
        super().__init__()
        self.weight_mu = nn.Parameter(torch.randn(fan_out, fan_in) / fan_in ** 0.5)
        self.weight_sigma = nn.Parameter(torch.full((fan_out, fan_in), 0.5 / fan_in ** 0.5))
        self.register_buffer("weight_epsilon", torch.randn(fan_out, fan_in))
        self.bias_mu = nn.Parameter(torch.zeros(fan_out))
        self.bias_sigma = nn.Parameter(torch.full((fan_out,), 0.1))
        self.register_buffer("bias_epsilon", torch.randn(fan_out))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return F.linear(x, self.weight_mu + self.weight_sigma * self.weight_epsilon,
                            self.bias_mu + self.bias_sigma * self.bias_epsilon)
        return F.linear(x, self.weight_mu, self.bias_mu)


class NoisyDQN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.n1, self.n2 = nn.Linear(16, 64), NoisyLinear(64, 64), NoisyLinear(64, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.n2(F.relu(self.n1(F.relu(self.fc(x)))))


def test_a_noisy_layer_prunes_in_both_modes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = NoisyDQN().eval()
    x = torch.randn(5, 16)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.n1.weight_mu.shape == pruned.n1.weight_epsilon.shape == (32, 32)
    assert pruned.n2.weight_sigma.shape == (4, 32) and pruned.n1.bias_epsilon.shape == (32,)
    reference = NoisyDQN()
    reference.load_state_dict(model.state_dict())
    gone0 = sorted(set(range(64)) - set(result.plan["modules"]["fc"]["keep"]["out"]))
    gone1 = sorted(set(range(64)) - set(result.plan["params"]["n1.weight_mu"]["keep"]["0"]))
    with torch.no_grad():
        for layer, gone in ((reference.n1, gone0), (reference.n2, gone1)):
            for name in ("weight_mu", "weight_sigma", "weight_epsilon"):
                getattr(layer, name)[:, gone] = 0
        for train in (False, True):
            pruned.train(train)
            reference.train(train)
            assert torch.allclose(pruned(x), reference(x), atol=1e-6)
    pruned.eval()
    loaded = pk.load(pk.save(result, tmp_path / "ckpt"), NoisyDQN()).eval()
    assert torch.equal(loaded(x), pruned(x))


class NoiseInjection(nn.Module):
    """Gaussian noise drawn at an int attribute's width (``torch.randn(self.width)``);
    before, a random factory was never sized by an attribute, and the hidden width it meets
    was kept whole (the RL probe's factorised-noise layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.width = 32
        self.a, self.b = nn.Linear(8, self.width), nn.Linear(self.width, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)) + 0.1 * torch.randn(self.width))


def test_noise_drawn_at_an_attribute_width_shrinks_with_it() -> None:
    torch.manual_seed(0)
    result = pk.prune(NoiseInjection().eval(), torch.randn(4, 8), ratio=0.5)
    assert result.model.a.out_features == 16 and result.model.width == 16
    assert result.model(torch.randn(3, 8)).shape == (3, 2)


class LogGate(nn.Module):
    """xLSTM's forget gate ``exp(F.logsigmoid(f))``; before, ``Tensor.log_sigmoid`` (as torch
    2.13 dispatches it) had no handler and prune refused the model."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.v, self.o = nn.Linear(8, 16), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.o(torch.exp(F.logsigmoid(self.f(x))) * self.v(x))


def test_logsigmoid_passes_channels_through() -> None:
    torch.manual_seed(0)
    model, x = LogGate().eval(), torch.randn(2, 5, 8)
    result = pk.prune(model, x, ratio=0.5, importance="random", seed=0)
    assert result.model.f.out_features == result.model.v.out_features == 8
    keep = result.plan["modules"]["v"]["keep"]["out"]
    assert result.plan["modules"]["f"]["keep"]["out"] == keep
    zeroed = LogGate().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.o.weight[:, [c for c in range(16) if c not in keep]] = 0
        torch.testing.assert_close(result.model(x), zeroed(x), rtol=1e-5, atol=1e-6)
