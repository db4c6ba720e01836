"""The thirteenth session's probe patterns (recommendation, generative, speech, sequence and
framework features), as the tests that pin them build them: each model pruned at ratio 0.5
(L2, default ``strict=True``). Columns: whether ``prune`` returns (else the exception),
the fraction of parameters kept, whether the user's model is unchanged (its state dict and
plain number attributes, compared before and after), and the warnings ``prune`` gave
(``numbers``: a number computed from a width it changed; ``unseen``: a tensor the trace
did not see being made). Exactness against the zeroed model is asserted by the tests
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
from tests.graph.test_sized_by_tensor import LengthRegulator, MaskedPooling
from tests.graph.test_table_lookup import FieldTable, PositionTable
from tests.graph.test_tensordot import Projected
from tests.structured.test_attribute_numbers import Attention, ScaledEmbedding
from tests.structured.test_fixed_states import FixedState
from tests.structured.test_forward_writes import Stateful, _model
from tests.structured.test_interactions import (
    DLRM,
    CrossV1,
    CrossV2,
    FieldsEinsum,
    MMoE,
    _inputs,
)

import prunekit as pk

Case = tuple[str, str, Callable[[], tuple[nn.Module, Any]]]


def _seq() -> torch.Tensor:
    seq = torch.randint(1, 100, (8, 6))
    seq[:, 4:] = 0
    return seq


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
        except Exception as exc:  # a benchmark reports failures instead of stopping
            return f"{type(exc).__name__}", "-", "-", ""
    after = model.state_dict()
    same = all(torch.equal(state[k], after[k]) for k in state) and numbers == _numbers(model)
    said = [str(w.message) for w in caught]
    notes = [name for name, key in (("numbers", "computes a number from a width"),
                                    ("unseen", "did not see being made"))
             if any(key in text for text in said)]
    return "ok", f"{result.params_kept:.2f}", "yes" if same else "NO", ",".join(notes)


def main() -> None:
    torch.set_num_threads(1)
    print(f"{'pattern':34s} {'prune':>16s} {'kept':>5s} {'user':>5s}  warnings  test")
    for name, test, make in CASES:
        status, kept, same, notes = attempt(make)
        print(f"{name:34s} {status:>16s} {kept:>5s} {same:>5s}  {notes:8s}  {test}")


if __name__ == "__main__":
    main()
