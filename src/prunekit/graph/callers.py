"""Which module's code made the op being traced: the ``self`` of the nearest calling frame
outside torch and prunekit.

The module whose ``forward`` is running (``ctx.running_module``) is not always the one whose
code made the call: a helper method of a child module, called by its parent
(``self.rel_pos.get_bias()`` in timm's relative-position attention), runs without a forward
hook, and reads *its own* attributes (``self.num_heads``). Handlers that match sizes written
in a call against a module's attributes look at the module that wrote the call.
"""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

from prunekit.graph.trace import TraceContext

__all__ = ["calling_module"]

# torch's own frames (module call machinery, torch-function dispatch) and prunekit's
_SKIP = tuple(os.path.dirname(p) + os.sep
              for p in (torch.__file__, os.path.dirname(os.path.dirname(__file__))))


def calling_module(ctx: TraceContext) -> tuple[str, nn.Module]:
    """``(path, module)`` of the traced model's module whose method made the current op,
    else the running module's."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(_SKIP):
        frame = frame.f_back  # type: ignore[assignment]
    owner = frame.f_locals.get("self") if frame is not None else None
    if isinstance(owner, nn.Module) and owner is not ctx.running_module:
        for path, module in ctx._named_modules:
            if module is owner:
                return path, module
    return ctx.path, ctx.running_module
