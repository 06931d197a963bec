"""What must not change for ``--resume`` to continue an interrupted run (see ``mergeflow.io.journal``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import mergeflow
from mergeflow.io.journal import fingerprint


def run_fingerprint(prep: Any) -> str:
    """What must not change for a resumed run to continue an interrupted one."""
    parts = [mergeflow.__version__, prep.recipe.model_dump_json(), str(prep.recipe_text)]
    for name, reader in sorted(prep.readers.items()):
        for file in sorted({t.file for t in reader.tensors.values()} | set(reader.extra_files)):
            # size and mtime survive `cp -p` / `rsync -a` over the file; inode, ctime (which no user can
            # set) and the header bytes (tensor names, shapes, offsets and metadata) do not
            st = os.stat(file)
            parts.append(f"{name}:{file}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}:"
                         f"{header_digest(file)}")
    for lay in prep.plan.layouts:
        parts.append(lay.filename + ":" + hashlib.sha256(lay.header).hexdigest())
    return fingerprint(parts)


def header_digest(path: str | Path) -> str:
    """SHA-256 of a safetensors file's length prefix and header (other files: of their first 1 MiB)."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        size = int.from_bytes(head, "little") if str(path).endswith(".safetensors") and len(head) == 8 else 0
        body = fh.read(min(size, 100 << 20) if size else 1 << 20)
    return hashlib.sha256(head + body).hexdigest()
