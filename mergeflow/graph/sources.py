"""Where a recipe's models come from: the one place a model reference becomes a reader, and the list
of everything a run reads (which no output may overlap)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeflow.errors import InputError
from mergeflow.graph.shard_uses import ShardUse, disk_needed, shard_uses, whole_model_reads
from mergeflow.io.reader import ModelReader
from mergeflow.io.scratch import existing, nearest_free
from mergeflow.patterns import parse_repo_ref
from mergeflow.progress import Progress
from mergeflow.recipe.schema import Recipe

if TYPE_CHECKING:
    from mergeflow.io.fetcher import Fetcher
    from mergeflow.io.hub_reader import HubReader


def open_model(
    name: str,
    path: str,
    lora: str | None = None,
    allow_pickle: bool = False,
    headers_only: bool = False,
    subfolder: str | None = None,
) -> ModelReader:
    """The one place a recipe's model becomes a reader: a folder or file, or a Hugging Face repo id, with
    a LoRA adapter (likewise) applied. A repo id the Hub must be asked about becomes a :class:`HubReader`
    (config and headers now, shards when read); one in the cache (offline) or with an adapter, a local
    snapshot. ``reader.source`` says which."""
    from mergeflow.io.hub import resolve_model

    who = f"model '{name}'"
    reader: ModelReader | None = None
    pickle = False  # .bin weights are fetched only for a repository that has no safetensors
    if not_local(path):
        from mergeflow.io.hub_reader import HubReader, NoSafetensors

        repo, rev = parse_repo_ref(path)  # type: ignore[misc]
        try:
            reader = HubReader(name, repo, rev, subfolder, headers_only=headers_only)
        except NoSafetensors:
            if not allow_pickle:
                raise
            pickle = True
    if reader is None:
        model = resolve_model(path, Path.cwd(), who, pickle=pickle, subfolder=subfolder)
        reader = ModelReader(name, model.path, allow_pickle=allow_pickle)
        reader.source = model.describe()
    if lora:
        from mergeflow.io.lora import LoraReader

        adapter = resolve_model(
            lora, Path.cwd(), f"{who} (LoRA adapter)"
        )  # small: fetched whole, even in pre-flight
        base_source = reader.source
        reader = LoraReader(name, reader, adapter.path, allow_pickle=allow_pickle)
        reader.source = f"{base_source} with LoRA adapter {adapter.describe()}"
    return reader


def not_local(ref: str) -> bool:
    """A repo id that is neither a local path nor (offline) to be fetched: the Hub must be asked."""
    from mergeflow.io.hub import offline

    return parse_repo_ref(ref) is not None and not Path(ref).exists() and not offline()


def recipe_inputs(
    recipe: Recipe, recipe_path: str | Path | None, readers: dict[str, ModelReader]
) -> list[Path]:
    """Everything a run reads: the recipe file, models (as resolved), adapters, statistics and data files."""
    paths = [Path(r.path) for r in readers.values()] + [Path(p) for p in recipe.stats.values()]
    paths += [Path(f).parent for r in readers.values() for f in r.extra_files]
    paths += [Path(str(s.params["data"])) for s in recipe.align if isinstance(s.params.get("data"), str)]
    if recipe_path is not None and Path(recipe_path).is_file():
        paths.append(Path(recipe_path))
    return paths


def hub_shards(prep: Any, roots: list[Any] | None = None) -> list[tuple[HubReader, str, ShardUse]]:
    """The shards of Hub models the plan (or the tasks under ``roots``) reads that are not on disk yet, in
    order of first use."""
    from mergeflow.io.hub_reader import HubReader

    if not any(isinstance(hub_of(r), HubReader) for r in prep.readers.values()):
        return []  # local models: no need to walk the plan
    uses = shard_uses(prep.plan.writes if roots is None else roots, prep.readers, len(prep.lanes))
    return [
        (r, u.file, u)
        for u in uses
        if isinstance(r := hub_of(prep.readers[u.model]), HubReader)
        and u.file in r.repo_file
        and r.missing(u.file)
    ]


def hub_of(reader: ModelReader) -> ModelReader:
    """The reader that holds a model's own shards (the base under a LoRA adapter, an untied view)."""
    while hasattr(reader, "base"):
        reader = reader.base
    return reader


