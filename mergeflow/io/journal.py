"""The resume journal of an output directory under construction.

Each completed shard is recorded with its size and CRC-32 (computed while it was written) under a
fingerprint of the run: mergeflow's version, the validated recipe, every input file's size,
modification and change times, inode and header bytes, and the output layout. ``--resume`` trusts a shard only if the fingerprint is
the same and the file on disk still has the recorded size and checksum; anything else is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import zlib
from collections.abc import Iterable
from pathlib import Path

from mergeflow.io.ownership import write_new

NAME = ".mergeflow-journal.json"
MAX_BYTES = 64 << 20


def fingerprint(parts: Iterable[str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


def file_crc(path: Path) -> int:
    crc = 0
    with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
        while chunk := fh.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    return crc


class Journal:
    def __init__(self, directory: Path, fp: str) -> None:
        self.path = directory / NAME
        self.fp = fp
        self.shards: dict[str, dict[str, int]] = {}

    def load_verified(self) -> set[str]:
        """Shard files of a previous run of the same plan that are intact on disk."""
        try:
            if not stat.S_ISREG(os.lstat(self.path).st_mode) or os.lstat(self.path).st_size > MAX_BYTES:
                return set()  # a link or special file planted in the partial directory is never read
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return set()
        if (
            not isinstance(data, dict)
            or data.get("fingerprint") != self.fp
            or not isinstance(data.get("shards"), dict)
        ):
            return set()
        ok = set()
        for name, rec in data["shards"].items():
            p = self.path.parent / name
            try:
                st = os.lstat(p)
                if stat.S_ISREG(st.st_mode) and st.st_size == rec["size"] and file_crc(p) == rec["crc32"]:
                    ok.add(name)
                    self.shards[name] = rec
            except (OSError, KeyError, TypeError):
                continue
        return ok

    def record(self, name: str, size: int, crc: int) -> None:
        self.shards[name] = {"size": size, "crc32": crc}
        tmp = self.path.with_suffix(".tmp")
        write_new(tmp, json.dumps({"fingerprint": self.fp, "shards": self.shards}))
        os.replace(tmp, self.path)  # atomic: a kill leaves the old or the new journal, never half of one
