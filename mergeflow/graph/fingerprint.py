"""What must not change for ``--resume`` to continue an interrupted run (see ``mergeflow.io.journal``)."""

from __future__ import annotations

import hashlib
from typing import Any

import mergeflow
from mergeflow.io.journal import fingerprint


def run_fingerprint(prep: Any) -> str:
    """What must not change for a resumed run to continue an interrupted one."""
    parts = [mergeflow.__version__, prep.recipe.model_dump_json(), str(prep.recipe_text)]
    for name, reader in sorted(prep.readers.items()):
        for file in sorted({t.file for t in reader.tensors.values()} | set(reader.extra_files)):
            parts.append(f"{name}:{reader.file_identity(file)}")
    for lay in prep.plan.layouts:
        parts.append(lay.filename + ":" + hashlib.sha256(lay.header).hexdigest())
    return fingerprint(parts)
