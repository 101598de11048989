"""Atomic file writes: a reader (a resumed run, a clone, ``git status``) sees the old file or the new, never half.

Every writer of results goes through :func:`atomic_path`: it writes into a temporary file beside the target (the
same directory, so :func:`os.replace` is a rename on one file system) and renames it over the target only when the
write finished. The temporary name carries the process id because array tasks of one grid may write the same
shared file at once. Folders (checkpoints) are swapped in :mod:`ddpo_study.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces ``path`` when the block ends without an error; on an error
    the temporary file is removed and ``path`` is left as it was. ``suffix`` ends the temporary name, for writers
    that add their own (``np.savez`` appends ``.npz`` to a name without it)."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_if_changed(path: str | Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically unless it already holds exactly these bytes (an unchanged file keeps
    its mtime, so re-rendering a figure does not touch it); True if it wrote."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return False
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return True
