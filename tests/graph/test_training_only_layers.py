"""Layers only training runs (GoogLeNet's and Inception's auxiliary heads) and parameters
only training reads (the noise projection of Shazeer's noisy top-k gate): when the eval-mode
trace leaves a layer unvisited, or a module that ran never read one of its parameters, a
second pass in training mode (every buffer restored) couples it too, and the forward check
runs in both modes, so the pruned model still trains."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import prunekit as pk


class _AuxNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.b, self.head = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.aux = nn.Conv2d(8, 2, 1)  # reads a's channels, in training mode only

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        h = torch.relu(self.bn(self.a(x)))
        y = self.head(torch.relu(self.b(h))).mean((2, 3))
        if self.training:
            return y, self.aux(h).mean((2, 3))
        return y


def test_training_only_head_is_pruned_with_what_feeds_it() -> None:
    model, x = _AuxNet().eval(), torch.randn(2, 3, 10, 10)
    stats = (model.bn.running_mean.clone(), model.bn.running_var.clone())
    result = pk.prune(model, x, ratio=0.5)
    assert torch.equal(model.bn.running_mean, stats[0])  # the training pass left no trace
    assert torch.equal(model.bn.running_var, stats[1]) and not model.training
    pruned = result.model
    assert pruned.a.out_channels == pruned.aux.in_channels == 4
    pruned.train()
    with torch.no_grad():
        main, aux = pruned(x)
    assert main.shape == (2, 4) and aux.shape == (2, 2)  # outputs keep their width


def test_a_one_sample_example_reaches_the_training_only_head() -> None:
    """One value per channel after ``a``: BatchNorm in training mode would raise, so the
    training pass keeps it normalising with its running statistics (before, the pass failed
    silently, the aux head was left out, and the pruned model failed its first training
    step; found by the detection probe's PSPNet with a batch-1 example)."""
    model = _AuxNet().eval()
    x = torch.randn(1, 3, 3, 3)
    stats = model.bn.running_mean.clone()
    pruned = pk.prune(model, x, ratio=0.5).model
    assert pruned.a.out_channels == pruned.aux.in_channels == 4
    assert torch.equal(model.bn.running_mean, stats) and model.bn.training is False
    pruned.train()
    main, aux = pruned(torch.randn(2, 3, 3, 3))
    assert main.shape == (2, 4) and aux.shape == (2, 2)
    assert pruned.bn.training  # its own mode is back


class _Detector(_AuxNet):
    """A torchvision-style detector: its training forward wants targets."""

    def forward(self, x: Tensor, targets: Tensor | None = None
                ) -> Tensor | tuple[Tensor, Tensor]:
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        return super().forward(x)


def test_a_training_pass_that_fails_is_named_with_the_layers_it_left_out() -> None:
    model = _Detector().eval()
    with pytest.warns(UserWarning, match=r"'aux' never ran in eval mode, and the training-mode "
                                         r"pass run to reach them failed \(ValueError: In "
                                         r"training mode, targets"):
        result = pk.prune(model, torch.randn(2, 3, 10, 10), ratio=0.5)
    assert result.model.a.out_channels == 4


class _NoisyGate(nn.Module):
    """Shazeer et al.'s noisy gating: ``x @ w_noise`` is read in training mode only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.w_gate = nn.Parameter(torch.randn(16, 4))
        self.w_noise = nn.Parameter(torch.randn(16, 4))

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.inp(x))
        logits = h @ self.w_gate
        if self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(h @ self.w_noise)
        return self.out(h) * logits.softmax(-1)


def test_a_parameter_read_in_training_mode_only_is_cut_with_its_channels() -> None:
    model, x = _NoisyGate().eval(), torch.randn(3, 8)
    result = pk.prune(model, x, ratio=0.5)
    pruned = result.model
    assert pruned.inp.out_features == pruned.w_gate.shape[0] == pruned.w_noise.shape[0] == 8
    pruned.train()
    assert pruned(x).shape == (3, 4)  # was: mat1 and mat2 shapes cannot be multiplied
    assert {e.name: e.status for e in result.coverage.entries}["w_noise"] == "prunable"


class _SummedInTraining(nn.Module):
    """Deep supervision: ``b`` runs in both modes and only training adds it to ``a``."""

    def __init__(self, fails_in_training: bool = False) -> None:
        super().__init__()
        self.fails_in_training = fails_in_training
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a, self.b = nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        a, b = self.a(h), self.b(h)
        if self.training:
            if self.fails_in_training:
                raise ValueError("targets needed")
            return self.head(a + b)
        return self.head(a)


def test_a_layer_whose_output_only_training_reads_is_coupled_by_the_training_pass() -> None:
    # every layer ran in eval mode, so no training pass ran: a and b kept other channels
    # and the pruned model summed mismatched channels while it trained, without a word
    torch.manual_seed(0)
    model, x = _SummedInTraining().eval(), torch.randn(2, 3, 8, 8)
    result = pk.prune(model, x, ratio=0.5, ignore=[model.stem])  # (only a+b's channels go)
    keep = result.plan["modules"]
    assert keep["a"]["keep"]["out"] == keep["b"]["keep"]["out"]
    zeroed = _SummedInTraining().eval()
    zeroed.load_state_dict(model.state_dict())
    gone = sorted(set(range(16)) - set(keep["a"]["keep"]["out"]))
    with torch.no_grad():
        zeroed.head.weight[:, gone] = 0
        torch.testing.assert_close(result.model.train()(x), zeroed.train()(x))


def test_a_training_pass_run_for_an_unread_output_fails_quietly() -> None:
    # nothing was left unvisited: no warning, and the eval-mode couplings stand
    torch.manual_seed(0)
    model = _SummedInTraining(fails_in_training=True).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = pk.prune(model, torch.randn(2, 3, 8, 8), ratio=0.5)
    assert result.model.a.out_channels == 8 and result.model.b.out_channels == 8


class _ReadWithoutALayerDim(nn.Module):
    """Outputs read other than by a layer's input dim: q and k meet only each other (class
    attention), and the head is a functional ``F.linear``. Counts its training forwards."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
        self.w = nn.Parameter(torch.randn(5, 16))
        self.training_calls: list[int] = []
        # (a hook, not forward: a forward reading self.training gets a training pass)
        self.register_forward_pre_hook(
            lambda m, _: m.training_calls.append(1) if m.training else None)

    def forward(self, x: Tensor) -> Tensor:
        attn = (self.q(x[:, :1]) @ self.k(x).transpose(1, 2)).softmax(-1)  # (B, 1, N)
        return F.linear((attn @ self.v(x))[:, 0], self.w)


