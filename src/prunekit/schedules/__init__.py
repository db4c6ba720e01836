"""Pruning schedules: pure ``step -> (should_prune, sparsity)`` objects (see ``base``)."""

from prunekit.schedules.base import Schedule
from prunekit.schedules.constant import ConstantSparsity
from prunekit.schedules.iterative import Iterative
from prunekit.schedules.one_shot import OneShot
from prunekit.schedules.polynomial import PolynomialDecay, cubic
from prunekit.schedules.registry import from_config, get_schedule, register_schedule
from prunekit.schedules.rigl import RigL

__all__ = [
    "ConstantSparsity",
    "Iterative",
    "OneShot",
    "PolynomialDecay",
    "RigL",
    "Schedule",
    "cubic",
    "from_config",
    "get_schedule",
    "register_schedule",
]
