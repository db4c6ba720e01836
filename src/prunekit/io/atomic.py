"""Atomic file writes: write a temporary sibling, fsync, then rename over the target."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunekit.errors import PrunekitError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success it is fsynced and renamed onto
    ``target``, on error it is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


class ReplaceRefusedError(PrunekitError, FileExistsError):
    """The target of a directory write is a file, or a directory of some other kind."""


def check_replaceable(target: Path, marker: str, what: str, argument: str = "path") -> None:
    """Refuse to write directory ``target`` over a file or over a non-empty directory that
    lacks ``marker`` (the file that says it is a ``what``, which may be replaced)."""
    if target.exists() and not target.is_dir():
        raise ReplaceRefusedError(
            f"{argument}={str(target)!r} is a file; a {what} is a directory — pass a new "
            "directory path"
        )
    if target.is_dir() and any(target.iterdir()) and not (target / marker).is_file():
        raise ReplaceRefusedError(
            f"{argument}={str(target)!r} is a non-empty directory that is not a {what}; "
            "refusing to replace it — pass a new or empty directory path"
        )


class AtomicDirectory:
    """Context manager: write into a temporary sibling, then swap it in under ``target``.

    An existing ``target`` is renamed aside to ``.<name>.old-<token>`` and removed only once
    the new directory is in place; a crash in between leaves nothing under the name and the
    old checkpoint intact beside it (``load`` points to it).
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        self.tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:12]}"

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        try:
            for child in self.tmp.iterdir():
                _fsync(child)
            _fsync(self.tmp)
            self._swap_in()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def _swap_in(self) -> None:
        if not self.target.exists():
            os.rename(self.tmp, self.target)
            _fsync(self.target.parent)
            return
        backup = self.target.parent / f".{self.target.name}.old-{uuid.uuid4().hex[:12]}"
        os.rename(self.target, backup)
        try:
            os.rename(self.tmp, self.target)
        except BaseException:
            os.rename(backup, self.target)
            raise
        _fsync(self.target.parent)
        shutil.rmtree(backup, ignore_errors=True)


def _fsync(path: Path) -> None:
    """Flush a file or a directory entry list to disk (directories only where POSIX allows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories on Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
