"""Importance criteria: one protocol, one registry (``get_criterion("l1")``)."""

from prunekit.importance.magnitude import (
    L1Magnitude,
    L2Magnitude,
    NormalizedMagnitude,
    RandomScore,
)

# isort: split
# data-free criteria register first, so criterion_names() lists them first

from prunekit.importance.activation import ActivationAware
from prunekit.importance.base import (
    Criterion,
    DataCriterion,
    criterion_names,
    get_criterion,
    prepare_scorers,
    register_criterion,
    require_data_free,
)
from prunekit.importance.data import CalibrationData
from prunekit.importance.gradient import (
    SNIP,
    Fisher,
    GradientMagnitude,
    Taylor,
    WeightPlusGradient,
)
from prunekit.importance.group_data import StatisticGroupCriterion, calibrated
from prunekit.importance.lamp import LAMP

__all__ = [
    "LAMP",
    "SNIP",
    "ActivationAware",
    "CalibrationData",
    "Criterion",
    "DataCriterion",
    "Fisher",
    "GradientMagnitude",
    "L1Magnitude",
    "L2Magnitude",
    "NormalizedMagnitude",
    "RandomScore",
    "StatisticGroupCriterion",
    "Taylor",
    "WeightPlusGradient",
    "calibrated",
    "criterion_names",
    "get_criterion",
    "prepare_scorers",
    "register_criterion",
    "require_data_free",
]
