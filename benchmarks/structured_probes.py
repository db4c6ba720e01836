"""The probe patterns of the thirteenth session (recommendation, generative, speech, sequence
and framework features) and of the fourteenth (reinforcement learning, self-supervised,
scientific ML, detection heads, and what ``benchmarks/structured_roundtrip.py`` found), as
the tests that pin them build them: each model pruned at ratio 0.5
(L2, default ``strict=True``). Columns: whether ``prune`` returns (else the exception),
the fraction of parameters kept, whether the user's model is unchanged (its state dict and
plain number attributes, compared before and after), and the warnings ``prune`` gave
(``numbers``: a number computed from a width it changed; ``unseen``: a tensor the trace
did not see being made; ``nothing``: it removed nothing). ``kept`` is the fraction of
parameters kept; where the outputs keep their width by design (a policy's actions, C51's
atoms) a lower number before is the bug, not a better prune. Exactness against the zeroed
model is asserted by the tests
named in each row. Run it against an older tree for the "before" column. Not a test.

Command:

    .venv/bin/python benchmarks/structured_probes.py
    PYTHONPATH=<copy of an older tree>/src .venv/bin/python benchmarks/structured_probes.py
"""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.*

from tests.graph.test_attribute_sizes import FlatFields, SharedPlanes
from tests.graph.test_einsum_weights import LinformerProjection
from tests.graph.test_gather_scatter import NeighbourMax
from tests.graph.test_hidden_tensors import UnseenBranch
from tests.graph.test_losses_in_forward import Classifier, InvertibleStep, NormalVAE, Quantizer
from tests.graph.test_masked_weights import _conv, _linear
from tests.graph.test_probe_ops import (
    Distributional,
    Ensemble,
    GFLHead,
    Losses,
    NoiseInjection,
    NoisyDQN,
)
from tests.graph.test_sized_by_tensor import LengthRegulator, MaskedPooling
from tests.graph.test_table_lookup import FieldTable, PositionTable
from tests.graph.test_tensordot import Projected
from tests.structured.test_attribute_numbers import Attention, ScaledEmbedding
from tests.structured.test_autograd_forward import HNN, PINN, FuncJacobian
from tests.structured.test_check_hints import _Features
from tests.structured.test_complex_weights import FNO2d
from tests.structured.test_fixed_states import CellPolicy, FixedState
from tests.structured.test_forward_writes import MomentumEncoder, Stateful, _model
from tests.structured.test_fused_qkv import _BandedBlock
from tests.structured.test_interactions import (
    DLRM,
    CrossV1,
    CrossV2,
    FieldsEinsum,
    MMoE,
    _inputs,
)
from tests.structured.test_object_outputs import Policy
from tests.structured.test_remade_buffers import RelativePositions
from tests.structured.test_torch_transformer import DETRDemo
from tests.structured.test_width_numbers import ReadoutScale

import prunekit as pk

Case = tuple[str, str, Callable[[], tuple[nn.Module, Any]]]


def _seq() -> torch.Tensor:
    seq = torch.randint(1, 100, (8, 6))
    seq[:, 4:] = 0
    return seq


def _convit() -> tuple[nn.Module, torch.Tensor]:
    model, x = RelativePositions().eval(), torch.randn(2, 5, 16)
    model(x)  # (the table is made by the first forward; users run theirs before pruning)
    return model, x


