"""A forward that writes into the model's own tensors (Glow's ActNorm initialises ``loc`` and
``scale`` from the first batch it sees, then sets ``initialized``; a weight decayed through
``.data``; a call counter): ``prune`` runs the user's model to trace it, and later forwards
on models that share its tensors, yet leaves it as it was; the pruned model starts as it
was too. Before, the trace's writes stayed in the user's model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from prunekit.structured import prune


class ActNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        if self.initialized.item() == 0:
            with torch.no_grad():
                self.loc.copy_(-x.mean((0, 2, 3), keepdim=True))
                self.scale.data.mul_(1 / (x.std((0, 2, 3), keepdim=True) + 1e-6))
                self.initialized.fill_(1)
        return self.scale * (x + self.loc)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), ActNorm(16), nn.ReLU(),
                         nn.Conv2d(16, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("how", ["copy", "inplace_with_target"])
def test_the_users_model_and_the_pruned_one_start_as_they_were(how: str) -> None:
    model, x = _model(), torch.randn(4, 3, 8, 8) * 5 + 3
    before = copy.deepcopy(model.state_dict())
    if how == "copy":
        result = prune(model, x, ratio=0.5)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:  # the search and the check run forwards on clones that share the model's tensors
        result = prune(model, x, target={"macs": 0.5}, inplace=True)
        assert result.model is model
    pruned = result.model
    assert pruned[0].out_channels < 16
    assert int(pruned[1].initialized) == 0 and int(pruned[1].calls) == 0
    keep = result.plan["modules"]["0"]["keep"]["out"]
    torch.testing.assert_close(pruned[1].loc, before["1.loc"][:, keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[1].scale, before["1.scale"][:, keep], rtol=0, atol=0)


def test_reading_the_profiles_leaves_both_models_as_they_were() -> None:
    model, x = _model(), torch.randn(4, 3, 8, 8) * 5 + 3
    result = prune(model, x, ratio=0.5)
    assert result.before.total_params > result.after.total_params  # each runs a forward
    assert int(model[1].initialized) == 0 and int(result.model[1].initialized) == 0
    assert float(model[1].loc.abs().sum()) == 0.0


def test_an_embedding_with_max_norm_is_not_renormalised_by_prune() -> None:
    # its lookups renormalise the rows they read, in place, inside the layer
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(30, 16, max_norm=1.0), nn.Linear(16, 32), nn.ReLU(),
                          nn.Linear(32, 1)).eval()
    before = model[0].weight.detach().clone()
    result = prune(model, torch.randint(0, 30, (8,)), ratio=0.5)
    torch.testing.assert_close(model[0].weight.detach(), before, rtol=0, atol=0)
    keep = result.plan["modules"]["0"]["keep"]["out"]
    torch.testing.assert_close(result.model[0].weight.detach(), before[:, keep], rtol=0, atol=0)


class Stateful(nn.Module):
    """Forward-time state: a re-bound EMA buffer, a counter, a flag (Glow ActNorm's plain
    ``self.inited``, left True before), AdaBN-style batch statistics written by
    F.batch_norm(training=True), and an out= accumulator."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 4)
        self.register_buffer("ema", torch.zeros(32))
        self.register_buffer("rm", torch.zeros(32))
        self.register_buffer("rv", torch.ones(32))
        self.register_buffer("acc", torch.zeros(32))
        self.gamma, self.beta = nn.Parameter(torch.ones(32)), nn.Parameter(torch.zeros(32))
        self.calls, self.inited = 0, False

    def forward(self, x: Tensor) -> Tensor:
        if not self.inited:
            with torch.no_grad():
                self.beta.copy_(self.beta + 1.0)  # a data-dependent init, put back too
            self.inited = True
        h = torch.relu(self.a(x))
        self.ema = 0.9 * self.ema + 0.1 * h.mean(0)
        h = torch.nn.functional.batch_norm(h, self.rm, self.rv, self.gamma, self.beta,
                                           training=True)
        torch.add(self.acc, h.mean(0), out=self.acc)
        self.calls += 1
        return self.b(h - self.ema)


