"""A recipe's tokenizer section and chat template, resolved against the opened models (before any
weight is read) and written into the output after the weights."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

from mergeflow.errors import InputError
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe
from mergeflow.tokenizer.build import VocabMap, build_vocab
from mergeflow.tokenizer.output import save_tokenizer, set_chat_template
from mergeflow.tokenizer.templates import TEMPLATE_TOKENS, resolve_template


def recipe_tokenizer(
    recipe: Recipe, readers: Mapping[str, ModelReader]
) -> tuple[VocabMap | None, str | None]:
    """(the built output vocabulary, the chat template's text) of a recipe; None where it has none."""
    vmap = build_vocab(recipe.tokenizer, readers, recipe.base) if recipe.tokenizer is not None else None
    template = None
    if recipe.chat_template is not None:
        dirs = {m: Path(r.path) for m, r in readers.items() if Path(r.path).is_dir()}
        template = resolve_template(recipe.chat_template, dirs)
        if template is None:
            warnings.warn(
                "chat_template: auto: no model has a chat template; the output gets none", stacklevel=2
            )
        if vmap is None and recipe.output.tokenizer is False:
            raise InputError(
                "chat_template: the output has no tokenizer (output.tokenizer: false) to hold it"
            )
        if recipe.chat_template in TEMPLATE_TOKENS:
            vocab = vmap.tokenizer.get_vocab() if vmap is not None else _copied_vocab(recipe, readers)
            missing = [
                t for t in TEMPLATE_TOKENS[recipe.chat_template] if vocab is not None and t not in vocab
            ]
            if missing:
                warnings.warn(
                    f"chat_template: {recipe.chat_template} writes {', '.join(missing)}, which the output "
                    "tokenizer does not have as tokens (add them under tokenizer.tokens)",
                    stacklevel=2,
                )
    return vmap, template


def _copied_vocab(recipe: Recipe, readers: Mapping[str, ModelReader]) -> dict[str, int] | None:
    from mergeflow.tokenizer.build import load_tokenizer

    tok = recipe.output.tokenizer
    name = recipe.config_source if tok is True else tok
    loaded = load_tokenizer(Path(readers[name].path), f"model '{name}'") if isinstance(name, str) else None
    return loaded.get_vocab() if loaded is not None else None


def write_tokenizer(out: Path, vmap: VocabMap | None, template: str | None, copied: list[str]) -> list[str]:
    """Write the built tokenizer and/or put the chat template in; ``copied``: tokenizer files already
    copied into ``out``. Returns the names of the tokenizer files the output now has."""
    written = save_tokenizer(vmap.tokenizer, out) if vmap is not None else list(copied)
    if template is not None:
        written = set_chat_template(out, template, written)
    return written
