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

from collections.abc import Callable, Sequence

__all__ = ["breaking_groups"]


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
