"""Ops that generative models run in forward and strict mode refused by name before:
``torch.broadcast_tensors`` and the argument checks of ``torch.distributions`` (a VAE's
``Normal(mu, std)``), losses (a VQ-VAE's commitment loss, a classifier that returns its
loss) and determinants (Glow's invertible 1×1 conv)."""

from __future__ import annotations

import torch
import torch.distributions as D
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

import prunekit as pk


class NormalVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc, self.mu, self.log_var = nn.Linear(12, 32), nn.Linear(32, 8), nn.Linear(32, 8)
        self.dec = nn.Linear(8, 12)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.enc(x))
        posterior = D.Normal(self.mu(h), torch.exp(0.5 * self.log_var(h)))  # validate_args
        return self.dec(posterior.mean + posterior.stddev)


def test_a_distribution_of_pruned_latents() -> None:
    torch.manual_seed(0)
    model = NormalVAE().eval()
    result = pk.prune(model, torch.randn(4, 12), ratio=0.5)
    pruned = result.model
    assert pruned.mu.out_features == pruned.log_var.out_features == pruned.dec.in_features == 4
    assert result.plan["modules"]["mu"]["keep"]["out"] == \
        result.plan["modules"]["log_var"]["keep"]["out"]
    reference = _zero_removed_inputs(model, result.plan)
    x = torch.randn(6, 12)
    torch.testing.assert_close(pruned(x), reference(x))


class Quantizer(nn.Module):
    """Two codes compared by losses: one reduced to a scalar, one kept per element."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.a, self.b = nn.Linear(12, 32), nn.Linear(32, 16), nn.Linear(32, 16)
        self.dec = nn.Linear(16, 12)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.relu(self.enc(x))
        a, b = self.a(h), self.b(h)
        gap = F.smooth_l1_loss(a, b, reduction="none")  # couples a and b channel by channel
        return self.dec(a + gap), F.mse_loss(a, b.detach())


def test_losses_couple_their_inputs_and_reduce_to_a_fixed_shape() -> None:
    torch.manual_seed(0)
    model = Quantizer().eval()
    result = pk.prune(model, torch.randn(4, 12), ratio=0.5)
    plan = result.plan["modules"]
    assert plan["a"]["keep"]["out"] == plan["b"]["keep"]["out"]
    assert result.model.dec.in_features == 8
    reference = _zero_removed_inputs(model, result.plan)
    x = torch.randn(5, 12)
    out, loss = result.model(x)
    torch.testing.assert_close(out, reference(x)[0])
    assert loss.shape == ()


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(12, 32), nn.Linear(32, 10)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(self.head(torch.relu(self.body(x))), target)


def test_a_cross_entropy_keeps_its_classes() -> None:
    torch.manual_seed(0)
    model = Classifier().eval()
    x, target = torch.randn(6, 12), torch.randint(0, 10, (6,))
    result = pk.prune(model, (x, target), ratio=0.5)
    assert result.model.head.out_features == 10 and result.model.body.out_features == 16
    torch.testing.assert_close(result.model(x, target),
                               _zero_removed_inputs(model, result.plan)(x, target))


class InvertibleStep(nn.Module):
    def __init__(self, channels: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(16, channels, 3, padding=1))
        self.mix = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.shape[2] * x.shape[3] * torch.slogdet(self.mix.weight.squeeze())[1]
        return self.mix(x + self.net(x)), logdet


def test_a_determinant_keeps_its_matrix_whole() -> None:
    torch.manual_seed(0)
    model = InvertibleStep().eval()
    result = pk.prune(model, torch.randn(2, 4, 6, 6), ratio=0.5)
    assert result.model.mix.weight.shape == (4, 4, 1, 1)
    assert result.model.net[0].out_channels == 8
    x = torch.randn(3, 4, 5, 5)
    (out, logdet), (want, want_logdet) = result.model(x), \
        _zero_removed_inputs(model, result.plan)(x)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(logdet, want_logdet)
