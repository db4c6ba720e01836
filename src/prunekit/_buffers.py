"""Keep a measurement from changing a model: buffers (BatchNorm running statistics, caches)
that a forward pass updates are put back afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["preserved_buffers"]


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``model`` (object and value) when the block exits.

    A forward pass in training mode updates BatchNorm running statistics even under
    ``torch.no_grad()``; measuring a model must not.
    """
    saved: list[tuple[nn.Module, str, torch.Tensor, torch.Tensor]] = []
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None:
                saved.append((module, name, buffer, buffer.detach().clone()))
    try:
        yield
    finally:
        with torch.no_grad():
            for module, name, buffer, value in saved:
                if not buffer.is_inference():  # (made under inference_mode: nothing outside
                    buffer.copy_(value)         # it can write into one, nor put it back)
                if getattr(module, name) is not buffer:
                    setattr(module, name, buffer)
