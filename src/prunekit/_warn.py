"""Where the user's code is: the nearest frame outside torch and prunekit (prunekit's
warnings point there), and the innermost such frame an exception passed through."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType, TracebackType

import torch

__all__ = ["NOT_USER_CODE", "first_user_frame", "last_user_traceback", "warn"]

# torch's own frames (module call machinery, torch-function dispatch) and prunekit's (the
# package folder: not the folder that holds it, site-packages in an installed layout)
NOT_USER_CODE = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(__file__) + os.sep)


def first_user_frame(frame: FrameType | None) -> tuple[FrameType | None, int]:
    """The first frame outside torch and prunekit from ``frame`` outwards, and how many
    frames it passed over to get there."""
    passed = 0
    while frame is not None and frame.f_code.co_filename.startswith(NOT_USER_CODE):
        frame, passed = frame.f_back, passed + 1
    return frame, passed


def last_user_traceback(exc: BaseException) -> TracebackType | None:
    """The innermost entry of ``exc``'s traceback in a frame outside torch and prunekit (the
    user's line that raised it, or called what raised it), or None."""
    found = None
    tb = exc.__traceback__
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(NOT_USER_CODE):
            found = tb
        tb = tb.tb_next
    return found


def warn(message: str) -> None:
    """``warnings.warn(message)`` attributed to the nearest frame outside torch and
    prunekit: the user's call to ``prune`` (or the line of their forward that a trace
    warning is about), wherever in prunekit it is raised. A fixed ``stacklevel`` pointed
    into prunekit whenever a warning was raised one call deeper than its author counted."""
    _, passed = first_user_frame(sys._getframe(1))
    warnings.warn(message, UserWarning, stacklevel=2 + passed)
