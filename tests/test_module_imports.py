"""Every module of prunekit imports on its own, first: an import cycle (``importance`` ↔
``structured.adapters`` once) shows only when the cycle's other end is imported first, which
the test suite's own order may never do."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import prunekit


def _modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(prunekit.__path__, "prunekit."))


def test_every_module_imports_first() -> None:
    saved = {name: module for name, module in sys.modules.items()
             if name == "prunekit" or name.startswith("prunekit.")}
    failed = []
    try:
        for name in _modules():
            for loaded in [n for n in sys.modules if n == "prunekit" or n.startswith("prunekit.")]:
                del sys.modules[loaded]
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failed.append(f"{name}: {exc}")
    finally:
        for loaded in [n for n in sys.modules if n == "prunekit" or n.startswith("prunekit.")]:
            del sys.modules[loaded]
        sys.modules.update(saved)
    assert len(_modules()) > 100 and not failed, failed
