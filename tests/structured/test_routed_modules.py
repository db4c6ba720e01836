"""Modules the code picks among by the data (mixture-of-experts routing, a head chosen by
an input, early exit): those the example inputs never reach read widths the trace cannot
see. Where at least two siblings of the same layout ran and were coupled alike, the others
are pruned like them (with a warning) and the forward check runs each on a sibling's
inputs; otherwise prune refuses with the fix instead of returning a model that breaks once
a token reaches them. Either way the pruned model is exact on inputs that reach them all."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.structured.test_equivalence import _zero_removed_inputs
from torch import Tensor, nn

from prunekit.errors import ConfigError, PruneValidationError
from prunekit.structured import PruneResult, prune


class FFN(nn.Module):
    def __init__(self, d: int, h: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class MoE(nn.Module):
    def __init__(self, d: int = 16, h: int = 32, experts: int = 6, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(d, experts, bias=False)
        self.experts = nn.ModuleList(FFN(d, h) for _ in range(experts))

    def forward(self, x: Tensor) -> Tensor:
        w, idx = self.gate(x).softmax(-1).topk(self.k, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            if rows.numel():
                out.index_add_(0, rows, expert(x[rows]) * w[rows, slot, None])
        return out


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.moe, self.out = nn.Linear(8, 16), MoE(), nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        return self.out(h + self.moe(h))


class TaskHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.heads = nn.ModuleList(nn.Linear(16, 3) for _ in range(3))

    def forward(self, x: Tensor, task: int) -> Tensor:
        return self.heads[task](F.relu(self.body(x)))


def _assert_exact(model: nn.Module, result: PruneResult, *inputs: tuple[Any, ...]) -> None:
    reference = _zero_removed_inputs(model, result.plan)
    for args in inputs:
        with torch.no_grad():
            torch.testing.assert_close(result.model(*args), reference(*args),
                                       rtol=1e-5, atol=1e-6)


def test_experts_the_example_never_reaches_are_pruned_like_those_that_ran() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    with pytest.warns(UserWarning, match=r"moe\.experts\.\d.* never ran on the example "
                                         r"inputs; they are pruned like their siblings"):
        result = prune(model, torch.randn(1, 8), ratio=0.5)
    assert [e.fc1.out_features for e in result.model.moe.experts] == [16] * 6
    assert [e.fc2.in_features for e in result.model.moe.experts] == [16] * 6
    assert result.model.moe.gate.out_features == 6
    # a weight criterion scores a copied expert by its own weights: the plan is the one
    # that inputs reaching every expert give
    reached_all = prune(model, torch.randn(64, 8), ratio=0.5)
    assert result.plan["modules"] == reached_all.plan["modules"]
    _assert_exact(model, result, *[(torch.randn(rows, 8),) for rows in (1, 3, 200)])


def test_one_expert_that_ran_is_not_enough_to_copy() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    model.moe.k = 1  # one token reaches one expert: nothing says the others are alike
    with pytest.raises(ConfigError, match=r"moe\.experts\.\d.* never ran on the example "
                                          r"inputs.*at least two siblings.*reach every one"):
        prune(model, torch.randn(1, 8), ratio=0.5)


def test_a_head_chosen_by_an_input_is_refused() -> None:
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"heads\.1, heads\.2 never ran.*a wrapper whose "
                                          r"forward calls every head.*ignore= does not help"):
        prune(TaskHeads().eval(), (torch.randn(2, 8), 0), ratio=0.5)


def test_with_every_expert_reached_the_pruned_model_is_exact_on_other_inputs() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    result = prune(model, torch.randn(64, 8), ratio=0.5, importance="random")
    assert all(e.fc1.out_features == 16 for e in result.model.moe.experts)
    assert result.model.moe.gate.out_features == 6  # the router's experts are not channels
    reference = _zero_removed_inputs(model, result.plan)
    for rows in (1, 3, 200):
        x = torch.randn(rows, 8)
        with torch.no_grad():
            torch.testing.assert_close(result.model(x), reference(x), rtol=1e-5, atol=1e-6)


class EveryExpertMoE(MoE):
    """Calls every expert, on the rows routed to it, however many: often none."""

    def forward(self, x: Tensor) -> Tensor:
        w, idx = self.gate(x).softmax(-1).topk(self.k, -1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(idx == e)
            out = out.index_add(0, rows, expert(x[rows]) * w[rows, slot, None])
        return out


class EveryExpertNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.moe = EveryExpertMoE()


def test_an_expert_run_on_no_rows_counts_as_not_reached() -> None:
    torch.manual_seed(0)
    model = EveryExpertNet().eval()
    model.moe.k = 1  # one token: one expert runs on it, the others on no rows
    with pytest.raises(ConfigError, match=r"moe\.experts\.\d.* never ran on the example"):
        prune(model, torch.randn(1, 8), ratio=0.5)
    model.moe.k = 2
    with pytest.warns(UserWarning, match=r"never ran on the example inputs; they are pruned"):
        result = prune(model, torch.randn(1, 8), ratio=0.5, importance="random")
    assert [e.fc1.out_features for e in result.model.moe.experts] == [16] * 6
    _assert_exact(model, result, (torch.randn(5, 8),), (torch.randn(64, 8),))


class TwoBranchHeads(nn.Module):
    """Head i reads branch i; head 2 (picked by the input) never runs on the example."""

    def __init__(self) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Linear(8, 16), nn.Linear(8, 16)])
        self.heads = nn.ModuleList(nn.Linear(16, 3) for _ in range(3))

    def forward(self, x: Tensor, picks: tuple[int, ...]) -> Tensor:
        feats = [F.relu(branch(x)) for branch in self.branches]
        return sum(self.heads[i](feats[i]) for i in picks)  # type: ignore[return-value]


def test_siblings_that_ran_but_read_different_channels_are_not_copied() -> None:
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"heads\.2 never ran.*coupled alike"):
        prune(TwoBranchHeads().eval(), (torch.randn(2, 8), (0, 1)), ratio=0.5)


class FlaggedFFN(FFN):
    """Expert ``wide`` reads its hidden width as a constant: cut, it breaks once it runs."""

    def __init__(self, d: int, h: int, wide: bool) -> None:
        super().__init__(d, h)
        self.wide, self.h = wide, h

    def forward(self, x: Tensor) -> Tensor:
        hidden = F.gelu(self.fc1(x))
        if self.wide:
            hidden = hidden.repeat(1, 2)[:, : self.h]
        return self.fc2(hidden)


class FlaggedNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.moe.experts = nn.ModuleList(FlaggedFFN(16, 32, wide=e == 3) for e in range(6))


def test_the_check_runs_each_copy_on_its_siblings_inputs() -> None:
    torch.manual_seed(0)
    model = FlaggedNet().eval()
    x = torch.randn(1, 8)
    with torch.no_grad():
        routed = set(model.moe.gate(model.inp(x)).topk(2, -1).indices.view(-1).tolist())
    assert 3 not in routed and len(routed) == 2
    with pytest.warns(UserWarning, match="never ran"), \
            pytest.raises(PruneValidationError, match=r"moe\.experts\.3, pruned like .* fails on "
                                                      r".*Cutting group \d+ .*experts\.3\.fc1"):
        prune(model, x, ratio=0.5)
    with pytest.warns(UserWarning):
        result = prune(model, x, ratio=0.5, strict=False)
    assert result.model.moe.experts[3].fc1.out_features == 32  # its group is kept whole
    assert [e.fc1.out_features for i, e in enumerate(result.model.moe.experts) if i != 3] \
        == [16] * 5
    _assert_exact(model, result, (torch.randn(64, 8),))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ffn = FFN(16, 32)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.ffn(x)


class EarlyExit(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(8, 16), nn.Linear(16, 4)
        self.layers = nn.ModuleList(Block() for _ in range(4))

    def forward(self, x: Tensor, depth: int) -> Tensor:
        h = self.inp(x)
        for layer in self.layers[:depth]:
            h = layer(h)
        return self.out(h)


def test_layers_after_an_early_exit_are_pruned_like_those_that_ran() -> None:
    torch.manual_seed(0)
    model = EarlyExit().eval()
    with pytest.warns(UserWarning, match=r"layers\.2, layers\.3 never ran"):
        result = prune(model, (torch.randn(3, 8), 2), ratio=0.5)
    assert [(layer.ffn.fc1.in_features, layer.ffn.fc1.out_features)
            for layer in result.model.layers] == [(8, 16)] * 4
    _assert_exact(model, result, (torch.randn(5, 8), 4), (torch.randn(5, 8), 3))


class StackedExperts(nn.Module):
    """JetMoE's ParallelExperts: tokens sorted by expert, split by count, one F.linear per
    expert on its slice of a stacked weight; an expert no token picked gets 0 rows."""

    def __init__(self, d: int = 16, h: int = 32, experts: int = 4) -> None:
        super().__init__()
        self.gate = nn.Linear(d, experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(experts, h, d) / 4)
        self.w_out = nn.Parameter(torch.randn(experts, d, h) / 4)

    def forward(self, x: Tensor) -> Tensor:
        expert = self.gate(x).argmax(-1)
        order = expert.argsort()
        counts = torch.bincount(expert, minlength=self.w_in.shape[0]).tolist()
        parts = x[order].split(counts)
        outs = [F.linear(F.gelu(F.linear(part, self.w_in[e])), self.w_out[e])
                for e, part in enumerate(parts)]
        return torch.zeros_like(x).index_copy(0, order, torch.cat(outs))


class StackedNet(Net):
    def __init__(self) -> None:
        super().__init__()
        self.moe = StackedExperts()  # type: ignore[assignment]


def test_an_op_run_on_no_rows_couples_nothing() -> None:
    torch.manual_seed(0)
    model = StackedNet().eval()
    few, many = torch.randn(2, 8), torch.randn(64, 8)
    with torch.no_grad():
        assert len(set(model.moe.gate(model.inp(few)).argmax(-1).tolist())) < 4
        assert len(set(model.moe.gate(model.inp(many)).argmax(-1).tolist())) == 4
    result = prune(model, few, ratio=0.5)
    assert result.model.moe.w_in.shape == (4, 16, 8)
    reached_all = prune(model, many, ratio=0.5)
    assert result.plan == reached_all.plan
    x = torch.randn(50, 8)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), reached_all.model(x))


@pytest.mark.parametrize("layout", ["ListMoE", "HashMoE", "ShazeerMoE", "DictMoE", "NestedMoE",
                                    "CosineMoE", "HiddenListMoE"])
def test_one_token_gives_the_plan_that_reaching_every_expert_gives(layout: str) -> None:
    """The expert layouts of tests/llm/moe_models.py in a two-layer LM: a one-token example
    reaches two experts per layer; the others are copied, and a weight criterion then
    keeps what 256 tokens (every expert reached) make it keep."""
    from tests.llm import moe_models

    torch.manual_seed(0)
    model = moe_models.TinyMoELM(getattr(moe_models, layout)).eval()
    with pytest.warns(UserWarning, match="never ran on the example inputs"):
        few = prune(model, torch.randint(0, 50, (1, 1)), ratio=0.5)
    every = prune(model, torch.randint(0, 50, (4, 64)), ratio=0.5)
    assert few.plan == every.plan
    assert few.params_kept < 0.5


class CalledByForward(nn.Module):
    """PyG's TAGConv: ``h + lin.forward(x)`` runs the layers without firing their hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.lins = nn.ModuleList(nn.Linear(8, 16) for _ in range(3))
        self.out = nn.Linear(16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.lins[0](x)
        for lin in self.lins[1:]:
            x = x * 0.5
            h = h + lin.forward(x)
        return self.out(h.relu())


def test_a_layer_called_through_forward_counts_as_reached() -> None:
    torch.manual_seed(0)
    model = CalledByForward().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither refused nor copied
        result = prune(model, torch.randn(10, 8), ratio=0.5)
    assert result.model.lins[2].weight.shape == (8, 8)
    _assert_exact(model, result, (torch.randn(10, 8),), (torch.randn(3, 8),))


def test_copied_experts_save_and_reload(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from prunekit.io.checkpoint import load, save

    torch.manual_seed(0)
    model = Net().eval()
    with pytest.warns(UserWarning, match="never ran"):
        result = prune(model, torch.randn(1, 8), ratio=0.5)
    save(result, tmp_path / "p")
    torch.manual_seed(1)
    loaded = load(tmp_path / "p", Net().eval())
    x = torch.randn(40, 8)  # reaches every expert
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


class ModalityExperts(nn.Module):
    """VLMo's mixture of modality experts, held as attributes and picked by modality."""

    def __init__(self) -> None:
        super().__init__()
        self.patch, self.tok = nn.Linear(12, 32), nn.Embedding(40, 32)

        def ffn() -> nn.Module:
            return nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))

        self.mlp_text, self.mlp_imag, self.mlp_vl = ffn(), ffn(), ffn()
        self.head = nn.Linear(32, 4)

    def forward(self, image: Tensor, text: Tensor, fused: bool = False) -> Tensor:
        v, t = self.patch(image), self.tok(text)
        if fused:
            x = torch.cat([t, v], 1)
            return self.head((x + self.mlp_vl(x))[:, 0])
        v, t = v + self.mlp_imag(v), t + self.mlp_text(t)
        return self.head(v[:, 0]) @ self.head(t[:, 0]).t()


