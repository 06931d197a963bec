"""Reading user files safely: regular files only, never more than a cap.

A recipe, steps file, data file, config or index named by a user may be a FIFO (blocks forever on
open), a device such as ``/dev/zero`` (never ends), or a huge sparse file. Each is opened without
blocking, checked to be a regular file, and read with its size cap enforced while reading, so none
can hang a command or exhaust memory. Errors name the file and what it is.
"""

from __future__ import annotations

import os
import stat

from mergeflow.errors import InputError

KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a directory",
}


def what_it_is(mode: int) -> str:
    return KINDS.get(stat.S_IFMT(mode), "not a regular file")


def check_regular(path: str | os.PathLike[str], what: str) -> os.stat_result:
    """``os.stat`` of ``path`` (links followed), refusing anything but an existing regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{what} {os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {os.fspath(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {os.fspath(path)} is {what_it_is(st.st_mode)}; give a regular file")
    return st


def read_capped(path: str | os.PathLike[str], what: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, refusing it (by name) past ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of blocking
    except FileNotFoundError:
        raise InputError(f"{what} {os.fspath(path)} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} {os.fspath(path)}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {os.fspath(path)} is {what_it_is(st.st_mode)}; give a regular file")
        if st.st_size > max_bytes:
            raise InputError(f"{what} {os.fspath(path)} is larger than {_size(max_bytes)}")
        data = fh.read(max_bytes + 1)  # the file may grow while read: the cap holds all the same
    if len(data) > max_bytes:
        raise InputError(f"{what} {os.fspath(path)} is larger than {_size(max_bytes)}")
    return data


def read_text_capped(path: str | os.PathLike[str], what: str, max_bytes: int) -> str:
    data = read_capped(path, what, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{what} {os.fspath(path)} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"