CASES: list[Case] = [
    ("tensordot, parameter contracted", "graph/test_tensordot",
     lambda: (Projected("int"), torch.randn(3, 8))),
    ("DLRM, cat + view(B, -1, d)", "structured/test_interactions",
     lambda: (DLRM("view_of_width_read"), _inputs(4))),
    ("DLRM, stack + bmm", "structured/test_interactions", lambda: (DLRM("stack"), _inputs(4))),
    ("DLRM, einsum bfd,bgd", "structured/test_interactions",
     lambda: (FieldsEinsum("stack"), _inputs(4))),
    ("MMoE, bmm", "structured/test_interactions", lambda: (MMoE("bmm"), torch.randn(8, 10))),
    ("MMoE, einsum", "structured/test_interactions",
     lambda: (MMoE("einsum"), torch.randn(8, 10))),
    ("MMoE, broadcast + sum", "structured/test_interactions",
     lambda: (MMoE("sum"), torch.randn(8, 10))),
    ("DCN v1, x0 @ w (1-D)", "structured/test_interactions",
     lambda: (CrossV1(), torch.randn(4, 8))),
    ("DCN v2, x @ W[i].t()", "structured/test_interactions",
     lambda: (CrossV2(), torch.randn(6, 8))),
    ("DeepFM, view(-1, nf * d)", "graph/test_attribute_sizes",
     lambda: (FlatFields(), torch.randint(0, 50, (4, 5)))),
    ("Point Transformer, out // mid", "graph/test_attribute_sizes",
     lambda: (SharedPlanes("quotient"), torch.randn(2, 10, 3))),
    ("mask.expand(-1, -1, self.d)", "graph/test_sized_by_tensor",
     lambda: (MaskedPooling("expand"), _seq())),
    ("mask.repeat(1, 1, self.d)", "graph/test_sized_by_tensor",
     lambda: (MaskedPooling("repeat"), _seq())),
    ("length regulator, given", "graph/test_sized_by_tensor",
     lambda: (LengthRegulator(False), (torch.randn(2, 5, 8),
                                       torch.tensor([[1, 2, 1, 3, 1], [2, 2, 2, 1, 1]])))),
    ("length regulator, predicted", "graph/test_sized_by_tensor",
     lambda: (LengthRegulator(True), (torch.randn(2, 5, 8),
                                      torch.tensor([[1, 2, 1, 3, 1], [2, 2, 2, 1, 1]])))),
    ("gather index, width read", "graph/test_gather_scatter",
     lambda: (NeighbourMax("read"), torch.randn(2, 3, 20))),
    ("gather index, self.channels", "graph/test_gather_scatter",
     lambda: (NeighbourMax("attribute"), torch.randn(2, 3, 20))),
    ("VAE, distributions.Normal", "graph/test_losses_in_forward",
     lambda: (NormalVAE(), torch.randn(4, 12))),
    ("mse / smooth_l1 losses", "graph/test_losses_in_forward",
     lambda: (Quantizer(), torch.randn(4, 12))),
    ("cross_entropy loss", "graph/test_losses_in_forward",
     lambda: (Classifier(), (torch.randn(6, 12), torch.randint(0, 10, (6,))))),
    ("slogdet (Glow 1x1 conv)", "graph/test_losses_in_forward",
     lambda: (InvertibleStep(), torch.randn(2, 4, 6, 6))),
    ("PixelCNN, conv(w * mask)", "graph/test_masked_weights", _conv),
    ("MADE, linear(mask * w)", "graph/test_masked_weights", _linear),
    ("V[ids] table, 4 rows of ids", "graph/test_table_lookup",
     lambda: (FieldTable("getitem"), torch.randint(0, 1000, (4, 6)))),
    ("position table, index_select", "graph/test_table_lookup",
     lambda: (PositionTable(), torch.randn(2, 7, 10))),
    ("Linformer einsum bnd,nk->bkd", "graph/test_einsum_weights",
     lambda: (LinformerProjection(), torch.randn(2, 16, 16))),
    ("GRU h0 = zeros(1, B, 48)", "structured/test_fixed_states",
     lambda: (FixedState("gru_h0"), torch.randn(2, 5, 16))),
    ("LSTMCell loop from zeros", "structured/test_fixed_states",
     lambda: (FixedState("cell_loop"), torch.randn(2, 5, 16))),
    ("ActNorm data-dependent init", "structured/test_forward_writes",
     lambda: (_model(), torch.randn(4, 3, 8, 8) * 5 + 3)),
    ("EMA rebind, counter, batch_norm", "structured/test_forward_writes",
     lambda: (Stateful(), torch.randn(3, 16))),
    ("NumPy branch stacked", "graph/test_hidden_tensors",
     lambda: (UnseenBranch("stack"), torch.randn(3, 16))),
    ("1 / math.sqrt(self.d_k)", "structured/test_attribute_numbers",
     lambda: (Attention(), torch.randn(2, 6, 32))),
    ("embedding_dim ** 0.5", "structured/test_attribute_numbers",
     lambda: (ScaledEmbedding(), torch.randint(0, 50, (3, 5)))),
    # the fourteenth session
    ("policy -> Categorical(logits)", "structured/test_object_outputs",
     lambda: (Policy("categorical"), torch.randn(4, 16))),
    ("policy -> Normal(mu, log_std.exp())", "structured/test_object_outputs",
     lambda: (Policy("normal"), torch.randn(4, 16))),
    ("C51, softmax over atoms * support", "graph/test_probe_ops",
     lambda: (Distributional(), torch.randn(5, 8))),
    ("NoisyNet mu + sigma * eps, eval mu", "graph/test_probe_ops",
     lambda: (NoisyDQN(), torch.randn(5, 16))),
    ("noise randn(self.width)", "graph/test_probe_ops",
     lambda: (NoiseInjection(), torch.randn(4, 8))),
    ("ensemble baddbmm(bias, x, W)", "graph/test_probe_ops",
     lambda: (Ensemble(True), (torch.randn(4, 10), torch.randn(4, 3)))),
    ("Beta policy (lgamma, digamma)", "graph/test_probe_ops",
     lambda: (Losses("beta", "mean"), tuple(torch.randn(4, 8) for _ in range(3)))),
    ("triplet_margin_loss", "graph/test_probe_ops",
     lambda: (Losses("triplet", "mean"), tuple(torch.randn(4, 8) for _ in range(3)))),
    ("GFL Integral, F.linear(x, 1-D)", "graph/test_probe_ops",
     lambda: (GFLHead(), torch.randn(1, 3, 8, 8))),
    ("split(C) by x.shape, window == C", "structured/test_fused_qkv",
     lambda: (nn.Sequential(nn.Linear(8, 32), _BandedBlock(), nn.Linear(32, 2)),
              torch.randn(2, 40, 8))),
    ("nn.Transformer d_model (DETR demo)", "structured/test_torch_transformer",
     lambda: (DETRDemo(), torch.randn(2, 3, 4, 4))),
    ("MoCo p.data = m*p.data + ...", "structured/test_forward_writes",
     lambda: (MomentumEncoder(False), torch.randn(4, 8))),
    ("hook writes self.features", "structured/test_check_hints",
     lambda: (_Features(), torch.randn(1, 3, 8, 8))),
    ("PINN, autograd.grad(u, x)", "structured/test_autograd_forward",
     lambda: (PINN(), torch.rand(16, 2, requires_grad=True))),
    ("HNN, dH/dz under enable_grad", "structured/test_autograd_forward",
     lambda: (HNN(), torch.randn(16, 4))),
    ("vmap(jacrev(f)) in forward", "structured/test_autograd_forward",
     lambda: (FuncJacobian(), torch.rand(8, 2))),
    ("FNO, cfloat spectral weights", "structured/test_complex_weights",
     lambda: (FNO2d(), torch.randn(2, 8, 8, 3))),
    ("h0 = new_zeros(B, self.cell.hidden)", "structured/test_fixed_states",
     lambda: (CellPolicy("new_zeros"), torch.randn(3, 4, 10))),
    ("z.shape[-1] ** -0.5", "structured/test_width_numbers",
     lambda: (ReadoutScale("pow"), torch.randn(8, 3))),
    ("ConViT rel_indices, run before", "structured/test_remade_buffers", _convit),
]


