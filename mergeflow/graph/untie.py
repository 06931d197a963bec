"""``orthogonal: {untie: true}``: every tied causal LM of the recipe is read untied (``mergeflow.io.untie``),
so that an orthogonal map of the stream can fold the final norm into a head of its own."""

from __future__ import annotations

from collections.abc import MutableMapping

from mergeflow.arch.families import VOCAB_RE, family_for
from mergeflow.io.reader import ModelReader
from mergeflow.io.untie import UntiedReader, tied_head
from mergeflow.recipe.schema import Recipe


def wants_untie(recipe: Recipe) -> bool:
    return any(s.params.get("untie") for s in recipe.align or ())  # a parameter of stream-mapping steps


def untie_models(recipe: Recipe, readers: MutableMapping[str, ModelReader]) -> bool:
    """Wrap each tied model's reader (in place) when the recipe asks; whether any model was tied."""
    if not wants_untie(recipe):
        return False
    for name, r in list(readers.items()):
        fam = family_for(r.model_type)
        if isinstance(r, UntiedReader) or fam is None:
            continue
        embeds = [n for n in r.tensors if VOCAB_RE.search(n) and any(n.endswith(s) for s, _ax in fam.stream)]
        embed = tied_head(r, embeds)
        if embed is not None:
            readers[name] = UntiedReader(r, embed)
    return any(isinstance(r, UntiedReader) for r in readers.values())
