"""Writing the output's tokenizer: a built one (tokenizer section) and the chat template."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mergeflow.io.names import TOKENIZER_FILES
from mergeflow.io.ownership import write_new


def save_tokenizer(tokenizer: Any, out: Path) -> list[str]:
    """Save a transformers tokenizer into the (partial) output ``out``; only tokenizer file names are
    kept, each written as a new file. Returns the names written."""
    written = []
    with tempfile.TemporaryDirectory(prefix=".tokenizer-", dir=out) as scratch:
        tokenizer.save_pretrained(scratch)
        for p in sorted(Path(scratch).iterdir()):
            if p.name in TOKENIZER_FILES and p.is_file():
                write_new(out / p.name, p.read_bytes())
                written.append(p.name)
    return written


def set_chat_template(out: Path, template: str, written: list[str]) -> list[str]:
    """Put ``template`` into the output's tokenizer_config.json (a file this run wrote), replacing a
    chat_template.jinja it wrote. Returns the names now written."""
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if "tokenizer_config.json" in written else {}
    cfg["chat_template"] = template
    if "tokenizer_config.json" in written:
        cfg_path.unlink()  # our own file, rewritten
    write_new(cfg_path, json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    names = [n for n in written if n != "chat_template.jinja"]
    if "chat_template.jinja" in written:
        (out / "chat_template.jinja").unlink()  # transformers would prefer it over the config's
    return names if "tokenizer_config.json" in names else [*names, "tokenizer_config.json"]
