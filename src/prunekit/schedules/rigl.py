"""RigL (Evci et al. 2020): dynamic sparse training at fixed sparsity with regrowth.

At ``begin_step`` the weights are pruned to ``sparsity`` (per layer). Every
``update_every`` steps (ΔT) before ``end_step`` (T_end), each layer drops the fraction
``α_t`` of its active weights with the smallest magnitude and regrows as many inactive
weights with the largest dense-gradient magnitude (initialised to 0), where

    α_t = α / 2 · (1 + cos(π · (t - begin_step) / (end_step - begin_step)))

(eq. 1 of the paper, with time counted from ``begin_step``). The number of active weights
per layer never changes. The :class:`~prunekit.train.callbacks.Pruner` does the swapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunekit.errors import ConfigError, check_fraction
from prunekit.schedules.base import Schedule, check_sparsity, check_step


@dataclass(frozen=True)
class RigL(Schedule):
    """Fixed ``sparsity``; drop/regrow ``update_fraction(step)`` every ``update_every`` steps."""

    name = "rigl"
    regrows = True
    sparsity: float
    end_step: int
    update_every: int = 100
    alpha: float = 0.3
    begin_step: int = 0

    def __post_init__(self) -> None:
        check_sparsity("sparsity", self.sparsity)
        end = check_step("end_step", self.end_step)
        check_step("update_every", self.update_every, low=1)
        check_fraction("alpha", self.alpha, allow_one=True, meaning="")
        begin = check_step("begin_step", self.begin_step)
        if end <= begin:
            raise ConfigError(
                f"end_step={end} must be greater than begin_step={begin}; RigL stops "
                f"updating the mask at end_step (e.g. 75 % of the training steps)"
            )

    def __call__(self, step: int) -> tuple[bool, float]:
        check_step("step", step)
        return step == self.begin_step, self.sparsity

    def update_fraction(self, step: int) -> float:
        """``α_t`` on an update step (``begin_step < t < end_step``, every ΔT), else 0."""
        check_step("step", step)
        offset = step - self.begin_step
        if offset <= 0 or step >= self.end_step or offset % self.update_every:
            return 0.0
        progress = offset / (self.end_step - self.begin_step)
        return self.alpha / 2.0 * (1.0 + math.cos(math.pi * progress))
