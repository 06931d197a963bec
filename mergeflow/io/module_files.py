"""Files a sentence-transformers model keeps beside its transformer weights, copied to the output.

``modules.json`` lists the model's modules; the first is the transformer (the merged weights), the
others live in folders such as ``1_Pooling/`` or ``2_Normalize/`` holding small configs. Only regular
files that are not weights are copied, through no link that leaves the source (see ``is_inside``).
A module folder that holds weights of its own (``2_Dense/``) is not merged: it is named in the
returned ``skipped`` list so the caller can say so.
"""

from __future__ import annotations

import json
from pathlib import Path

from mergeflow.files import read_text_capped
from mergeflow.io.ownership import copy_new
from mergeflow.io.reader import is_inside

TOP = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".ckpt", ".gguf")


def module_folders(src: Path) -> list[str]:
    """The module folders ``modules.json`` names (plain relative names only; the transformer's "" excluded)."""
    try:
        modules = json.loads(read_text_capped(src / "modules.json", "modules.json of", 1 << 20))
    except Exception:  # noqa: BLE001  (a malformed or unreadable file just copies nothing more)
        return []
    out = []
    for m in modules if isinstance(modules, list) else []:
        path = m.get("path") if isinstance(m, dict) else None
        if (
            isinstance(path, str)
            and path
            and "/" not in path
            and "\\" not in path
            and path not in (".", "..")
        ):
            out.append(path)
    return out


def copy_module_files(out: Path, src: Path) -> tuple[list[str], list[str]]:
    """Copy the sentence-transformers files of ``src`` into ``out``: (names written, folders as ``NAME/``;
    module folders whose weights were left out, as mergeflow did not merge them)."""
    copied: list[str] = []
    skipped: list[str] = []
    for name in TOP:
        if (src / name).is_file() and is_inside(src, src / name):
            copy_new(src / name, out / name)
            copied.append(name)
    if "modules.json" not in copied:
        return copied, skipped
    for folder in module_folders(src):
        d = src / folder
        if d.is_symlink() or not d.is_dir():
            continue
        files = sorted(f for f in d.iterdir() if f.is_file() and is_inside(src, f))
        if any(f.suffix in WEIGHTS for f in files):
            skipped.append(folder)
        (out / folder).mkdir(exist_ok=True)
        copied.append(f"{folder}/")  # listed as a folder too: it may hold nothing mergeflow copied
        for f in files:
            if f.suffix not in WEIGHTS:
                copy_new(f, out / folder / f.name)
                copied.append(f"{folder}/{f.name}")
    return copied, skipped
