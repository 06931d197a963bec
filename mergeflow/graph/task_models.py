"""``output.task_models``: after a merge of the backbone, one full model per task model: the merged
backbone under that model's own names, with its own head and extras, config and tokenizer, so each
loads with its own ``AutoModelFor...`` class. Written to ``OUT.tasks/NAME`` by the normal executor."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from mergeflow.graph.plan import Plan
from mergeflow.graph.tasks import Load, Merge, Write
from mergeflow.io.dtypes import NAMES, TORCH_TO_ST, is_float
from mergeflow.io.writer import OutTensor, plan_shards
from mergeflow.merge.catalog import OPERATORS
from mergeflow.progress import Progress
from mergeflow.recipe.schema import ModelEntry, Recipe


def tasks_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.tasks"


def _copy_plan(
    recipe: Recipe, readers: dict[str, Any], task: str, sources: dict[str, tuple[str, str]]
) -> Plan:
    """Every tensor of ``task`` in its stored order: ``sources[name] = (model, tensor)`` to copy."""
    pt = OPERATORS["passthrough"]
    writes, outs, loads = [], [], 0
    for name in readers[task].tensors:
        model, tensor = sources[name]
        info = readers[model].info(tensor)
        dtype = (
            TORCH_TO_ST[NAMES[recipe.out_dtype]] if recipe.out_dtype and is_float(info.dtype) else info.dtype
        )
        out = OutTensor(name, dtype, info.shape)
        load = Load(model, tensor, info.numel, info.nbytes, is_float(info.dtype))
        writes.append(
            Write(out, Merge(name, pt.name, pt.params(), (pt.model_params(),), (model,), (load,), None))
        )
        outs.append(out)
        loads += info.nbytes
    peak = max((o.nbytes * 3 for o in outs), default=0)
    return Plan(
        recipe,
        writes,
        plan_shards(outs, int(recipe.output.shard_size)),
        loads,
        sum(o.nbytes for o in outs),
        peak,
        "",
        {"passthrough": len(outs)},
        len(outs),
    )


def write_task_models(prep: Any, merged_out: Path, opts: Any, progress: Progress | None = None) -> list[Path]:
    """One full model per model of the recipe but the base; returns their folders."""
    from mergeflow.graph.run import prepare, run

    recipe, plan = prep.recipe, prep.plan
    # which output tensor holds each merged (model, stored name)
    merged_as: dict[tuple[str, str], str] = {}
    for w in plan.writes:
        if not (w.source.op == "passthrough" and len(w.source.models) == 1):  # merged, not a copy
            for m, ld in zip(w.source.models, w.source.inputs, strict=False):
                merged_as[(m, getattr(ld, "tensor", ""))] = w.out.name
        if w.source.base is not None:
            merged_as[(recipe.base, w.source.base.tensor)] = w.out.name
    folders = []
    for task, entry in recipe.models.items():
        if task == recipe.base:
            continue
        models = {"merged": ModelEntry(path=str(merged_out)), task: entry}
        sub = Recipe(
            models=models,
            merge={"passthrough": {}},
            out_dtype=recipe.out_dtype,
            output=recipe.output.model_copy(update={"config": task, "tokenizer": task, "task_models": False}),
        )
        sources = {
            t: (("merged", merged_as[(task, t)]) if (task, t) in merged_as else (task, t))
            for t in prep.readers[task].tensors
        }
        text = (
            f"# {task}: the merged backbone of {merged_out.name} with {task}'s own head\n{prep.recipe_text}"
        )
        sprep = prepare(
            f"<task {task}>",
            opts,
            recipe=sub,
            recipe_text=text,
            planner=lambda r, readers, _mm, task=task, sources=sources: _copy_plan(r, readers, task, sources),
        )
        folder = tasks_dir(merged_out) / task
        run(sprep, folder, replace(opts, parents=True, label=f"task model {task}"), progress)
        folders.append(folder)
    return folders
