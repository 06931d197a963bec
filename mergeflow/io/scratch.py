"""Free disk space, and temporary folders for models a command writes and deletes again (aligned copies and
interpolated points of ``eval barrier``, grafted task models of ``eval tasks``): created where the user says
(``--scratch DIR``, else the system's temporary folder, ``$TMPDIR``), checked for room before the first byte is
written, removed on the way out whatever happens. Only the folder this module creates is ever removed."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mergeflow.errors import InputError


def existing(path: str | Path) -> Path:
    """``path`` or, when it does not exist yet, its nearest existing parent (where it would be created)."""
    where = Path(path).absolute()
    while not where.exists():
        where = where.parent
    return where


def nearest_free(path: str | Path) -> int:
    """Free bytes on the file system that holds ``path`` (or would)."""
    return shutil.disk_usage(existing(path)).free


def scratch_parent(scratch: str | Path | None) -> Path:
    """Where temporary folders go: ``scratch`` (an existing folder) or the system's temporary folder."""
    if scratch is None:
        return Path(tempfile.gettempdir())
    where = Path(scratch)
    if not where.is_dir():
        raise InputError(f"--scratch {scratch}: not an existing folder")
    return where


@contextmanager
def scratch_folder(prefix: str, need: int, scratch: str | Path | None, what: str) -> Iterator[Path]:
    """A new temporary folder under :func:`scratch_parent` for ``need`` bytes of ``what``; refused at once with
    the sizes when that disk has less free, before anything is written."""
    parent = scratch_parent(scratch)
    free = nearest_free(parent)
    if need > free:
        raise InputError(
            f"{what} needs {need / 2**30:.2f} GiB of temporary disk in {parent}, which has {free / 2**30:.2f} GiB "
            "free; pass --scratch DIR on a disk with room"
        )
    with tempfile.TemporaryDirectory(prefix=prefix, dir=parent) as tmp:
        yield Path(tmp)
