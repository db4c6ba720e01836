"""Gradual pruning with polynomial decay (Zhu & Gupta 2017; tfmot's ``PolynomialDecay``).

    p   = clip((t - begin_step) / (end_step - begin_step), 0, 1)
    s_t = s_f + (s_i - s_f) * (1 - p) ** power

pruning every ``frequency`` steps from ``begin_step`` through ``end_step`` (eq. 1 of the
paper is ``power=3``: :func:`cubic`). Sparsity rises fast early, when redundant weights are
many, and slowly near the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.errors import ConfigError
from prunekit.schedules.base import Schedule, check_positive, check_sparsity, check_step
from prunekit.schedules.constant import in_range


@dataclass(frozen=True)
class PolynomialDecay(Schedule):
    """Sparsity from ``initial_sparsity`` to ``final_sparsity`` between begin and end step."""

    name = "polynomial"
    initial_sparsity: float
    final_sparsity: float
    begin_step: int
    end_step: int
    power: float = 3.0
    frequency: int = 100

    def __post_init__(self) -> None:
        check_sparsity("initial_sparsity", self.initial_sparsity)
        check_sparsity("final_sparsity", self.final_sparsity)
        begin = check_step("begin_step", self.begin_step)
        end = check_step("end_step", self.end_step)
        if end <= begin:
            raise ConfigError(
                f"end_step={end} must be greater than begin_step={begin} (the decay needs at "
                f"least one step)"
            )
        check_positive("power", self.power)
        check_step("frequency", self.frequency, low=1)

    def sparsity(self, step: int) -> float:
        """``s_t`` of the formula above (without the frequency rule)."""
        p = min(1.0, max(0.0, (step - self.begin_step) / (self.end_step - self.begin_step)))
        decay = (1.0 - p) ** self.power
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * decay

    def __call__(self, step: int) -> tuple[bool, float]:
        check_step("step", step)
        # the end step always prunes, so the final sparsity is reached exactly
        prune_now = in_range(step, self.begin_step, self.end_step, self.frequency)
        return prune_now or step == self.end_step, self.sparsity(step)


def cubic(
    initial_sparsity: float,
    final_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
) -> PolynomialDecay:
    """Zhu & Gupta's cubic schedule: :class:`PolynomialDecay` with ``power=3``."""
    return PolynomialDecay(initial_sparsity, final_sparsity, begin_step, end_step, 3.0, frequency)
