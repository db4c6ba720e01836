"""Exceptions prunekit raises; every message names the argument, the bad value and the fix."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import NoReturn


class PrunekitError(Exception):
    """Base class for all prunekit errors."""


class ConfigError(PrunekitError, ValueError):
    """An argument has a value outside what is allowed."""


class NothingToPruneError(PrunekitError, ValueError):
    """The selection of layers/parameters to prune is empty."""


class NonFiniteWeightsError(PrunekitError, ValueError):
    """A parameter holds NaN or inf, so magnitudes cannot be ranked."""


class UnsupportedOpError(PrunekitError, RuntimeError):
    """The dependency tracer met an operation it cannot map channels through."""


class DataError(PrunekitError, ValueError):
    """A data set or data directory is missing or malformed."""


class MissingDependencyError(PrunekitError, ImportError):
    """An optional extra is needed for this feature."""


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``; otherwise raise a ConfigError listing them."""
    allowed = list(choices)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not supported; choose one of: {', '.join(allowed)}"
        )
    return value


def check_fraction(name: str, value: object, *, allow_one: bool = False,
                   meaning: str = "removes") -> float:
    """Check that ``value`` is a real number (NumPy's too) in [0, 1) (or [0, 1] with
    ``allow_one``). ``meaning``: what the fraction does, for the example in the error
    ("removes": a ratio or sparsity, "keeps": min_keep or a target; "": no example)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__} {value!r}")
    number = float(value)
    upper_ok = number <= 1.0 if allow_one else number < 1.0
    if not (math.isfinite(number) and number >= 0.0 and upper_ok):
        bound = "[0, 1]" if allow_one else "[0, 1)"
        example = f" (e.g. {name}=0.9 {meaning} 90 %)" if meaning else ""
        raise ConfigError(f"{name}={value!r} is out of range; it must lie in {bound}{example}")
    return number


def require(module: str, extra: str) -> NoReturn:
    """Raise MissingDependencyError naming the pip extra that provides ``module``."""
    raise MissingDependencyError(
        f"this feature needs the optional package {module!r}; "
        f"install it with: pip install 'prunekit[{extra}]'"
    )


class PruneValidationError(PrunekitError, RuntimeError):
    """A pruned model failed its forward pass or changed its output shapes; the user's
    model was left untouched."""
