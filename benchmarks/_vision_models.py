"""torchvision and timm for the benchmarks, with torch pinned at 2.13.0.

The torchvision wheels these machines can install are built against another torch, so their
compiled ops library (``torchvision/_C.so``) does not load, and ``import torchvision`` stops
at its fake registrations for ``nms``/``qnms``. Classification models use no compiled op:
defining those two schemas (no kernels) lets torchvision, and timm on top of it, import.
Benchmark-only; prunekit never imports either. Install them in a venv of their own: in the
dev venv, ``import transformers`` (which imports torchvision when it is installed, without
this shim) would fail and take the Hugging Face tests with it.

    python3 -m venv .venv-vision
    .venv-vision/bin/pip install -c constraints.txt torch==2.13.0
    .venv-vision/bin/pip install -c constraints.txt -e . torchvision==0.28.0 timm torch-pruning
    .venv-vision/bin/python benchmarks/structured_timm.py   # or structured_torchvision.py

With torchvision's compiled ops (``roi_align``, ``nms``: the R-CNN detectors of
structured_libraries.py), take the pair the machine's env notes give instead (on x86_64 a
5.5 GB CUDA build, run on the CPU): ``pip install torch==2.14.1 torchvision==0.29.1``, then the
rest without the constraints file. The fifteenth session's sweeps ran in such a venv.
"""

from __future__ import annotations

from types import ModuleType

import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def import_vision() -> tuple[ModuleType, ModuleType]:
    """``(torchvision.models, timm)``; where torchvision's compiled library did not load,
    the op schemas are defined and the import retried."""
    global _library
    import sys

    try:
        import torchvision.models
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc) or _library is not None:
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]  # the half-imported package
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _library.define(schema)
        import torchvision.models
    import timm

    return torchvision.models, timm
