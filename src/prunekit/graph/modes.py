"""Running a model in one mode for a while: eval for the trace and the forward check
(BatchNorm must not update its statistics), training for the pass that finds layers only
training runs (auxiliary heads), with every buffer restored after it. In that training
pass the norms that keep running statistics stay in eval mode: they normalise with those,
so a one-sample example (a pooled 1×1 map) does not fail there ("Expected more than 1
value per channel"), and only the branches the model takes in training change."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["eval_mode", "model_mode"]


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool,
               modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Run ``model`` in training or eval mode (its norms with running statistics in eval
    mode, see the module docstring), then restore every module's own mode.

    ``modules`` is ``list(model.modules())`` when the caller has it already."""
    modules = list(model.modules()) if modules is None else modules
    modes = [m.training for m in modules]
    norms = [m for m in modules if isinstance(m, _NormBase) and m.track_running_stats
             and m.running_mean is not None] if training else []
    if all(mode == training for mode in modes) and not norms:  # nothing to switch back
        yield
        return
    model.train(training)
    for norm in norms:
        norm.training = False
    try:
        yield
    finally:
        if all(type(m).train is nn.Module.train for m in modules):
            for module, mode in zip(modules, modes, strict=True):
                module.training = mode  # what train() sets, without its recursion
        else:  # a module with its own train() gets it called, as it expects
            for module, mode in zip(modules, modes, strict=True):
                module.train(mode)


def eval_mode(model: nn.Module, modules: list[nn.Module] | None = None
              ) -> contextlib.AbstractContextManager[None]:
    """:func:`model_mode` in eval mode."""
    return model_mode(model, False, modules)