def test_outputs_read_by_each_other_or_a_functional_layer_need_no_training_pass() -> None:
    model = _ReadWithoutALayerDim().eval()
    result = pk.prune(model, torch.randn(2, 6, 16), ratio=0.5)
    assert model.training_calls == [] and result.model.v.out_features == 8


class _CoarserFlowInTraining(nn.Module):
    """FlowNet's and PWC-Net's multi-scale training output: the coarse flow is upsampled
    into the next decoder stage in both modes, and returned in training mode only."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(6, 16, 3, 2, 1), nn.ReLU())
        self.predict_flow3 = nn.Conv2d(16, 2, 3, 1, 1)
        self.deconv3 = nn.ConvTranspose2d(2, 2, 4, 2, 1)
        self.dec = nn.Sequential(nn.Conv2d(6 + 2, 16, 3, 1, 1), nn.ReLU())
        self.predict_flow2 = nn.Conv2d(16, 2, 3, 1, 1)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        flow3 = self.predict_flow3(self.enc(x))
        flow2 = self.predict_flow2(self.dec(torch.cat([x, self.deconv3(flow3)], 1)))
        return (flow2, flow3) if self.training else flow2


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_output_returned_in_training_mode_only_keeps_its_width(mode: str) -> None:
    # the eval trace saw flow3 as an inner tensor and cut it to one channel: the pruned
    # model's training output changed shape without a word
    torch.manual_seed(0)
    model = _CoarserFlowInTraining().train(mode == "train")
    x = torch.randn(2, 6, 16, 16)
    result = pk.prune(model, x, ratio=0.5)
    assert result.model.predict_flow3.out_channels == 2
    assert result.model.enc[0].out_channels == 8 and result.model.dec[0].out_channels == 8
    result.model.train()
    model.train()
    with torch.no_grad():
        assert [t.shape for t in result.model(x)] == [t.shape for t in model(x)]


class _FlagByMode(nn.Module):
    """A forward that reads ``self.training`` for a flag only (Transformers' ``use_cache``
    while checkpointing, RWKV's rescaling of its weights when the mode changes): it returns
    the same in both modes, so no training pass runs (RWKV's would rescale its weights in
    place, and nothing was pruned)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 3)
        self.training_calls: list[int] = []
        self.register_forward_pre_hook(
            lambda m, _: m.training_calls.append(1) if m.training else None)

    def forward(self, x: Tensor) -> Tensor:
        use_cache = not self.training
        h = torch.relu(self.a(x))
        if self.training and not use_cache:
            h = h * 1.0
        return self.b(h)


def test_a_mode_flag_that_changes_no_output_needs_no_training_pass() -> None:
    torch.manual_seed(0)
    model = _FlagByMode().eval()
    result = pk.prune(model, torch.randn(4, 8), ratio=0.5)
    assert model.training_calls == [] and result.model.a.out_features == 8
