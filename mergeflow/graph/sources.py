"""Where a recipe's models come from: the one place a model reference becomes a reader, and the list
of everything a run reads (which no output may overlap)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeflow.errors import InputError
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


def open_model(name: str, path: str, lora: str | None = None, allow_pickle: bool = False,
               headers_only: bool = False) -> ModelReader:
    """The one place a recipe's model becomes a reader: a folder or file, or a Hugging Face repo id (from
    the cache or downloaded), with a LoRA adapter (likewise) applied. ``reader.source`` says which."""
    from mergeflow.io.hub import resolve_model

    who = f"model '{name}'"
    if headers_only and not_local(path):  # pre-flight: config and headers over HTTP, no weight byte
        from mergeflow.io.hub_headers import HubHeaderReader
        from mergeflow.patterns import parse_repo_ref

        repo, rev = parse_repo_ref(path)  # type: ignore[misc]
        return HubHeaderReader(name, repo, rev)
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


def not_local(ref: str) -> bool:
    """A repo id that is neither a local path nor (offline) to be fetched: the Hub must be asked."""
    from mergeflow.io.hub import offline
    from mergeflow.patterns import parse_repo_ref

    return parse_repo_ref(ref) is not None and not Path(ref).exists() and not offline()


def recipe_inputs(recipe: Recipe, recipe_path: str | Path | None, readers: dict[str, ModelReader]) -> list[Path]:
    """Everything a run reads: the recipe file, models (as resolved), adapters, statistics and data files."""
    paths = [Path(r.path) for r in readers.values()] + [Path(p) for p in recipe.stats.values()]
    paths += [Path(f).parent for r in readers.values() for f in r.extra_files]
    paths += [Path(str(s.params["data"])) for s in recipe.align if isinstance(s.params.get("data"), str)]
    if recipe_path is not None and Path(recipe_path).is_file():
        paths.append(Path(recipe_path))
    return paths


def download_bytes(prep: Any) -> int:
    """Weight bytes of the Hub models known from their headers only that the cache lacks (what a run
    would download)."""
    from mergeflow.io.hub_headers import HubHeaderReader

    return sum(r.missing_bytes for r in prep.readers.values() if isinstance(r, HubHeaderReader))


def preflight(prep: Any) -> None:
    """Checks made on headers before any weight byte is fetched: the plan (already built) and the room in
    the Hugging Face cache for the downloads."""
    import shutil

    from mergeflow.io.hub import hub_cache

    need, where = download_bytes(prep), hub_cache()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise InputError(f"the Hub models need {need / 2**30:.2f} GiB in the cache ({hub_cache()}), which has "
                         f"{free / 2**30:.2f} GiB free; free space or point HF_HUB_CACHE elsewhere")
