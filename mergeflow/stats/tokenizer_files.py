"""A model folder's tokenizer for evaluation and statistics, with a fallback for character-level models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergeflow.errors import InputError
from mergeflow.files import read_text_capped


def load_tokenizer(p: Path) -> Any:
    """The folder's tokenizer; a lone ``vocab.json`` of single characters (a character-level model's map,
    no merges or tokenizer config) becomes a character tokenizer."""
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(p))
    except Exception as exc:  # noqa: BLE001  (transformers raises anything on files it cannot use)
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    vocab_file = p / "vocab.json"
    try:
        vocab = json.loads(read_text_capped(vocab_file, "vocab", 64 << 20)) if vocab_file.is_file() else None
    except (ValueError, InputError):
        vocab = None
    specials = [t for t in vocab or {} if len(t) > 1]
    if (
        not isinstance(vocab, dict)
        or not vocab
        or len(specials) > 8
        or not all(isinstance(i, int) for i in vocab.values())
    ):
        raise InputError(
            f"{p}: its tokenizer files do not load ({why}); give the folder a tokenizer "
            "(tokenizer.json, or vocab.json with merges.txt)"
        )
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    unk = next(
        (t for t in specials if "unk" in t.lower()),
        specials[0] if specials else min(vocab, key=lambda t: vocab[t]),
    )
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    eos = next((t for t in specials if "end" in t.lower() or "eos" in t.lower() or t == "</s>"), None)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk, eos_token=eos)
