"""A block on a residual stream between an input layer and an output layer, the frame the
hand-written blocks of these tests are pruned in (the block stays reachable by its name:
``model.mixer``, ``model.attn``)."""

from __future__ import annotations

from torch import Tensor, nn


class Residual(nn.Module):
    """``head(h + block(h))`` with ``h = embed(x)``: ``features`` in, ``width`` on the
    residual stream, ``classes`` out; the block is registered as ``name``."""

    def __init__(self, name: str, block: nn.Module, features: int, width: int,
                 classes: int) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.add_module(name, block)
        self.block_name = name
        self.head = nn.Linear(width, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        return self.head(h + getattr(self, self.block_name)(h))
