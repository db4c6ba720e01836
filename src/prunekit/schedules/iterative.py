"""Iterative pruning (Han et al. 2015): prune → fine-tune cycles, the same ratio each cycle.

Cycle ``k`` (0-based) starts at ``begin_step + k * cycle_steps`` and prunes the fraction
``ratio_per_step = 1 - (1 - target_sparsity) ** (1 / cycles)`` of the weights still alive,
so after it the sparsity is ``1 - (1 - target_sparsity) ** ((k + 1) / cycles)`` and after the
last cycle exactly ``target_sparsity``; the steps in between fine-tune.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.schedules.base import Schedule, check_sparsity, check_step


@dataclass(frozen=True)
class Iterative(Schedule):
    """``cycles`` pruning steps ``cycle_steps`` apart, reaching ``target_sparsity`` at the last."""

    name = "iterative"
    target_sparsity: float
    cycles: int
    cycle_steps: int
    begin_step: int = 0

    def __post_init__(self) -> None:
        check_sparsity("target_sparsity", self.target_sparsity)
        check_step("cycles", self.cycles, low=1)
        check_step("cycle_steps", self.cycle_steps, low=1)
        check_step("begin_step", self.begin_step)

    @property
    def ratio_per_step(self) -> float:
        """Fraction of the still-alive weights each cycle removes."""
        return 1.0 - (1.0 - self.target_sparsity) ** (1.0 / self.cycles)

    def sparsity_after(self, cycle: int) -> float:
        """Overall sparsity once cycle ``cycle`` (0-based) has pruned."""
        return 1.0 - (1.0 - self.target_sparsity) ** ((cycle + 1) / self.cycles)

    def __call__(self, step: int) -> tuple[bool, float]:
        check_step("step", step)
        offset = step - self.begin_step
        if offset < 0:
            return False, 0.0
        cycle = min(offset // self.cycle_steps, self.cycles - 1)
        prune_now = offset % self.cycle_steps == 0 and offset // self.cycle_steps < self.cycles
        return prune_now, self.sparsity_after(cycle)