def download_bytes(shards: list[tuple[HubReader, str, ShardUse]]) -> int:
    """Bytes of the shards (of :func:`hub_shards`) the cache lacks: what a run downloads."""
    return sum(r.shard_size(f) for r, f, _u in shards)


def disk_held(shards: list[tuple[HubReader, str, ShardUse]]) -> int:
    """The most bytes of those shards held at once when each is deleted after its last use."""
    return disk_needed(
        [u for _r, _f, u in shards], {(u.model, u.file): r.shard_size(f) for r, f, u in shards}
    )


def preflight(prep: Any, disk_budget: int | None = None) -> tuple[int, int]:
    """Checks made on headers before any weight byte is fetched: the plan (already built), and room for
    the downloads: in the Hugging Face cache, or within ``disk_budget`` when shards are fetched into a
    private folder and deleted as the merge passes them. Returns (bytes to download, the most of them
    held at once under the budget)."""
    from mergeflow.io.hub import hub_cache

    shards = hub_shards(prep)
    need = download_bytes(shards)
    if disk_budget is None:
        free = nearest_free(hub_cache())
        if need > free:
            raise InputError(
                f"the Hub models need {need / 2**30:.2f} GiB in the cache ({hub_cache()}), which has "
                f"{free / 2**30:.2f} GiB free; free space, point HF_HUB_CACHE elsewhere or pass "
                "--disk-budget"
            )
        return need, need
    whole = whole_model_reads(prep.plan.writes)
    if whole or (prep.recipe.align and prep.recipe.anchor == "auto"):
        what = (
            "anchor: auto compares whole models"
            if not whole
            else "its residual or refine steps read whole models"
        )
        raise InputError(
            f"--disk-budget: this recipe cannot drop shards as it goes ({what}); run it without --disk-budget"
        )
    held = disk_held(shards)
    _check_budget(held, disk_budget)
    return need, held


def _check_budget(held: int, disk_budget: int) -> None:
    if held > disk_budget:
        raise InputError(
            f"--disk-budget {disk_budget / 2**30:.2f} GiB is below the {held / 2**30:.2f} GiB of "
            "downloaded shards this merge holds at once; raise it"
        )


def check_room(prep: Any, out: Path, disk_budget: int | None) -> None:
    """Room at the output location for what the run writes there: the merged model, and the downloaded
    shards too when they go to the partial output (``disk_budget``) or to a cache on the same disk."""
    from mergeflow.io.hub import hub_cache

    down = download_bytes(hub_shards(prep))
    parent = Path(out).absolute().parent
    need = prep.plan.bytes_written
    if disk_budget is not None:
        need += min(disk_budget, down)
    elif down and existing(hub_cache()).stat().st_dev == existing(parent).stat().st_dev:
        need += down
    free = nearest_free(parent)
    if need > free:
        raise InputError(
            f"output {out}: the run needs {need / 2**30:.2f} GiB on that disk (the merged model"
            f"{' and the downloads' if need > prep.plan.bytes_written else ''}), which has "
            f"{free / 2**30:.2f} GiB free"
        )


def start_downloads(
    prep: Any, roots: list[Any], partial: Path, disk_budget: int | None, progress: Progress
) -> Fetcher | None:
    """Start fetching the shards of Hub models the tasks under ``roots`` read, in order of first use: into
    the shared cache, or (``disk_budget``) into the partial output, each deleted after its last load
    (which the run reports to :meth:`Fetcher.loaded`)."""
    from mergeflow.io.fetcher import Fetcher

    shards = hub_shards(prep, roots)
    if not shards:
        return None
    if disk_budget is not None:
        _check_budget(disk_held(shards), disk_budget)
    folder = partial / "downloads" if disk_budget is not None else None
    return Fetcher([(r, f, u.loads) for r, f, u in shards], folder, disk_budget, progress).start()
