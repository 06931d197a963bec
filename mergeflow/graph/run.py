"""A whole merge: recipe -> models -> plan -> output directory. The CLI's ``run`` and ``plan`` call this."""

from __future__ import annotations

import json
import platform
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import safetensors
import torch

import mergeflow
from mergeflow.align.catalog import STEPS
from mergeflow.align.report import summarise
from mergeflow.errors import RecipeError
from mergeflow.files import read_text_capped
from mergeflow.graph.anchor import auto_anchor
from mergeflow.graph.executor import ExecContext, execute
from mergeflow.graph.fingerprint import run_fingerprint
from mergeflow.graph.lanes import lane_devices
from mergeflow.graph.memory import (
    MAPPED_SHARE,
    default_max_memory,
    malloc_returns_large_blocks,
    overlap,
    peak_rss_bytes,
    tensor_budget,
)
from mergeflow.graph.options import Options, resolve_device, resolve_devices
from mergeflow.graph.plan import build_plan
from mergeflow.graph.prepared import Prepared, Result
from mergeflow.graph.sources import (
    check_room,
    hub_of,
    not_local,
    open_model,
    preflight,
    recipe_inputs,
    start_downloads,
)
from mergeflow.graph.stats_inputs import key as stats_key
from mergeflow.graph.stats_inputs import open_stats
from mergeflow.graph.support import write_support
from mergeflow.graph.tasks import Load, Write
from mergeflow.graph.untie import untie_models
from mergeflow.io.background import BackgroundWriter
from mergeflow.io.card import write_card
from mergeflow.io.dtypes import NAMES
from mergeflow.io.hub_reader import HubReader
from mergeflow.io.journal import Journal
from mergeflow.io.output_dir import OutputDir, check_output_path
from mergeflow.io.ownership import write_new
from mergeflow.io.reader import ModelReader
from mergeflow.io.writer import ShardedWriter
from mergeflow.merge.catalog import OPERATORS
from mergeflow.progress import SILENT, Progress
from mergeflow.recipe.schema import Recipe
from mergeflow.recipe.validate import load_recipe
from mergeflow.recipe.yaml_source import MAX_BYTES
from mergeflow.tokenizer.recipe import recipe_tokenizer

MAPPED_CAP = 4 * 2**20  # reopening a file costs about a millisecond: no reason to keep more mapped


