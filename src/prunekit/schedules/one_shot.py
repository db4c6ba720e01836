"""One-shot: prune once to ``sparsity`` at ``step`` (static pruning after training or at 0)."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.schedules.base import Schedule, check_sparsity, check_step


@dataclass(frozen=True)
class OneShot(Schedule):
    """``(True, sparsity)`` at ``step``, ``(False, sparsity)`` everywhere else."""

    name = "one_shot"
    sparsity: float
    step: int = 0

    def __post_init__(self) -> None:
        check_sparsity("sparsity", self.sparsity)
        check_step("step", self.step)

    def __call__(self, step: int) -> tuple[bool, float]:
        check_step("step", step)
        return step == self.step, self.sparsity
