"""Data-aware criteria for whole groups (channels, neurons) of the structured engine.

The structured engine hands a group criterion every member's tensors as ``WeightView``
rows ``[units, -1]`` with ``grad`` the same view of the tensor's ``.grad`` — the seam for
gradient criteria. :class:`StatisticGroupCriterion` applies an element criterion's formula
``score_with(w, G)`` to ``(view.tensor, view.grad)``, sums it over every row of a unit
(the group form: Molchanov et al. 2019 for Taylor, the diagonal OBD saliency of removing
the group for Fisher) and returns one score per member and unit.

``view.grad`` is whatever ``.grad`` holds while ``prune`` scores:

* after your own ``loss.backward()`` on a batch: the raw gradient (one-batch scores; not
  for activation, which is refused outside :func:`calibrated`);
* inside :func:`calibrated`: the criterion's statistic ``G`` over the calibration batches
  (E|g| for taylor / grad / wlg, normalised |E g| for snip, sqrt(E[g²]) for fisher, input
  RMS for activation), installed as ``.grad`` of every scored parameter and put back on
  exit (a weight that weight norm computes has no ``.grad``: its statistic, from the
  gradients its ``g`` and ``v`` get at every batch, is held aside for the block:
  :mod:`prunekit._weight_norm_grad`)::

      with calibrated(model, "taylor", data=loader, calib_batches=8):
          result = prune(model, example, ratio=0.5, importance="taylor")

Registered group criteria: grad, taylor, wlg, snip, fisher, activation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prunekit._weight_norm_grad import holding, weight_normed_tensors
from prunekit.errors import ConfigError
from prunekit.graph.dependency import Group
from prunekit.importance.activation import has_input_features
from prunekit.importance.base import DataCriterion, get_criterion
from prunekit.importance.data import CalibrationData, LossFn, as_calibration
from prunekit.importance.group import (
    GroupCriterion,
    MemberViews,
    get_group_criterion,
    register_group_criterion,
    unit_positions,
)

__all__ = ["StatisticGroupCriterion", "calibrated", "group_statistics"]


@dataclass(frozen=True)
class StatisticGroupCriterion:
    """Group version of a data-aware element criterion (see the module docstring)."""

    element: DataCriterion
    kinds: tuple[str, ...] = ("weight", "bias", "scale")
    needs_data: bool = True
    #: why a group can have no statistic even inside calibrated() (the error's first hint)
    scope: str = ""
    #: scores only the statistic calibrated() installs, never a gradient (activation)
    calibrated_only: bool = False

    @property
    def name(self) -> str:
        return self.element.name

    def member_scores(self, group: Group, members: Sequence[MemberViews], *,
                      generator: torch.Generator) -> Tensor:
        out = torch.full((len(members), group.size), float("nan"), dtype=torch.float32)
        for i, entry in enumerate(members):
            views = [v for v in entry.views if v.kind in self.kinds and v.grad is not None]
            if not views:
                continue
            if self.calibrated_only and not _ACTIVE.get(self.name):
                self._refuse_gradient(group)
            rows, pos = unit_positions(group, entry.member)
            raw = torch.zeros(group.size, dtype=torch.float32)  # (not the default dtype)
            for view in views:
                assert view.grad is not None
                per_row = self.element.score_with(view.tensor, view.grad).sum(1).float()
                raw.index_add_(0, pos, per_row[rows].cpu())
            held = torch.zeros(group.size, dtype=torch.bool)
            held[pos] = True
            out[i] = raw.masked_fill(~held, float("nan"))
        if bool(torch.isnan(out).all()):
            roots = sorted({m.name for m in group.members if m.root})
            scope = (f"{self.scope}; if you are inside calibrated(), no member of this group "
                     f"is one, so leave it out with ignore=[model.get_submodule(name) for name "
                     f"in {roots}] or prune with a criterion that needs no data. Otherwise "
                     if self.scope else "")
            raise ConfigError(
                f"importance={self.name!r} needs gradients or calibration statistics, but no "
                f"tensor of {group.describe()} has a .grad. {scope}prune inside "
                f"`with calibrated(model, {self.name!r}, data=loader): prune(...)` "
                f"(prunekit.importance.group_data), or call loss.backward() first"
            )
        return out

    def _refuse_gradient(self, group: Group) -> None:
        raise ConfigError(
            f"importance={self.name!r} scores weights by the RMS of the inputs they multiply, "
            f"which only `with calibrated(model, {self.name!r}, data=loader):` holds in .grad; "
            f"outside it, the .grad of {group.describe()} is not that statistic (a gradient "
            f"from loss.backward()?): prune inside calibrated(), or use a gradient criterion "
            f"(taylor, grad, fisher, snip, wlg)")


# criterion name -> how many calibrated() blocks hold its statistic in .grad right now
_ACTIVE: dict[str, int] = {}


def _scored_params(model: nn.Module, element: DataCriterion) -> dict[str, Tensor]:
    """The parameters whose ``.grad`` the criterion's statistic replaces."""
    if element.name == "activation":
        return {f"{path}.weight" if path else "weight": module.weight
                for path, module in model.named_modules()
                if has_input_features(module) and isinstance(module.weight, nn.Parameter)}
    params: dict[str, Tensor] = {name: p for name, p in model.named_parameters()
                                 if p.is_floating_point()}
    for name in weight_normed_tensors(model):  # the weight the engine scores
        module = model.get_submodule(name.rpartition(".")[0])
        with torch.no_grad():
            params[name] = getattr(module, name.rpartition(".")[2]).detach()
    return params