def prepare(
    recipe_path: str | Path,
    opts: Options,
    recipe: Recipe | None = None,
    recipe_text: str | None = None,
    given: dict[str, ModelReader] | None = None,
    planner: Any = None,
) -> Prepared:
    """Validate the recipe, open every model's headers, check them against each other and plan.
    ``recipe``/``recipe_text`` stand in for the file when a command builds the recipe itself; ``given``:
    readers for some models, opened by the caller (a stage's output not yet written); ``planner(recipe,
    readers, max_memory)`` builds the plan instead of the merge planner (a mixture of experts)."""
    given = given or {}
    if recipe is None:
        recipe = load_recipe(recipe_path, OPERATORS, STEPS)
    devices = resolve_devices(opts.device)
    device = devices[0]
    # pre-flight when Hub models must be fetched: the whole plan from config files and headers first (LoRA
    # adapters, which are small, are fetched whole for it)
    pre = None
    if not opts.headers_only and any(not_local(e.path) for e in recipe.models.values()):
        pre = prepare(recipe_path, replace(opts, headers_only=True), recipe, recipe_text, given, planner)
        preflight(pre, opts.disk_budget)
        if not (
            recipe.align and recipe.anchor == "auto"
        ):  # the pre-flight's plan is the run's: reads allowed now
            for r in pre.readers.values():
                if isinstance(hub := hub_of(r), HubReader):
                    hub.headers_only = False
            return pre
    readers = {
        name: given[name]
        if name in given
        else pre.readers[name]
        if pre is not None
        else open_model(
            name,
            e.path,
            e.lora,
            allow_pickle=opts.allow_pickle,
            headers_only=opts.headers_only,
            subfolder=e.subfolder,
        )
        for name, e in recipe.models.items()
    }
    untied = untie_models(recipe, readers)
    for r in readers.values():
        if isinstance(hub := hub_of(r), HubReader):
            hub.headers_only = opts.headers_only
    budget = opts.max_memory if opts.max_memory is not None else default_max_memory()
    # pages touched through open file mappings count as resident: they get an eighth of the budget,
    # and another eighth is headroom (allocator, threads); tensors in flight get the rest
    n_files = sum(len({t.file for t in r.tensors.values()}) for r in readers.values())
    for r in readers.values():
        r.recycle_bytes = min(max(budget // MAPPED_SHARE // max(n_files, 1), 1 << 20), MAPPED_CAP)
    anchor = None
    if recipe.align and recipe.anchor == "auto":
        # pre-flight knows no weights: any model stands in (the models' shapes agree, or planning says so)
        anchor = recipe.config_source if opts.headers_only else auto_anchor(readers, recipe.config_source)[0]
    stats = open_stats(recipe, readers)
    vmap, template = recipe_tokenizer(recipe, readers)
    plan = (
        planner(recipe, readers, tensor_budget(budget))
        if planner is not None
        else build_plan(
            recipe,
            readers,
            OPERATORS,
            max_memory=tensor_budget(budget),
            anchor_name=anchor,
            stats=stats,
            vmap=vmap,
        )
    )
    if untied:  # the output has the head of its own the alignment folded into
        plan.config_updates["tie_word_embeddings"] = False
    unused = [f"{recipe_path}: {d} matches no tensor of the models" for d in plan.unused_overrides]
    if unused and opts.strict:
        raise RecipeError(unused, str(recipe_path))
    for line in unused:
        warnings.warn(line + " (--strict makes this an error)", stacklevel=2)
    readers.update({stats_key(m): st.reader for m, st in stats.items()})  # read during the run like models
    text = recipe_text if recipe_text is not None else read_text_capped(recipe_path, "recipe file", MAX_BYTES)
    lanes = lane_devices(
        devices, tensor_budget(budget), plan.peak_task_bytes, plan.arch is not None, opts.device
    )
    return Prepared(
        recipe,
        text,
        readers,
        plan,
        device,
        budget,
        recipe_inputs(recipe, recipe_path, readers),
        template,
        lanes,
    )


def in_flight(prep: Prepared) -> int:
    """The largest working set the run holds at once: one task's, or one per lane."""
    return prep.plan.peak_task_bytes * max(len(prep.lanes), 1)


def run(prep: Prepared, out: str | Path, opts: Options, progress: Progress | None = None) -> Result:
    """Execute a prepared plan into ``out`` (appears only when complete), reporting to ``progress``."""
    recipe, plan = prep.recipe, prep.plan
    progress = progress or SILENT
    final = Path(out)
    check_output_path(final, opts.force, prep.inputs, opts.parents)
    check_room(prep, final, opts.disk_budget)
    start = time.perf_counter()
    bar = progress.bar(opts.label, plan.bytes_written, unit="B")
    done = [0]

    fetcher = None

    def on_done(task: object) -> None:
        if isinstance(task, Load) and fetcher is not None and fetcher.folder is not None:
            reader = prep.readers[task.model]
            fetcher.loaded(
                hub_of(reader), reader.info(task.tensor).file
            )  # deletes a shard after its last load
        if isinstance(task, Write):
            done[0] += task.rows is None or task.rows[1] == task.out.shape[0]
            bar.update(task.nbytes)
            bar.postfix(f"{done[0]}/{plan.n_tensors} tensors")

    out_dir = OutputDir(final, opts.force, opts.resume, prep.inputs, opts.parents)
    with out_dir as tmp:
        journal = Journal(tmp, run_fingerprint(prep))
        kept = journal.load_verified() if opts.resume else set()
        ahead = overlap(
            prep.max_memory, in_flight(prep), plan.arch is not None, opts.prefetch, prep.device.type
        )
        writer: ShardedWriter | BackgroundWriter
        writer = ShardedWriter(tmp, plan.layouts, done=kept, on_shard=journal.record)
        if ahead.write_behind:
            writer = BackgroundWriter(writer, ahead.write_behind)
        todo = [w for w in plan.writes if not writer.is_done(w.out.name)]
        bar.set_total(sum(w.nbytes for w in todo))
        ctx = ExecContext(
            prep.readers,
            writer,
            prep.device,
            NAMES[recipe.dtype],
            recipe.seed,
            opts.check_finite,
            plan.arch,
            note=bar.describe,
            progress=progress,
            lanes=prep.lanes,
        )
        if opts.tune_malloc:
            malloc_returns_large_blocks(prep.max_memory)
        try:
            fetcher = start_downloads(prep, todo, tmp, opts.disk_budget, progress)
            execute(todo, ctx, prefetch_bytes=ahead.prefetch, on_done=on_done, advise_bytes=ahead.advise)
            writer.drain()  # a failure drops what is queued (close), a success waits for it
        finally:
            if fetcher is not None:
                fetcher.close()
            writer.close()
            bar.close()
            for r in prep.readers.values():
                r.close()
        files = writer.finish()
        downloaded = (
            (fetcher.downloaded, fetcher.peak_held if fetcher.folder else 0, fetcher.seconds)
            if fetcher
            else (0, 0, 0.0)
        )
        files += write_support(prep, tmp)
        alignment = summarise(ctx.align_reports) if ctx.align_reports else None
        if alignment is not None:
            write_new(tmp / "alignment.json", json.dumps(alignment, indent=2) + "\n")
            files.append("alignment.json")
        if recipe.output.card:
            write_card(
                tmp,
                prep.recipe_text,
                {n: prep.readers[n].source for n in recipe.models},
                recipe.merge.name,
                plan.n_tensors,
                {
                    "mergeflow": mergeflow.__version__,
                    "torch": torch.__version__,
                    "safetensors": safetensors.__version__,
                    "python": platform.python_version(),
                    "seed": str(recipe.seed),
                    "device": str(prep.device),
                },
            )
            files.append("README.md")
        out_dir.written = files
    if out_dir.left_behind:
        warnings.warn(
            f"the replaced output's files that mergeflow did not write were kept: "
            f"{', '.join(out_dir.left_behind[:4])}",
            stacklevel=2,
        )
    return Result(
        final.resolve(), plan, files, time.perf_counter() - start, alignment, len(kept), *downloaded
    )


__all__ = [
    "Options",
    "Prepared",
    "Result",
    "prepare",
    "run",
    "default_max_memory",
    "peak_rss_bytes",
    "resolve_device",
]
