"""The criterion seam: element-wise importance scores and how a group of elements combines.

A criterion scores a weight tensor element by element (non-negative, same shape, higher =
more important) and says how the scores of a group of elements (a kernel, a block, an N:M
group, a whole channel as a row of a 2-D view) combine into one score for that group.
Criteria never look at layer types; callers hand them tensors. Channel scores, for
example, are ``c.combine(c.score(w.flatten(1), generator=g), dim=1)`` with the channels
as rows of the 2-D view.

Data-aware criteria (``needs_data``) are :class:`DataCriterion` objects: ``prepare``
runs the calibration batches once and returns one statistic per tensor (keyed by the
tensor's fully-qualified name, e.g. "fc1.weight"), and ``score_with(weight, statistic)``
scores a tensor from it. :func:`prepare_scorers` turns any criterion into a name →
``Criterion`` lookup that callers score with as before, so magnitude criteria are
untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.importance.data import CalibrationData, LossFn, as_calibration, missing_data_error


@runtime_checkable
class Criterion(Protocol):
    """Scores the elements of a weight tensor; ``combine`` reduces a group of them.

    Optional: :class:`ElementwiseCriterion` says a criterion's scores are element by
    element."""

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


@runtime_checkable
class ElementwiseCriterion(Criterion, Protocol):
    """A criterion that opts in with a class attribute ``elementwise = True``, promising
    ``score(cat(ts)) == cat(score(t) for t in ts)`` (each element's score depends on it
    alone, no draws), so group scoring may score several small views in one call (L1/L2
    opt in; a criterion without the attribute, or with it False, is scored view by view)."""

    elementwise: ClassVar[bool]


def is_elementwise(criterion: Criterion) -> bool:
    """True if ``criterion`` is an :class:`ElementwiseCriterion` with ``elementwise`` set."""
    return isinstance(criterion, ElementwiseCriterion) and criterion.elementwise


@runtime_checkable
class DataCriterion(Criterion, Protocol):
    """A criterion scored from per-tensor statistics of calibration data."""

    def prepare(
        self, model: nn.Module, params: Mapping[str, torch.Tensor], data: CalibrationData
    ) -> Mapping[str, torch.Tensor]:
        """One statistic per entry of ``params`` (full tensor name → the leaf tensor of
        ``model`` that holds it; for a masked weight its unmasked ``original``)."""
        ...

    def score_with(self, weight: torch.Tensor, statistic: torch.Tensor) -> torch.Tensor:
        """Non-negative scores of ``weight`` (shape of ``weight``) from its statistic."""
        ...


@dataclass(frozen=True)
class Prepared:
    """A data criterion bound to one tensor's statistic: an ordinary :class:`Criterion`."""

    criterion: DataCriterion
    statistic: torch.Tensor
    needs_data: bool = False

    @property
    def name(self) -> str:
        return self.criterion.name

    def score(self, weight: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        return self.criterion.score_with(weight, self.statistic.to(weight.device))

    def combine(self, scores: torch.Tensor, dim: int) -> torch.Tensor:
        return self.criterion.combine(scores, dim)


def prepare_scorers(
    criterion: Criterion,
    model: nn.Module,
    params: Mapping[str, torch.Tensor],
    data: CalibrationData | Iterable[Any] | None,
    *,
    caller: str,
    loss_fn: LossFn | None = None,
    batches: int | None = None,
) -> Callable[[str], Criterion]:
    """Tensor name → the criterion to score that tensor with.

    A data-free criterion is returned for every name (``data`` must then be None); a
    :class:`DataCriterion` is prepared once on ``data`` (a loader or CalibrationData).
    A ConfigError names ``data=`` when a data criterion gets none."""
    if not criterion.needs_data:
        if data is not None or loss_fn is not None or batches is not None:
            raise ConfigError(
                f"criterion={criterion.name!r} does not use data, but {caller} got data / "
                f"loss_fn / calib_batches; drop them or choose a data-aware criterion "
                f"({', '.join(n for n, c in _CRITERIA.items() if c.needs_data)})"
            )
        return lambda name: criterion
    if data is None:
        raise missing_data_error(criterion.name, caller)
    if not isinstance(criterion, DataCriterion):
        raise TypeError(
            f"criterion {criterion.name!r} says needs_data=True but has no prepare() / "
            f"score_with(); implement the DataCriterion protocol"
        )
    calib = as_calibration(data, criterion=criterion.name, caller=caller, loss_fn=loss_fn,
                           batches=batches)
    stats = criterion.prepare(model, params, calib)
    bound = {name: Prepared(criterion, stats[name]) for name in params}
    return bound.__getitem__


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
    """float32 for half / bfloat16 / integer weights, the weight's own dtype otherwise (its
    real counterpart for a complex weight)."""
    dtype = weight.dtype.to_real() if weight.is_complex() else weight.dtype
    return torch.promote_types(dtype, torch.float32)


def score_values(weight: torch.Tensor) -> torch.Tensor:
    """``weight.detach().to(score_dtype(weight))``: the values a criterion scores, without
    autograd history; the tensor itself where neither call would change it (magnitudes score
    every layer of a model on every prune); ``|w|`` for a complex weight. Callers compute new
    tensors from it, never write into it."""
    if weight.requires_grad:
        weight = weight.detach()
    if weight.is_complex():  # (an FNO's spectral weights): a criterion scores |w|
        return weight.abs()
    dtype = score_dtype(weight)
    return weight if weight.dtype == dtype else weight.to(dtype)
