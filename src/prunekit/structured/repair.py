"""Which dependency groups break the pruned model's forward check, found by bisection.

The trace sees the sizes code writes as plain ints, so a width read from another tensor's
shape (``reshape(B, N, C)`` with ``C`` the block's input width after heads shrank), a tuple
attribute (``self.scale.view(self.shape)``) or a tensor cached from an earlier call can
still go stale when channels are cut; the forward check catches it. Cutting the groups one
subset at a time finds those that break it: the first group whose cut, added to the groups
already known to pass, fails (a binary search over the rest), then the same after it, so
``k`` bad groups of ``G`` cost about ``k · log2 G`` checks — run only when the first one
failed.
"""

from __future__ import annotations

import linecache
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from prunekit._warn import last_user_traceback, warn
from prunekit.errors import PruneValidationError
from prunekit.graph.dependency import DependencyGraph

__all__ = ["CheckFailed", "breaking_groups", "without_breaking_groups"]


class CheckFailed(Exception):
    """The pruned model's forward check failed: ``message`` says how (``cause``: the error)."""

    def __init__(self, message: str, cause: BaseException | None) -> None:
        super().__init__(message)
        self.message, self.cause = message, cause

    @classmethod
    def raised(cls, exc: BaseException, mode: str = "") -> CheckFailed:
        """The check failed because the pruned model raised ``exc`` (``mode``: " in
        training mode" where that pass raised it)."""
        return cls(f"the pruned model failed its forward check{mode} "
                   f"({type(exc).__name__}: {exc})", exc)


def breaking_groups(candidates: Sequence[int], passes: Callable[[list[int]], bool]) -> list[int]:
    """The groups among ``candidates`` (in order) whose cut breaks the check: ``passes(cut)``
    tells whether cutting exactly the groups ``cut`` passes. Each group found fails together
    with the groups before it that passed; the rest are checked with it left whole."""
    good: list[int] = []
    bad: list[int] = []
    remaining = list(candidates)
    while remaining:
        if passes(good + remaining):
            break
        low, high = 0, len(remaining) - 1  # good + remaining[:low] passes, [:high + 1] fails
        while low < high:
            mid = (low + high) // 2
            if passes(good + remaining[:mid + 1]):
                low = mid + 1
            else:
                high = mid
        good += remaining[:low]
        bad.append(remaining[low])
        remaining = remaining[low + 1:]
    return bad


def without_breaking_groups(
        graph: DependencyGraph, masks: list[torch.Tensor], failed: CheckFailed, *,
        strict: bool, check: Callable[[list[torch.Tensor]], Any],
) -> tuple[DependencyGraph, list[torch.Tensor]]:
    """After a failed check (``check(masks)`` cuts a copy and raises CheckFailed): find the
    groups whose cut breaks it. With ``strict`` raise PruneValidationError naming them; else
    keep them whole, with a warning and the reason in the coverage report, and return the
    graph and masks of the rest."""
    whole = [torch.ones_like(m) for m in masks]

    def passes(selected: list[int]) -> bool:
        trial = list(whole)
        for i in selected:
            trial[i] = masks[i]
        try:
            check(trial)
        except CheckFailed:
            return False
        return True

    if not passes([]):  # the copy fails with nothing cut: no group is to blame
        raise PruneValidationError(
            f"{failed.message}, and so does a copy of the model with nothing cut: the copy "
            f"does not run as the model does (a forward hook or closure of yours that holds "
            f"the original model, such as one writing into self.features, or state kept "
            f"outside the model); your model is unchanged. Register such hooks inside "
            f"forward, or on the copy after pruning") from failed.cause
    bad = breaking_groups([i for i, m in enumerate(masks) if not bool(m.all())], passes)
    asserted = _failed_assert(failed.cause)
    if not bad or strict:
        named = "; ".join(graph.groups[i].describe() for i in bad[:3])
        why = (f"an assert of the model's code fails on the widths left ({asserted}): keep "
               f"widths it accepts (round_to=...)" if asserted else
               "the code sizes something by these channels in a way the trace cannot see: a "
               "width read from another tensor's shape, a tuple attribute, a cached tensor, a "
               "hook of yours that holds a tensor of the model, a @torch.jit.script function")
        hint = (f" Cutting {named} breaks it ({why}); pass strict=False to keep them "
                f"whole and prune the rest, or add their layers to ignore=..." if bad else
                " Add the layer named in the error to ignore=..., or report the architecture")
        raise PruneValidationError(f"{failed.message}; your model is unchanged.{hint}") \
            from failed.cause
    reason = f"cutting it broke the pruned model's forward check ({failed.message}" + (
        f": an assert of the model's code, {asserted})" if asserted else ")")
    warn(f"kept whole: {'; '.join(graph.groups[i].describe() for i in bad)}: "
         f"{reason}")
    blocked = dict(graph.blocked)
    for i in bad:
        blocked.update(dict.fromkeys(graph.groups[i].units.tolist(), reason))
    dropped = set(bad)
    kept = [i for i in range(len(graph.groups)) if i not in dropped]
    graph = replace(graph, groups=tuple(graph.groups[i] for i in kept), blocked=blocked)
    return graph, [masks[i] for i in kept]


def _failed_assert(cause: BaseException | None) -> str | None:
    """``file:line: source`` of the user's ``assert`` that raised ``cause`` (megvii
    ShuffleNetV2's ``assert num_channels % 4 == 0`` in its channel shuffle), or None."""
    raised = last_user_traceback(cause) if isinstance(cause, AssertionError) else None
    if raised is None:
        return None
    filename = raised.tb_frame.f_code.co_filename
    line = linecache.getline(filename, raised.tb_lineno).strip()
    return f"{os.path.basename(filename)}:{raised.tb_lineno}: {line}"
