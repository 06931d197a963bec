"""Where a recipe's models come from: the one place a model reference becomes a reader, and the list
of everything a run reads (which no output may overlap)."""

from __future__ import annotations

from pathlib import Path

from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


def open_model(name: str, path: str, lora: str | None = None, allow_pickle: bool = False) -> ModelReader:
    """The one place a recipe's model becomes a reader: a folder or file, or a Hugging Face repo id (from
    the cache or downloaded), with a LoRA adapter (likewise) applied. ``reader.source`` says which."""
    from mergeflow.io.hub import resolve_model

    who = f"model '{name}'"
    model = resolve_model(path, Path.cwd(), who)
    if lora:
        from mergeflow.io.lora import LoraReader

        adapter = resolve_model(lora, Path.cwd(), f"{who} (LoRA adapter)")
        reader: ModelReader = LoraReader(name, model.path, adapter.path, allow_pickle=allow_pickle)
        reader.source = f"{model.describe()} with LoRA adapter {adapter.describe()}"
    else:
        reader = ModelReader(name, model.path, allow_pickle=allow_pickle)
        reader.source = model.describe()
    return reader


def recipe_inputs(recipe: Recipe, recipe_path: str | Path | None, readers: dict[str, ModelReader]) -> list[Path]:
    """Everything a run reads: the recipe file, models (as resolved), adapters, statistics and data files."""
    paths = [Path(r.path) for r in readers.values()] + [Path(p) for p in recipe.stats.values()]
    paths += [Path(f).parent for r in readers.values() for f in r.extra_files]
    paths += [Path(str(s.params["data"])) for s in recipe.align if isinstance(s.params.get("data"), str)]
    if recipe_path is not None and Path(recipe_path).is_file():
        paths.append(Path(recipe_path))
    return paths
