"""One place that turns prunekit's warnings into ones that point at the user's code."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

import torch

__all__ = ["NOT_USER_CODE", "warn"]

# torch's own frames (module call machinery, torch-function dispatch) and prunekit's (the
# package folder: not the folder that holds it, site-packages in an installed layout)
NOT_USER_CODE = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def warn(message: str) -> None:
    """``warnings.warn(message)`` attributed to the nearest frame outside torch and
    prunekit: the user's call to ``prune`` (or the line of their forward that a trace
    warning is about), wherever in prunekit it is raised. A fixed ``stacklevel`` pointed
    into prunekit whenever a warning was raised one call deeper than its author counted."""
    level = 2
    here: FrameType | None = sys._getframe(1)
    while here is not None and here.f_code.co_filename.startswith(NOT_USER_CODE):
        here, level = here.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