def _numbers(model: nn.Module) -> dict[str, object]:
    return {f"{path}.{key}": value for path, module in model.named_modules()
            for key, value in vars(module).items() if type(value) in (int, float)}


def attempt(make: Callable[[], tuple[nn.Module, Any]]) -> tuple[str, str, str, str]:
    torch.manual_seed(0)
    model, inputs = make()
    model.eval()
    state, numbers = copy.deepcopy(model.state_dict()), _numbers(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = pk.prune(model, inputs, ratio=0.5)
            kept = f"{result.params_kept:.2f}"
        except Exception as exc:  # a benchmark reports failures instead of stopping
            return f"{type(exc).__name__}", "-", "-", ""
    after = model.state_dict()
    same = all(torch.equal(state[k], after[k]) for k in state) and numbers == _numbers(model)
    said = [str(w.message) for w in caught]
    notes = [name for name, key in (("numbers", "computes a number from a width"),
                                    ("unseen", "did not see being made"),
                                    ("nothing", "removed nothing"))
             if any(key in text for text in said)]
    return "ok", kept, "yes" if same else "NO", ",".join(notes)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'pattern':36s} {'prune':>22s} {'kept':>5s} {'user':>5s}  warnings  test")
    for name, test, make in CASES:
        status, kept, same, notes = attempt(make)
        print(f"{name:36s} {status:>22s} {kept:>5s} {same:>5s}  {notes:8s}  {test}")


if __name__ == "__main__":
    main()