def test_a_sibling_held_as_an_attribute_that_never_ran_is_pruned_like_the_others() -> None:
    """Before, ``mlp_vl`` kept its width without a warning while the residual it reads was
    cut: the pruned model failed in fused mode."""
    torch.manual_seed(0)
    model = ModalityExperts().eval()
    x = (torch.randn(2, 5, 12), torch.randint(0, 40, (2, 6)))
    with pytest.warns(UserWarning, match="mlp_vl never ran"):
        result = prune(model, x, ratio=0.5, ignore=[model.head])
    pruned = result.model
    assert pruned.mlp_vl[0].in_features == pruned.patch.out_features == 16
    assert pruned.mlp_vl[0].out_features == pruned.mlp_text[0].out_features == 32
    with torch.no_grad():
        assert pruned(*x, fused=True).shape == (2, 4)


class NestedLayers(nn.Module):
    """lucidrains' Perceiver: each layer a ModuleList whose third item, a ModuleList too, is
    unpacked in the loop and never called itself."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8),
                           nn.ModuleList([nn.Linear(8, 32), nn.Linear(32, 8)])])
            for _ in range(2))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        for cross, ff, (sa, sf) in self.layers:
            x = x + cross(x)
            x = x + ff(x)
            x = x + sf(torch.relu(sa(x)))
        return self.head(x)


def test_an_uncalled_container_whose_members_ran_counts_as_reached() -> None:
    """Before: a ConfigError that ``layers.0.2`` never ran, also with strict=False."""
    torch.manual_seed(0)
    model, x = NestedLayers().eval(), torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = prune(model, x, ratio=0.5)
    assert result.model.layers[0][2][0].out_features == 16
    with torch.no_grad():
        torch.testing.assert_close(result.model(x),
                                   _zero_removed_inputs(model, result.plan)(x))


class _MergedLoRA(nn.Linear):
    """loralib's Linear once merged: forward reads only the weight, not lora_A / lora_B."""

    def __init__(self, n_in: int, n_out: int, rank: int = 4) -> None:
        super().__init__(n_in, n_out)
        self.lora_A = nn.Parameter(torch.randn(rank, n_in) * 0.1)
        self.lora_B = nn.Parameter(torch.randn(n_out, rank) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


def test_a_parameter_a_layer_that_ran_never_read_is_named() -> None:
    # the LoRA factors kept the old widths without a word (the layer itself ran), and
    # unmerging the pruned model failed on shapes
    torch.manual_seed(0)
    model = nn.Sequential(_MergedLoRA(16, 32), nn.ReLU(), _MergedLoRA(32, 32), nn.ReLU(),
                          nn.Linear(32, 10)).eval()
    with pytest.warns(UserWarning, match=r"0\.lora_B \(a parameter it never read, width 32\)"):
        result = prune(model, torch.randn(4, 16), ratio=0.5)
    assert result.model[2].weight.shape == (16, 16) and result.model[2].lora_B.shape == (32, 4)
