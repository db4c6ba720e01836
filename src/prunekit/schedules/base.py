"""The schedule seam: a pure, validated ``step -> (should_prune, sparsity)`` callable.

A schedule never touches a model. The :class:`~prunekit.train.callbacks.Pruner` asks it, at
every optimizer step, whether to prune and to which sparsity (fraction of all entries of the
selected tensors, or of the channels of every group for structured pruning), and — for
dynamic sparse training — which fraction of the active weights to drop and regrow.
Schedules are frozen dataclasses, so ``to_config`` / ``from_config`` round-trip every field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, TypeVar

from prunekit.errors import ConfigError, check_fraction

S = TypeVar("S", bound="Schedule")


def check_step(name: str, value: object, *, low: int = 0) -> int:
    """``value`` as an int step >= ``low``; TypeError / ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int step, got {type(value).__name__} {value!r}")
    if value < low:
        raise ConfigError(f"{name}={value!r} is out of range; it must be an int >= {low}")
    return value


def check_positive(name: str, value: object) -> float:
    """``value`` as a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a positive number, got {type(value).__name__} {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name}={value!r} is out of range; it must be finite and > 0")
    return float(value)


@dataclass(frozen=True)
class Schedule:
    """Base of every schedule: ``schedule(step) -> (should_prune, sparsity)``.

    Subclasses are frozen dataclasses with a unique class attribute ``name`` (the registry
    key) and validate their fields in ``__post_init__``.
    """

    name: ClassVar[str] = "schedule"
    #: True for dynamic sparse training (the mask changes at fixed sparsity)
    regrows: ClassVar[bool] = False

    def __call__(self, step: int) -> tuple[bool, float]:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(step)")

    def update_fraction(self, step: int) -> float:
        """Fraction of active weights to drop and regrow at ``step`` (dynamic sparsity only)."""
        check_step("step", step)
        return 0.0

    def to_config(self) -> dict[str, Any]:
        """Every field plus ``"name"``; :func:`~prunekit.schedules.from_config` inverts it."""
        return {"name": self.name, **asdict(self)}

    @classmethod
    def from_config(cls: type[S], config: dict[str, Any]) -> S:
        """Rebuild the schedule ``to_config`` described; unknown keys are an error."""
        if not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        options = dict(config)
        name = options.pop("name", cls.name)
        if name != cls.name:
            raise ConfigError(f"config name={name!r} does not describe a {cls.name!r} schedule")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ConfigError(
                f"config keys {unknown} are not options of {cls.name!r}; allowed: "
                f"{', '.join(sorted(allowed))}"
            )
        return cls(**options)


def check_sparsity(name: str, value: object) -> float:
    """A sparsity in [0, 1)."""
    return check_fraction(name, value)
