"""Forwards that differentiate: a physics-informed network whose input requires grad and
whose forward calls ``torch.autograd.grad(u, x)`` for its PDE residual, and a Hamiltonian
network that takes ``dH/dz`` of a latent under ``torch.enable_grad()``. Before, the first
failed with a raw torch error (the trace ran under no_grad) and the second was refused
(``grad`` had no handler); ``result.params_kept`` then failed inside torch's flop counter.
Found by the scientific-ML probe."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import prunekit as pk
from prunekit.errors import UnsupportedOpError


class PINN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                 nn.Linear(32, 1))

    def forward(self, xt: Tensor) -> tuple[Tensor, Tensor]:
        u = self.net(xt)
        g = torch.autograd.grad(u, xt, torch.ones_like(u), create_graph=True)[0]
        return u, g[:, 1:2] + u * g[:, :1]  # u and a Burgers-like residual


class HNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(4, 8)
        self.net = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
        self.dec = nn.Linear(8, 4)

    def forward(self, x: Tensor) -> Tensor:
        with torch.enable_grad():
            z = self.enc(x)
            if not z.requires_grad:
                z = z.requires_grad_(True)
            dh = torch.autograd.grad(self.net(z).sum(), z, create_graph=True)[0]
        return self.dec(dh)


class Siren(nn.Module):
    """SIREN's gradient output: the forward makes its own leaf of the coordinates and
    differentiates by it, so the example input need not require grad."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                                 nn.Linear(32, 1))

    def forward(self, coords: Tensor) -> tuple[Tensor, Tensor]:
        coords = coords.clone().detach().requires_grad_(True)
        out = self.net(coords)
        return out, torch.autograd.grad(out.sum(), coords, create_graph=True)[0]


def _zeroed(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """The unpruned model with every removed row and column zeroed."""
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for path, entry in plan["modules"].items():
            layer, keep = reference.get_submodule(path), entry["keep"]
            if "out" in keep:
                rows = sorted(set(range(layer.weight.shape[0])) - set(keep["out"]))
                layer.weight[rows] = 0
                layer.bias[rows] = 0
            if "in" in keep:
                layer.weight[:, sorted(set(range(layer.weight.shape[1])) - set(keep["in"]))] = 0
    return reference


@pytest.mark.parametrize("kind", ["pinn", "hnn", "siren"])
def test_a_forward_that_differentiates_prunes_exactly(kind: str, tmp_path: Path) -> None:
    """SIREN's forward failed with torch's "element 0 of tensors does not require grad"
    (prunekit's forwards ran under no_grad); its code calling requires_grad_ now runs them
    with grad enabled."""
    torch.manual_seed(0)
    model: nn.Module = {"pinn": PINN, "hnn": HNN, "siren": Siren}[kind]().eval()
    x = {"pinn": torch.rand(16, 2, requires_grad=True), "hnn": torch.randn(16, 4),
         "siren": torch.rand(16, 2)}[kind]
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.net[0].out_features == 16
    got, want = result.model(x), _zeroed(model, result.plan)(x)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, want)), strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    if kind == "hnn":  # grad by a latent with the parameters requiring grad: per layer
        assert result.params_kept < 0.5 and result.after.macs > 0
        assert sum(layer.macs for layer in result.after.layers) == result.after.macs
    else:
        with pytest.warns(UserWarning, match="counted for the model as a whole"):
            assert result.params_kept < 0.5 and result.after.macs > 0
    loaded = pk.load(pk.save(result, tmp_path / "ckpt"), type(model)())
    reloaded = loaded(x)
    for a, b in zip(*(o if isinstance(o, tuple) else (o,) for o in (got, reloaded)), strict=True):
        assert torch.equal(a, b)


class FuncJacobian(nn.Module):
    """The same residual through ``torch.func.vmap(torch.func.jacrev(...))``, whose batched
    tensors have no storage the trace can read (before: a raw RuntimeError from inside the
    tracer, strict or not)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    def forward(self, x: Tensor) -> Tensor:
        jac = torch.func.vmap(torch.func.jacrev(lambda z: self.net(z).squeeze(-1)))(x)
        return self.net(x).squeeze(-1) + jac[:, 1]


class PerSampleVmap(nn.Module):
    """The model's own layers run under ``torch.func.vmap`` (before: the trace saw one
    sample, cut the output layer as an inner layer, and the check failed with a hint about
    widths read from shapes)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.func.vmap(lambda xi: self.b(torch.relu(self.a(xi))))(x)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("kind", ["jacrev", "vmap"])
def test_a_torch_func_transform_is_refused_with_the_way_out(kind: str, strict: bool) -> None:
    model, x = (FuncJacobian(), torch.rand(8, 2)) if kind == "jacrev" else \
        (PerSampleVmap(), torch.randn(3, 4, 16))
    with pytest.raises(UnsupportedOpError, match=r"torch\.func transform.*"
                                                           r"torch\.autograd\.grad"):
        pk.prune(model.eval(), x, ratio=0.5, strict=strict)


def test_only_a_forward_that_differentiates_turns_grad_on() -> None:
    from prunekit._inputs import grad_mode

    class Freezable(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x)

        def freeze(self) -> None:
            for param in self.parameters():
                param.requires_grad_(False)

    x = torch.randn(3, 2)
    assert isinstance(grad_mode(x, list(Freezable().modules())), torch.no_grad)
    assert isinstance(grad_mode(x, list(Siren().modules())), torch.enable_grad)
    assert isinstance(grad_mode(x.requires_grad_(), list(Freezable().modules())),
                      torch.enable_grad)


class MAML(nn.Module):
    """MAML's forward: one inner step by the gradient of the support loss with respect to
    the parameters, then the query through the fast weights (``functional_call``)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x_support: Tensor, y_support: Tensor, x_query: Tensor) -> Tensor:
        params = dict(self.net.named_parameters())
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(
                torch.func.functional_call(self.net, params, (x_support,)), y_support)
            grads = torch.autograd.grad(loss, list(params.values()))
        fast = {n: p - 0.1 * g for (n, p), g in zip(params.items(), grads, strict=True)}
        return torch.func.functional_call(self.net, fast, (x_query,))


def test_profiles_run_a_forward_that_differentiates_by_the_parameters() -> None:
    # profiles turned requires_grad off on every parameter: params_kept, summary() and
    # pk.profile raised "element 0 of tensors does not require grad" (MAML probe)
    torch.manual_seed(0)
    model = MAML().eval()
    inputs = (torch.randn(5, 16), torch.randint(0, 4, (5,)), torch.randn(3, 16))
    result = pk.prune(model, inputs, ratio=0.5)
    assert 0 < result.params_kept <= 1 and "params" in result.summary()
    assert pk.profile(model, inputs).total_params == 16 * 32 + 32 + 32 * 4 + 4
    assert all(p.requires_grad for p in model.parameters())
