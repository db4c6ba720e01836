"""Constant sparsity (tfmot's ``ConstantSparsity``): one target, re-applied every ``frequency``."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.errors import ConfigError
from prunekit.schedules.base import Schedule, check_sparsity, check_step


def in_range(step: int, begin_step: int, end_step: int, frequency: int) -> bool:
    """tfmot's rule: prune at ``begin_step + k * frequency`` up to ``end_step`` (-1: no end)."""
    inside = step >= begin_step and (end_step == -1 or step <= end_step)
    return inside and (step - begin_step) % frequency == 0


def check_range(begin_step: object, end_step: object, frequency: object) -> None:
    begin = check_step("begin_step", begin_step)
    end = check_step("end_step", end_step, low=-1)
    check_step("frequency", frequency, low=1)
    if end != -1 and end < begin:
        raise ConfigError(
            f"end_step={end_step} is before begin_step={begin_step}; pass end_step >= "
            f"begin_step, or -1 for no end"
        )


@dataclass(frozen=True)
class ConstantSparsity(Schedule):
    """Keep ``target_sparsity`` from ``begin_step`` on, re-pruning every ``frequency`` steps."""

    name = "constant"
    target_sparsity: float
    begin_step: int = 0
    end_step: int = -1
    frequency: int = 100

    def __post_init__(self) -> None:
        check_sparsity("target_sparsity", self.target_sparsity)
        check_range(self.begin_step, self.end_step, self.frequency)

    def __call__(self, step: int) -> tuple[bool, float]:
        check_step("step", step)
        return in_range(step, self.begin_step, self.end_step, self.frequency), self.target_sparsity
