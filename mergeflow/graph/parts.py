"""Models that differ in their heads and extras: which tensors are merged (``merge_only``), what
happens to tensors only some models have (``partial``), and names matched across checkpoints saved
with and without the family's base-model prefix (``bert.``, ``model.``, ...).

A checkpoint saved with a head stores its backbone under the prefix (``bert.encoder...``) and its head
beside it (``classifier.weight``); a bare pretrained encoder stores the backbone without it. Each
model's names are taken without the prefix (its *canonical* names), so the two match. Integer
tensors (``position_ids`` and other buffers) are never merged: copied when every model has them,
left out otherwise.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from mergeflow.errors import MissingTensor, RecipeError, ShapeMismatch
from mergeflow.graph.slices import Item
from mergeflow.io.dtypes import is_float
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.parts_schema import Keep, Patterns
from mergeflow.recipe.schema import Recipe

# model_type -> (headless class, base-model prefix) for the families users merge most, as transformers
# declares them; other types are looked up in transformers (importing a model class costs seconds)
KNOWN = {
    **{
        t: (c, "model.")
        for t, c in (
            ("llama", "LlamaModel"),
            ("mistral", "MistralModel"),
            ("mixtral", "MixtralModel"),
            ("qwen2", "Qwen2Model"),
            ("qwen3", "Qwen3Model"),
            ("gemma", "GemmaModel"),
            ("gemma2", "Gemma2Model"),
            ("phi3", "Phi3Model"),
            ("olmo2", "Olmo2Model"),
        )
    },
    "bert": ("BertModel", "bert."),
    "roberta": ("RobertaModel", "roberta."),
    "xlm-roberta": ("XLMRobertaModel", "roberta."),
    "distilbert": ("DistilBertModel", "distilbert."),
    "deberta-v2": ("DebertaV2Model", "deberta."),
    "vit": ("ViTModel", "vit."),
    "gpt2": ("GPT2Model", "transformer."),
    "electra": ("ElectraModel", "electra."),
}


@lru_cache(maxsize=64)
def headless_class(model_type: str | None) -> tuple[str, str] | None:
    """(the family's headless class name, its base-model prefix with the dot)."""
    if model_type is None:
        return None
    if model_type in KNOWN:
        return KNOWN[model_type]
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type)
    if not isinstance(name, str):
        return None
    cls = getattr(transformers, name, None)
    prefix = getattr(cls, "base_model_prefix", "") if cls is not None else ""
    return (name, prefix + ".") if prefix else None


def family_prefix(readers: Mapping[str, ModelReader]) -> str:
    """The base-model prefix of the models' family (from the first model whose config names its type)."""
    for r in readers.values():
        info = headless_class(r.model_type)
        if info is not None:
            return info[1]
    return ""


def canonical(reader: ModelReader, fallback: str = "") -> tuple[dict[str, str], set[str], bool]:
    """(canonical name -> stored name, the canonical names of the backbone, whether the checkpoint
    stores its backbone under the prefix). ``fallback``: the prefix for a checkpoint without a config."""
    info = headless_class(reader.model_type)
    prefix = info[1] if info else fallback
    prefixed = bool(prefix) and any(t.startswith(prefix) for t in reader.tensors)
    names = {(t[len(prefix) :] if prefixed and t.startswith(prefix) else t): t for t in reader.tensors}
    backbone = {c for c, t in names.items() if not prefixed or t.startswith(prefix)}
    return names, backbone, prefixed


def needs_parts(recipe: Recipe, readers: Mapping[str, ModelReader]) -> bool:
    """Whether the plain path (every model has every tensor, under one name) cannot take this recipe."""
    if recipe.merge_only != "all" or recipe.partial != "error":
        return True
    names = [set(r.tensors) for r in readers.values()]
    if all(n == names[0] for n in names):  # the same names everywhere: nothing to match across prefixes
        return False
    fallback = family_prefix(readers)
    return (
        len({canonical(r, fallback)[2] for r in readers.values()}) > 1
    )  # some store the prefix, some do not


@dataclass
class Parts:
    items: list[Item]
    left_out: list[str] = field(default_factory=list)  # tensors of no output (partial: drop, buffers)
    architectures: list[str] | None = None  # the output's class, when it is a headless backbone


def part_items(recipe: Recipe, readers: Mapping[str, ModelReader], ref: str, order: list[str]) -> Parts:
    if recipe.align or recipe.slices or recipe.tokenizer is not None:
        raise RecipeError(
            [
                "merge_only/partial, or models storing names with and without their base-model prefix, "
                "cannot be combined with align, slices or a tokenizer section yet"
            ]
        )
    mo, partial = recipe.merge_only, recipe.partial
    fallback = family_prefix(readers)
    seen = {m: canonical(readers[m], fallback) for m in order}
    ref_names, _b, ref_prefixed = seen[ref]

    def in_part(c: str, m: str) -> bool:
        if mo == "all":
            return True
        if mo == "backbone":
            return c in seen[m][1]
        assert isinstance(mo, Patterns)
        return any(fnmatch.fnmatchcase(c, g) for g in mo.include) and not any(
            fnmatch.fnmatchcase(c, g) for g in mo.exclude
        )

    part = {m: {c: t for c, t in seen[m][0].items() if in_part(c, m)} for m in order}
    headless = mo == "backbone" and ref_prefixed

    def out_name(c: str) -> str:
        if headless:
            return c
        return ref_names.get(c) or next(part[m][c] for m in order if c in part[m])

    names_all = list(dict.fromkeys([*part[ref], *(c for m in order for c in part[m])]))
    out = Parts([])
    missing: list[str] = []
    for c in names_all:
        have = [m for m in order if c in part[m]]
        infos = {m: readers[m].info(part[m][c]) for m in have}
        floats = all(is_float(i.dtype) for i in infos.values())
        if len(have) < len(order):
            keep = partial.keep if isinstance(partial, Keep) else None
            if not floats or partial == "drop" or (keep is not None and keep not in have):
                out.left_out.append(c)
            elif keep is not None:
                out.items.append(Item(out_name(c), infos[keep], {keep: part[keep][c]}, (keep,), copy=True))
            else:
                missing.append(f"{c} ({', '.join(have)} only)")
            continue
        shapes = {m: i.shape for m, i in infos.items()}
        if len(set(shapes.values())) > 1:
            desc = ", ".join(f"{list(s)} in '{m}'" for m, s in shapes.items())
            raise ShapeMismatch(
                f"tensor {c!r} has different shapes ({desc}); leave it out of the merged part "
                "(merge_only) or give it a passthrough override"
            )
        first = ref if ref in have else have[0]
        out.items.append(Item(out_name(c), infos[first], {m: part[m][c] for m in have}, tuple(order)))
    if missing:
        more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
        raise MissingTensor(
            f"{len(missing)} tensor(s) of the merged part are not in every model: "
            f"{'; '.join(missing[:5])}{more}; say what to do with them (partial: drop, or "
            "partial: {keep: MODEL}), or leave them out of the merged part (merge_only)"
        )
    if not out.items:
        raise MissingTensor("no tensor is in the merged part of every model (merge_only)")
    if headless:
        info = headless_class(readers[ref].model_type)
        out.architectures = [info[0]] if info else None
    return out
