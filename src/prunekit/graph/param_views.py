"""Views of a parameter that a matrix product may take as a layer weight.

``x @ self.weight.t()`` (a hand-written linear), ``grouped_mm(x, self.gate_up_proj.mT)``
and ``F.linear(x, self.experts[e])`` read a parameter through a view: ``W.t()`` of a 2-D
``W`` or ``W.transpose(-2, -1)`` of a 3-D stack of expert weights (kind ``"t"``), ``W[e]``
or ``W[ids]`` picking experts of a stack (kind ``"pick"``), ``W.squeeze(1)`` and
``.unsqueeze(1)`` of that, or ``W`` cast to another dtype (kind ``"same"``: ``W``'s
elements one for one, which a layer takes as ``W`` where its shape is ``W``'s again).
Labelled as the op that made it would label it, the view would be read elementwise; so
it is left unlabelled until a matrix product takes it as a layer weight
(:meth:`ParamViews.weight`), or something else reads it (:meth:`ParamViews.read`, which
labels it then).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["ParamViews"]


class ParamViews(dict[int, tuple[Tensor, Tensor, str, Callable[[bool], None]]]):
    """``{id(view): (view, W, kind, label)}``, ``label(partial)`` labelling the view. A dict,
    so that the tracer's per-op membership test stays a dict lookup. ``companions``: the
    tensors that must be cut as ``W`` is where a layer takes the view as its weight (the
    mask of ``W * mask``; NoisyNet's ``sigma`` and ``epsilon`` of ``mu + sigma * epsilon``),
    by id of the view."""

    def __init__(self) -> None:
        super().__init__()
        # (tensor, its axis for each axis of W, or None where they are W's own)
        self.companions: dict[int, tuple[tuple[Tensor, tuple[int | None, ...] | None],
                                         ...]] = {}

    def defer(self, view: Tensor, weight: Tensor, kind: str, label: Callable[[bool], None]
              ) -> None:
        self[id(view)] = (view, weight, kind, label)

    def weight(self, tensor: Tensor, kind: str) -> Tensor | None:
        """The parameter ``W`` if ``tensor`` is a view of ``kind`` of it that nothing has
        read yet."""
        view = self.get(id(tensor))
        return view[1] if view is not None and view[0] is tensor and view[2] == kind else None

    def read(self, tensor: Tensor, partial: bool) -> bool:
        """Label ``tensor`` if it is a deferred view (read as a tensor after all); whether it
        was."""
        view = self.pop(id(tensor), None)
        if view is None or view[0] is not tensor:
            return False
        view[3](partial)
        return True
