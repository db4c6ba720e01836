"""One lookup table from schedule name to class; ``register_schedule`` adds your own."""

from __future__ import annotations

from typing import Any

from prunekit.errors import ConfigError
from prunekit.schedules.base import Schedule
from prunekit.schedules.constant import ConstantSparsity
from prunekit.schedules.iterative import Iterative
from prunekit.schedules.one_shot import OneShot
from prunekit.schedules.polynomial import PolynomialDecay
from prunekit.schedules.rigl import RigL


class ScheduleRegistry:
    """Name → schedule class. ``"cubic"`` is :class:`PolynomialDecay` with ``power=3``."""

    def __init__(self, classes: tuple[type[Schedule], ...]) -> None:
        self._classes: dict[str, type[Schedule]] = {c.name: c for c in classes}

    def register(self, cls: type[Schedule], *, overwrite: bool = False) -> type[Schedule]:
        if not (isinstance(cls, type) and issubclass(cls, Schedule)):
            raise TypeError(f"register expects a Schedule subclass, got {cls!r}")
        if cls.name in self._classes and not overwrite:
            raise ConfigError(
                f"a schedule named {cls.name!r} is already registered; pick another name or "
                f"pass overwrite=True"
            )
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted([*self._classes, "cubic"])

    def get(self, name: str) -> type[Schedule]:
        if name == "cubic":
            return PolynomialDecay
        if name not in self._classes:
            raise ConfigError(
                f"schedule={name!r} is not registered; choose one of: {', '.join(self.names())}"
            )
        return self._classes[name]


REGISTRY = ScheduleRegistry((ConstantSparsity, OneShot, Iterative, PolynomialDecay, RigL))


def register_schedule(cls: type[Schedule], *, overwrite: bool = False) -> type[Schedule]:
    """Add a schedule class (keyed by its ``name``); usable as a class decorator."""
    return REGISTRY.register(cls, overwrite=overwrite)


def get_schedule(name: str, **options: Any) -> Schedule:
    """Build a registered schedule by name, e.g. ``get_schedule("rigl", sparsity=0.9, ...)``."""
    if name == "cubic":
        options = {**options, "power": 3.0}
    return REGISTRY.get(name)(**options)


def from_config(config: dict[str, Any]) -> Schedule:
    """The schedule a ``to_config()`` dict describes (its ``"name"`` picks the class)."""
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ConfigError(
            f"a schedule config is a dict with a 'name' key (one of {REGISTRY.names()}), got "
            f"{config!r}"
        )
    cls = REGISTRY.get(config["name"])
    return cls.from_config({**config, "name": cls.name})