def group_statistics(model: nn.Module, importance: str, data: CalibrationData) -> dict[str, Tensor]:
    """Parameter name → the statistic ``G`` the group criterion ``importance`` scores with."""
    element = get_criterion(importance)
    if not isinstance(element, DataCriterion):
        raise ConfigError(f"importance={importance!r} does not use data; prune without "
                          f"calibrated(...)")
    params = _scored_params(model, element)
    if not params:
        raise ConfigError(f"importance={importance!r} found no parameter to score in "
                          f"{type(model).__name__}")
    return dict(element.prepare(model, params, data))


@contextmanager
def calibrated(
    model: nn.Module,
    importance: str | GroupCriterion,
    data: CalibrationData | Iterable[Any] | None,
    *,
    loss_fn: LossFn | None = None,
    calib_batches: int | None = None,
) -> Iterator[dict[str, Tensor]]:
    """Hold the statistic of ``importance`` in the ``.grad`` of ``model``'s parameters for
    the block (so that ``prune(..., importance=...)`` scores with it); every ``.grad`` is put
    back on exit. Yields the statistics by parameter name."""
    criterion = get_group_criterion(importance)
    calib = as_calibration(data, criterion=criterion.name, caller="calibrated()",
                           loss_fn=loss_fn, batches=calib_batches)
    stats = group_statistics(model, criterion.name, calib)
    # Every name, tied ones included: the activation criterion names a tied weight by the
    # layer that multiplies inputs with it (an LM head), not the embedding that owns it.
    params = dict(model.named_parameters(remove_duplicate=False))
    normed = weight_normed_tensors(model)  # their weights' statistics are held aside
    saved = {id(params[name]): (params[name], params[name].grad) for name in stats
             if name not in normed}
    _ACTIVE[criterion.name] = _ACTIVE.get(criterion.name, 0) + 1
    try:
        for name, stat in stats.items():
            if name not in normed:
                param = params[name]
                param.grad = stat.to(device=param.device, dtype=param.dtype).contiguous()
        with holding({normed[name]: stat for name, stat in stats.items() if name in normed}):
            yield stats
    finally:
        _ACTIVE[criterion.name] -= 1
        for param, grad in saved.values():
            param.grad = grad


_SCOPES = {"activation": "activation scores only the weights of layers that take the "
                         "group's units as input features (Linear and Conv1d/2d/3d, or a "
                         "type added with register_input_features)"}
for _name in ("grad", "taylor", "wlg", "snip", "fisher", "activation"):
    _element = get_criterion(_name)
    if isinstance(_element, DataCriterion):
        register_group_criterion(StatisticGroupCriterion(
            _element, scope=_SCOPES.get(_name, ""), calibrated_only=_name == "activation"))
