"""Running a model in one mode for a while: eval for the trace and the forward check
(BatchNorm must not update its statistics), training for the pass that finds layers only
training runs (auxiliary heads), with every buffer restored after it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["eval_mode", "model_mode"]


@contextlib.contextmanager
def model_mode(model: nn.Module, training: bool,
               modules: list[nn.Module] | None = None) -> Iterator[None]:
    """Run ``model`` in training or eval mode, then restore every module's own mode.

    ``modules`` is ``list(model.modules())`` when the caller has it already."""
    modules = list(model.modules()) if modules is None else modules
    modes = [m.training for m in modules]
    if all(mode == training for mode in modes):  # already so: nothing to switch or restore
        yield
        return
    model.train(training)
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