def test_forward_time_state_is_put_back_in_both_models() -> None:
    torch.manual_seed(0)
    model, x = Stateful().eval(), torch.randn(3, 16)
    before = copy.deepcopy(model.state_dict())
    ema = model.ema
    result = prune(model, x, ratio=0.5)
    assert model.calls == 0 and model.ema is ema and model.inited is False
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    pruned, keep = result.model, result.plan["modules"]["a"]["keep"]["out"]
    assert pruned.calls == 0 and pruned.inited is False and pruned.a.out_features == 16
    for name in ("ema", "rm", "rv", "acc"):
        torch.testing.assert_close(getattr(pruned, name), before[name][keep], rtol=0, atol=0)


class MomentumEncoder(nn.Module):
    """MoCo's key encoder, updated in the forward by assigning ``.data`` (builder.py's
    ``param_k.data = param_k.data * m + param_q.data * (1. - m)``): the parameter gets a new
    storage, which no in-place write shows."""

    def __init__(self, shared: bool = False) -> None:
        super().__init__()
        self.encoder_q = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        with torch.no_grad():
            for p in self.encoder_q.parameters():
                p.add_(torch.randn_like(p))
        self.shared = shared
        self.head = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            for q, k in zip(self.encoder_q.parameters(), self.encoder_k.parameters(),
                            strict=True):
                k.data = q.data if self.shared else k.data * 0.5 + q.data * 0.5
        return self.encoder_q(x) + self.encoder_k(x) + self.head(x)


@pytest.mark.parametrize("shared", [False, True])
def test_a_data_assignment_in_the_forward_is_put_back(shared: bool) -> None:
    torch.manual_seed(0)
    model = MomentumEncoder(shared).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    storages = [p.data_ptr() for p in model.encoder_k.parameters()]
    result = prune(model, torch.randn(4, 8), ratio=0.5)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    # the key encoder holds its own storage again (with shared=True the forward had made it
    # share the query encoder's, which the restore must not overwrite)
    assert [p.data_ptr() for p in model.encoder_k.parameters()] == storages
    pruned = result.model
    assert pruned.head[0].out_features == 16
    assert pruned.encoder_k[0].weight.data_ptr() != pruned.encoder_q[0].weight.data_ptr()
    if not shared:  # (shared: the forward overwrites the key encoder, which is cut alone)
        # the momentum update joins the two encoders element by element: they are cut alike
        # (before, their biases, read directly, kept both whole)
        modules = result.plan["modules"]
        assert modules["encoder_q.0"]["keep"] == modules["encoder_k.0"]["keep"]
        assert pruned.encoder_k[0].out_features == pruned.encoder_q[0].out_features < 16


class LazyHooks(nn.Module):
    """transformers 5's output capturing: the first forward registers forward hooks on the
    layers and sets a flag; later forwards read what the hooks captured."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 16), nn.Linear(16, 3)
        self.captured: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        if not getattr(self, "_hooks_installed", False):
            self.a.register_forward_hook(lambda _m, _i, out: self.captured.append(out))
            self._hooks_installed = True
        self.captured.clear()
        out = self.b(torch.relu(self.a(x)))
        if len(self.captured) != 1:
            raise RuntimeError(f"captured {len(self.captured)} outputs of a, not 1")
        return out


def test_hooks_a_forward_installs_are_removed_with_the_flag_it_sets() -> None:
    """Before, a never-run Llava lost the flag but kept the hooks: its next forward installed
    them twice and failed."""
    torch.manual_seed(0)
    model, x = LazyHooks().eval(), torch.randn(3, 6)
    result = prune(model, x, ratio=0.5)
    assert result.params_kept < 1  # (its profile forwards too)
    assert not model.a._forward_hooks and not hasattr(model, "_hooks_installed")
    with torch.no_grad():
        assert model(x).shape == (3, 3) and result.model(x).shape == (3, 3)
        assert model(x).shape == (3, 3)
