"""A model folder's vocabulary as token id -> token, read from its tokenizer files (no tokenizer library)."""

from __future__ import annotations

import json
from pathlib import Path

from mergeflow.errors import TokenizerMismatch
from mergeflow.files import read_text_capped

MAX_TOKENIZER = 512 << 20


def vocabulary(model_dir: Path) -> dict[int, str] | None:
    """Token id -> token of the tokenizer in ``model_dir`` (tokenizer.json, vocab.json or vocab.txt)."""
    tj = model_dir / "tokenizer.json"
    try:
        if tj.is_file():
            data = json.loads(read_text_capped(tj, "tokenizer file", MAX_TOKENIZER))
            vocab = (data.get("model") or {}).get("vocab")
            out: dict[int, str] = {}
            if isinstance(vocab, dict):
                out = {int(i): str(t) for t, i in vocab.items()}
            elif isinstance(vocab, list):  # Unigram: [[piece, score], ...]
                out = {i: str(entry[0]) for i, entry in enumerate(vocab)}
            for tok in data.get("added_tokens") or []:
                out[int(tok["id"])] = str(tok["content"])
            return out
        vj = model_dir / "vocab.json"
        if vj.is_file():
            return {
                int(i): str(t)
                for t, i in json.loads(read_text_capped(vj, "tokenizer file", MAX_TOKENIZER)).items()
            }
        vt = model_dir / "vocab.txt"
        if vt.is_file():
            return dict(enumerate(read_text_capped(vt, "tokenizer file", MAX_TOKENIZER).splitlines()))
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise TokenizerMismatch(f"{model_dir}: unreadable tokenizer files ({exc})") from None
    return None
