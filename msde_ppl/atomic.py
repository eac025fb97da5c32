"""Atomic file output (the one owner of how the package writes files).

Every dataset, model, checkpoint, status and metrics file the package writes is first written
under a temporary name in the target folder and renamed into place once complete
(``os.replace``, atomic on POSIX), so a crash, a full disk or a kill leaves either the old
content or the new one, never half of it. Temporary files are removed on failure. They are
created with mode ``0666`` (directories ``0777``) and the kernel applies the user's umask, as
for any file ``open`` creates.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "umask", "write_text"]


def umask() -> int:
    """The process's file-creation mask."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temporary_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; once the block completes, the file written
    there replaces ``path``."""
    path = Path(path)
    tmp = _temporary_name(path)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # umask applies
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory next to ``path``; once the block completes it is renamed to
    ``path`` (which must not exist, or be an empty directory)."""
    path = Path(path)
    tmp = _temporary_name(path)
    os.mkdir(tmp, 0o777)  # umask applies
    try:
        yield tmp
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, value) -> Path:
    """Write ``value`` as strict JSON, atomically: a non-finite float (a diverged score) is
    ``null``, never ``NaN``/``Infinity``."""
    import json
    import math

    def strict(v):
        if isinstance(v, dict):
            return {k: strict(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [strict(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    return write_text(path, json.dumps(strict(value), indent=2, allow_nan=False) + "\n")
