"""A recurrent state or a step-0 input made at a width written in the code
(``torch.zeros(B, 48)``) cannot shrink with the units it meets: those units are kept
whole, with the reason and the fix. Before, the join skipped the made tensor, the units
were cut, and the default strict prune failed its forward check ("Expected hidden size
(1, 2, 24), got [1, 2, 48]")."""

from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch
from torch import Tensor, nn

from prunekit.structured import prune


class FixedState(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.inp, self.out = nn.Linear(16, 32), nn.Linear(48, 10)
        self.gru = nn.GRU(32, 48, batch_first=True)
        self.cell = nn.LSTMCell(32, 48)
        self.step, self.proj = nn.Linear(48, 48), nn.Linear(32, 48)

    def forward(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        if self.how == "gru_h0":
            return self.out(self.gru(self.inp(x), torch.zeros(1, b, 48))[0])
        if self.how == "cell_loop":
            h, c = torch.zeros(b, 48), torch.zeros(b, 48)
            for t in range(x.shape[1]):
                h, c = self.cell(self.inp(x[:, t]), (h, c))
            return self.out(h)
        h = torch.zeros(b, 48)  # a Linear first run on a made tensor
        for _ in range(3):
            h = torch.tanh(self.step(h) + self.proj(torch.relu(self.inp(x[:, 0]))))
        return self.out(h)


@pytest.mark.parametrize("how", ["gru_h0", "cell_loop", "step_zero"])
def test_units_that_meet_a_made_state_are_kept_whole(how: str) -> None:
    torch.manual_seed(0)
    model, x = FixedState(how).eval(), torch.randn(2, 5, 16)
    result = prune(model, x, ratio=0.5)
    assert result.model.out.in_features == 48
    assert any("fixed width" in why and "new_zeros" in why
               for why in result.coverage.fixed.values())
    reference = copy.deepcopy(model)  # inp's removed outputs zeroed: nothing reads them
    keep = result.plan["modules"]["inp"]["keep"]["out"]
    with torch.no_grad():
        gone = sorted(set(range(32)) - set(keep))
        reference.inp.weight[gone] = 0
        reference.inp.bias[gone] = 0
    other = torch.randn(3, 4, 16)
    torch.testing.assert_close(result.model(other), reference(other))


class Refine(nn.Module):
    """RAFT's update loop: a step reads features with a flow that starts as a made tensor
    (zeros) and is its own output after that: only the flow's positions are fixed."""

    def __init__(self) -> None:
        super().__init__()
        self.feat, self.step, self.flow = nn.Linear(16, 32), nn.Linear(34, 32), nn.Linear(32, 2)

    def forward(self, x: Tensor) -> Tensor:
        flow = torch.zeros(x.shape[0], 2)
        for _ in range(3):
            h = torch.relu(self.step(torch.cat([torch.relu(self.feat(x)), flow], dim=1)))
            flow = flow + self.flow(h)
        return flow


def test_only_the_positions_a_made_tensor_fills_are_kept() -> None:
    # the first fix kept all 34 inputs of step whole (RAFT kept 0.79 instead of 0.66)
    torch.manual_seed(0)
    model = Refine().eval()
    result = prune(model, torch.randn(4, 16), ratio=0.5)
    assert result.model.feat.out_features == 16 and result.model.step.in_features == 18


class CellPolicy(nn.Module):
    """A GRUCell policy whose state starts at the width its own fix hint names."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.enc, self.cell, self.head = nn.Linear(10, 24), nn.GRUCell(24, 32), nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        B = x.shape[0]
        h = x.new_zeros(B, self.cell.hidden_size) if self.how == "new_zeros" else \
            torch.zeros(B, self.cell.hidden_size)
        outs = []
        for t in range(x.shape[1]):
            h = self.cell(torch.relu(self.enc(x[:, t])), h)
            outs.append(self.head(h))
        return torch.stack(outs, 1)


@pytest.mark.parametrize("how", ["new_zeros", "zeros"])
def test_a_state_made_at_a_childs_width_attribute_prunes(how: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The hint says to make the state at ``self.cell.hidden_size``; before, only an
    attribute of the running module itself was read that way, and following the hint kept
    the 32 units whole with the same hint (found by the reinforcement-learning probe)."""
    import prunekit as pk

    torch.manual_seed(0)
    model = CellPolicy(how).eval()
    x = torch.randn(3, 4, 10)
    result = prune(model, x, ratio=0.5)
    assert result.model.cell.hidden_size == 16 and result.model.head.in_features == 16
    with torch.no_grad():
        assert result.model(x).shape == (3, 4, 4)
        loaded = pk.load(pk.save(result, tmp_path / "ckpt"), CellPolicy(how))
        assert torch.equal(loaded(x), result.model(x))


class RecurrentFeatures(nn.Module):
    """BasicVSR's propagation: a state made as ``x.new_zeros(b, self.num_feat, h, w)``, and
    ``num_feat`` also sizing a split of another conv."""

    def __init__(self, num_feat: int = 16) -> None:
        super().__init__()
        self.num_feat = num_feat
        self.gate = nn.Conv2d(3, 2 * num_feat, 3, 1, 1)
        self.trunk = nn.Conv2d(3 + num_feat, num_feat, 3, 1, 1)
        self.out, self.out2 = nn.Conv2d(num_feat, 3, 1), nn.Conv2d(num_feat, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        feat = x.new_zeros(b, self.num_feat, h, w)
        for _ in range(2):
            feat = torch.relu(self.trunk(torch.cat([x, feat], 1)))
        p, q = torch.split(self.gate(x), [self.num_feat, self.num_feat], dim=1)
        return self.out(feat) + self.out2(p * torch.sigmoid(q))


@pytest.mark.parametrize("size", [12, 16])
def test_a_state_whose_height_equals_its_width_attribute_prunes(size: int) -> None:
    """At 16×16 with ``num_feat == 16`` the written sizes ``16, 16, 16`` hid which one the
    attribute sizes: the state kept its 16 channels while the split's attribute was
    rewritten, and prune failed its check (strict=False removed nothing). The call names
    ``self.num_feat`` at dim 1; ``h`` and ``w`` are read from the input's shape."""
    torch.manual_seed(0)
    model, x = RecurrentFeatures().eval(), torch.randn(2, 3, size, size)
    result = prune(model, x, ratio=0.5)
    assert result.model.num_feat == 8 and result.model.trunk.out_channels == 8
    assert result.model.gate.out_channels == 16
    with torch.no_grad():
        assert result.model(x).shape == (2, 3, size, size)
        other = torch.randn(1, 3, 10, 14)
        assert result.model(other).shape == (1, 3, 10, 14)


class HeadState(nn.Module):
    """A linear-attention style recurrence whose state is ``torch.zeros(B, self.heads,
    self.dh)``, with ``heads == dh``."""

    def __init__(self) -> None:
        super().__init__()
        self.heads, self.dh = 4, 4
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, _ = x.shape
        h = self.a(x).view(batch, steps, self.heads, self.dh)
        state = torch.zeros(batch, self.heads, self.dh)
        outs = []
        for t in range(steps):
            state = 0.5 * state + h[:, t]
            outs.append(state)
        return self.b(torch.stack(outs, 1).reshape(batch, steps, -1))


def test_a_state_of_heads_written_with_torch_zeros_loses_whole_heads() -> None:
    """Was: the call's sizes were read one place off (``torch.zeros`` was taken for
    ``torch.reshape(x, ...)``, whose first argument is no size), so with ``heads == dh``
    which attribute sized which dim was unknown and nothing was pruned."""
    torch.manual_seed(0)
    model, x = HeadState().eval(), torch.randn(2, 5, 8)
    result = prune(model, x, ratio=0.5)
    assert (result.model.heads, result.model.dh) == (2, 4)
    keep = result.plan["modules"]["a"]["keep"]["out"]
    heads = sorted({c // 4 for c in keep})
    assert keep == [4 * head + j for head in heads for j in range(4)]
    zeroed = HeadState().eval()
    zeroed.load_state_dict(model.state_dict())
    with torch.no_grad():
        zeroed.b.weight[:, [c for c in range(16) if c not in keep]] = 0
        for inputs in (x, torch.randn(3, 7, 8)):
            torch.testing.assert_close(result.model(inputs), zeroed(inputs), rtol=1e-5,
                                       atol=1e-6)


class HandRecurrence(nn.Module):
    """``h = tanh(wx(x_t) + wh(h))`` from ``h = torch.zeros(B, self.hidden)``, or BasicVSR's
    ``feat = x.new_zeros(n, self.num_feat, h, w)`` concatenated with each frame."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.hidden, self.num_feat = how, 16, 8
        self.wx, self.wh, self.head = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        self.fuse = nn.Conv2d(3 + 8, 8, 3, padding=1)
        self.trunk, self.out = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 3, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "linear":  # x: (B, T, 6)
            h = torch.zeros(x.shape[0], self.hidden)
            for t in range(x.shape[1]):
                h = torch.tanh(self.wx(x[:, t]) + self.wh(h))
            return self.head(h)
        n, steps, _, height, width = x.shape  # x: (B, T, 3, H, W)
        feat = x.new_zeros(n, self.num_feat, height, width)
        outs = []
        for t in range(steps):
            feat = torch.relu(self.trunk(torch.relu(self.fuse(torch.cat([x[:, t], feat], 1)))))
            outs.append(self.out(feat))
        return torch.stack(outs, 1)


def _steps(how: str, steps: int) -> Tensor:
    return torch.randn(2, steps, 6) if how == "linear" else torch.randn(1, steps, 3, 8, 8)


@pytest.mark.parametrize("how", ["linear", "conv"])
def test_a_recurrence_the_example_runs_for_one_step_is_warned_of(how: str) -> None:
    # from one step the trace cannot see that the layer's output becomes the state: the
    # state keeps its width and the pruned model fails from the second step on; before,
    # without a word
    torch.manual_seed(0)
    model = HandRecurrence(how).eval()
    attribute = "hidden (16)" if how == "linear" else "num_feat (8)"
    with pytest.warns(UserWarning, match=rf"sized by {re.escape(attribute)} .* a recurrent "
                                         rf"state the example ran for one step\? .* two or "
                                         rf"more steps"):
        prune(model, _steps(how, 1), ratio=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # two steps: joined, and no such warning
        result = prune(model, _steps(how, 2), ratio=0.5)
    assert (result.model.hidden, result.model.num_feat) == ((8, 8) if how == "linear" else
                                                            (16, 4))
    with torch.no_grad():
        longer = _steps(how, 5)
        assert result.model(longer).shape == model(longer).shape


class TutorialRNN(nn.Module):
    """The PyTorch tutorial's classifier: ``h0 = torch.zeros(self.num_layers, B,
    self.hidden_size)``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind, self.hidden_size, self.num_layers = kind, 32, 2
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(8, 32, self.num_layers, batch_first=True)
        self.fc = nn.Linear(32, 4)

    def forward(self, x: Tensor) -> Tensor:
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        state = (h0, torch.zeros(self.num_layers, x.size(0), self.hidden_size)) \
            if self.kind == "lstm" else h0
        out, _ = self.rnn(x, state)
        return self.fc(out[:, -1, :])


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_state_of_a_stack_sized_by_num_layers_and_hidden_size_prunes(kind: str,
                                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    # num_layers (2) was bound first, the hidden dim kept the width written: nothing pruned
    import prunekit as pk

    torch.manual_seed(0)
    model, x = TutorialRNN(kind).eval(), torch.randn(3, 6, 8)
    result = prune(model, x, ratio=0.5)
    assert result.model.hidden_size == result.model.rnn.hidden_size == 16
    assert result.model.num_layers == 2 and result.params_kept < 0.35
    with torch.no_grad():
        other = torch.randn(5, 4, 8)
        assert result.model(other).shape == (5, 4)
        loaded = pk.load(pk.save(result, tmp_path / "ckpt"), TutorialRNN(kind))
        assert torch.equal(loaded(other), result.model(other))


def test_a_state_sized_by_a_childs_attribute_the_module_also_holds_prunes() -> None:
    # ``self.hidden_size = 32`` beside ``self.cell.hidden_size``: two holders of 32, so the
    # state kept its width, with a hint to write the very code it ran
    torch.manual_seed(0)
    model = CellPolicy("new_zeros").eval()
    model.hidden_size = 32
    result = prune(model, torch.randn(3, 4, 10), ratio=0.5)
    assert result.model.cell.hidden_size == result.model.hidden_size == 16
    with torch.no_grad():
        assert result.model(torch.randn(2, 5, 10)).shape == (2, 5, 4)
