"""The criterion seam: element-wise importance scores and how a group of elements combines.

A criterion scores a weight tensor element by element (non-negative, same shape, higher =
more important) and says how the scores of a group of elements (a kernel, a block, an N:M
group, a whole channel as a row of a 2-D view) combine into one score for that group.
Criteria never look at layer types; callers hand them tensors. Channel scores, for
example, are ``c.combine(c.score(w.flatten(1), generator=g), dim=1)`` with the channels
as rows of the 2-D view.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from prunekit.errors import ConfigError


@runtime_checkable
class Criterion(Protocol):
    """Scores the elements of a weight tensor; ``combine`` reduces a group of them."""

    @property
    def name(self) -> str:
        """Registry key, e.g. "l1"."""
        ...

    @property
    def needs_data(self) -> bool:
        """True for criteria that need calibration data (gradients, activations); callers
        without data reject them with :func:`require_data_free`."""
        ...

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Non-negative scores with the shape of ``weight`` (random criteria draw from
        ``generator``, a CPU generator)."""
        ...

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        """One score per group: reduce element ``scores`` along ``dim``."""
        ...


_CRITERIA: dict[str, Criterion] = {}


def register_criterion(criterion: Criterion, *, replace: bool = False) -> Criterion:
    """Add ``criterion`` to the registry under ``criterion.name`` and return it."""
    if not isinstance(criterion, Criterion):
        raise TypeError(
            f"register_criterion() needs an object with name, needs_data, score() and "
            f"combine(), got {type(criterion).__name__}"
        )
    if criterion.name in _CRITERIA and not replace:
        raise ConfigError(
            f"criterion name {criterion.name!r} is already registered; pick another name "
            f"or pass replace=True"
        )
    _CRITERIA[criterion.name] = criterion
    return criterion


def criterion_names() -> list[str]:
    """Registered criterion names, in registration order."""
    return list(_CRITERIA)


def get_criterion(name: str | Criterion) -> Criterion:
    """The registered criterion called ``name`` (a Criterion object is returned as is)."""
    if isinstance(name, str):
        found = _CRITERIA.get(name)
        if found is not None:
            return found
    elif isinstance(name, Criterion):
        return name
    raise ConfigError(
        f"criterion={name!r} is not a known criterion; choose one of: "
        f"{', '.join(_CRITERIA)} (or register your own with register_criterion)"
    )


def require_data_free(criterion: Criterion, caller: str) -> Criterion:
    """Raise ConfigError if ``criterion`` needs data that ``caller`` cannot give it."""
    if criterion.needs_data:
        free = [n for n, c in _CRITERIA.items() if not c.needs_data]
        raise ConfigError(
            f"criterion={criterion.name!r} needs calibration data (gradients or activations), "
            f"which {caller} does not take; use a data-free criterion ({', '.join(free)}) "
            f"or a data-driven pruner"
        )
    return criterion


def score_dtype(weight: torch.Tensor) -> torch.dtype:
    """float32 for half / bfloat16 / integer weights, the weight's own dtype otherwise."""
    return torch.promote_types(weight.dtype, torch.float32)
