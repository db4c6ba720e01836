"""Importance criteria: one protocol, one registry (``get_criterion("l1")``)."""

from prunekit.importance.base import (
    Criterion,
    criterion_names,
    get_criterion,
    register_criterion,
    require_data_free,
)
from prunekit.importance.magnitude import (
    L1Magnitude,
    L2Magnitude,
    NormalizedMagnitude,
    RandomScore,
)

__all__ = [
    "Criterion",
    "L1Magnitude",
    "L2Magnitude",
    "NormalizedMagnitude",
    "RandomScore",
    "criterion_names",
    "get_criterion",
    "register_criterion",
    "require_data_free",
]
