"""Planning: check the models against each other and build one load -> merge -> write chain per
output tensor, in the order the reference model stores them (so reads run shard by shard)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from mergeflow.arch.layers import num_layers
from mergeflow.arch.spec import ArchSpec
from mergeflow.graph.checks import check_models, describe_override
from mergeflow.graph.operator_choice import check_budget, choose_operator
from mergeflow.graph.parts import needs_parts, part_items
from mergeflow.graph.slices import plain_items, slice_items
from mergeflow.graph.stats_inputs import Stats
from mergeflow.graph.stats_inputs import key as stats_key
from mergeflow.graph.tasks import Load, Merge, Write
from mergeflow.graph.vocab import VocabRows, vocab_rows
from mergeflow.io.dtypes import NAMES, TORCH_TO_ST, is_float
from mergeflow.io.reader import ModelReader
from mergeflow.io.writer import OutTensor, ShardLayout, plan_shards
from mergeflow.merge.base import MergeOperator
from mergeflow.recipe.resolve import Resolver
from mergeflow.recipe.schema import Recipe
from mergeflow.tokenizer.build import VocabMap
from mergeflow.tokenizer.remap import reindexed

# MERGEFLOW_POINTWISE=off: pointwise operators get whole converted tensors (the path before; benchmarks)
POINTWISE = os.environ.get("MERGEFLOW_POINTWISE", "on") != "off"
CHUNK_ELEMS = 1 << 22  # elementwise merges of larger tensors run in row blocks of about this many entries


def row_blocks(shape: tuple[int, ...], chunk_elems: int) -> list[tuple[int, int] | None]:
    """Row blocks [start, stop) of dim 0 of about ``chunk_elems`` entries; [None] for the whole tensor.
    A function of the shape alone, so seeded operators give the same output under any memory budget."""
    numel = 1
    for d in shape:
        numel *= d
    if len(shape) < 1 or numel <= chunk_elems or shape[0] < 2:
        return [None]
    per = max(1, chunk_elems // (numel // shape[0]))
    return [(a, min(a + per, shape[0])) for a in range(0, shape[0], per)]


@dataclass
class Plan:
    recipe: Recipe
    writes: list[Write]
    layouts: list[ShardLayout]
    bytes_read: int
    bytes_written: int
    peak_task_bytes: int  # largest working set of one output tensor
    peak_tensor: str
    ops_used: dict[str, int]
    n_tensors: int
    arch: ArchSpec | None = None  # when the recipe aligns
    anchor: str | None = None
    layer_origin: list[tuple[str, int]] = field(
        default_factory=list
    )  # with slices: (model, layer) per output layer
    vocab_size: int | None = None  # rows of the embeddings when the models' vocabularies differ in size
    unused_overrides: list[str] = field(default_factory=list)  # overrides that selected no tensor
    vmap: VocabMap | None = None  # the output tokenizer, when the recipe has a tokenizer section
    config_json: dict | None = None  # the output's config.json, when it is not the config model's (a MoE)
    config_updates: dict = field(default_factory=dict)  # keys set in the config model's config.json
    left_out: list[str] = field(default_factory=list)  # tensors of the models that no output tensor holds
    stats_means: dict[str, float] = field(default_factory=dict)  # model -> mean of its statistics file
    whole_model: tuple[int, str] | None = (
        None  # a step holding whole models (refine...): its bytes, what it is
    )


class _Loads:
    """One Load task per (model, stored tensor, row block), shared by every task that reads it."""

    def __init__(self, readers: Mapping[str, ModelReader]) -> None:
        self.readers = readers
        self.tasks: dict[tuple[str, str, tuple[int, int] | None], Load] = {}

    def __call__(self, model: str, tensor: str, rows: tuple[int, int] | None) -> Load:
        key = (model, tensor, rows)
        if key not in self.tasks:
            info = self.readers[model].info(tensor)
            frac = 1.0 if rows is None else (rows[1] - rows[0]) / info.shape[0]
            self.tasks[key] = Load(
                model, tensor, int(info.numel * frac), int(info.nbytes * frac), is_float(info.dtype), rows
            )
        return self.tasks[key]


def build_plan(
    recipe: Recipe,
    readers: Mapping[str, ModelReader],
    operators: Mapping[str, MergeOperator],
    max_memory: int | None = None,
    chunk_elems: int = CHUNK_ELEMS,
    anchor_name: str | None = None,
    stats: Mapping[str, Stats] | None = None,
    vmap: VocabMap | None = None,
) -> Plan:
    """One load -> (align) -> merge -> write chain per output tensor. ``anchor_name`` resolves
    ``anchor: auto`` (see graph.anchor). ``vmap``: the recipe's tokenizer section, built (embedding and
    head rows re-indexed to the output tokenizer)."""
    ref = recipe.config_source
    resolve = Resolver(recipe, operators)
    vocab: dict[str, VocabRows] = {}
    order = list(recipe.models)
    if recipe.base is not None:
        order.remove(recipe.base)
        order.insert(0, recipe.base)
    parts = (
        part_items(recipe, readers, ref, order)
        if not recipe.slices and needs_parts(recipe, readers)
        else None
    )
    if not recipe.slices and parts is None:
        tok = recipe.output.tokenizer
        if vmap is None:
            vocab = vocab_rows(readers, ref, ref if isinstance(tok, bool) else tok)
        # tensors copied from one model (passthrough) may differ in shape, e.g. classifier heads
        check_models(
            recipe,
            readers,
            ref,
            vmap.tensors if vmap is not None else vocab,
            lambda t: resolve(t, 0.0).op == "passthrough",
        )
    ref_reader = readers[ref]
    csize = torch.empty((), dtype=NAMES[recipe.dtype]).element_size()
    n_layers = num_layers(ref_reader.tensors, ref_reader.config)
    stats = stats or {}
    all_readers = {**readers, **{stats_key(m): st.reader for m, st in stats.items()}}
    load = _Loads(all_readers)
    aligner: Any = None  # an AlignPlanner, or an MLPAlignPlanner for the mlp family
    if recipe.align:
        from mergeflow.deepalign.mlp import is_mlp
        from mergeflow.graph.align_tasks import AlignPlanner, model_spec
        from mergeflow.graph.mlp_align import MLPAlignPlanner

        anchor = recipe.anchor if recipe.anchor != "auto" else anchor_name
        assert anchor is not None
        if is_mlp(readers[anchor].config):
            aligner = MLPAlignPlanner(recipe, readers, anchor, load)
        else:
            aligner = AlignPlanner(
                recipe, model_spec(readers, anchor), anchor, load, readers[anchor], max_memory
            )
    source = aligner.input if aligner is not None else load

    origin: list[tuple[str, int]] = []
    if recipe.slices:
        items, origin = slice_items(recipe, readers, ref, order)
        n_layers = len(origin)
    else:
        items = parts.items if parts is not None else plain_items(ref_reader, order)
    writes: list[Write] = []
    outs: list[OutTensor] = []
    peak, peak_name = 0, ""
    ops_used: dict[str, int] = {}
    for item in items:
        tname, info = item.out, item.info
        vrows = vocab.get(tname)
        if vrows is not None:  # output rows as in the tokenizer's model; merged on the shared ones
            info = readers[vrows.source].info(tname)
        new_shape = vmap.tensors.get(tname) if vmap is not None else None
        remap = new_shape is not None
        if new_shape is not None:  # every model's rows re-indexed to the output tokenizer, then merged whole
            info = replace(info, shape=new_shape)
        c = choose_operator(
            recipe, operators, resolve, item, info, n_layers, all_readers, stats, vrows is None and not remap
        )
        op, info = c.op, c.info
        out_dtype = (
            TORCH_TO_ST[NAMES[recipe.out_dtype]] if recipe.out_dtype and is_float(info.dtype) else info.dtype
        )
        out = OutTensor(tname, out_dtype, info.shape)
        outs.append(out)
        blocks: list[tuple[int, int] | None] = (
            row_blocks(info.shape, chunk_elems) if op.elementwise and not remap else [None]
        )
        src = source
        if vmap is not None and remap:
            tasks = reindexed(vmap, tname, c.members, recipe.base if c.with_base else None, source)
            src = lambda m, _t, _rows, tasks=tasks: tasks[m]  # noqa: E731
        if vrows is not None:
            blocks = (
                [
                    (0, vrows.shared) if b is None else b
                    for b in row_blocks((vrows.shared, *info.shape[1:]), chunk_elems)
                ]
                if op.elementwise
                else [(0, vrows.shared)]
            )
        for part, rows in enumerate(blocks):
            base = src(recipe.base, item.names[recipe.base], rows) if c.with_base and recipe.base else None
            inputs = tuple(src(m, item.names[m], rows) for m in c.members)
            extra = c.tstats.merge_fields(rows, load) if c.tstats is not None else {}
            stored = None
            if (
                op.pointwise
                and not extra
                and all(
                    isinstance(x, Load) and x.float for x in (*inputs, *([base] if base is not None else []))
                )
            ):  # read as stored, converted piece by piece while merging (Merge._pointwise)
                inputs = tuple(replace(x, float=False) for x in inputs)
                base = replace(base, float=False) if base is not None else None
                stored = out_dtype
            merge = Merge(
                tname, op.name, c.params, c.mparams, tuple(c.members), inputs, base, part, **extra,
                stored_out=stored,
            )  # fmt: skip
            writes.append(Write(out, merge, rows))
            numel = info.numel if rows is None else info.numel // info.shape[0] * (rows[1] - rows[0])
            task_bytes = int(
                numel * csize * (len(merge.deps()) * (2 if remap else 1) + op.work) + writes[-1].nbytes
            )
            if task_bytes > peak:
                peak, peak_name = task_bytes, tname
        if vrows is not None and vrows.rows > vrows.shared:  # the tokenizer model's extra rows, copied
            extra_rows = (vrows.shared, vrows.rows)
            pt = operators["passthrough"]
            merge = Merge(
                tname,
                pt.name,
                pt.params(),
                (pt.model_params(),),
                (vrows.source,),
                (source(vrows.source, tname, extra_rows),),
                None,
                len(blocks),
            )
            writes.append(Write(out, merge, extra_rows))
        ops_used[op.name] = ops_used.get(op.name, 0) + 1

    if aligner is not None and aligner.tasks:
        peak = max(peak, aligner.layer_bytes())
    whole = aligner.whole_model_bytes() if hasattr(aligner, "whole_model_bytes") else None
    if whole is not None and whole[0] > peak:  # a whole-model step is the plan's largest working set
        check_budget(
            whole[0], whole[1], max_memory, hint=", or align by weights (those steps run a layer at a time)"
        )
    check_budget(peak, f"tensor {peak_name!r} to merge", max_memory)
    arch = getattr(aligner, "spec", None)
    arch = arch if isinstance(arch, ArchSpec) else None  # the mlp family has no transformer layout
    anchor = aligner.anchor if aligner is not None else None
    vocab_size = vmap.rows if vmap is not None else max((v.rows for v in vocab.values()), default=None)
    unused = [describe_override(recipe, i) for i, n in enumerate(resolve.hits) if n == 0]
    return Plan(
        recipe,
        writes,
        plan_shards(outs, int(recipe.output.shard_size)),
        sum(ld.stored_bytes for ld in load.tasks.values()),
        sum(o.nbytes for o in outs),
        peak,
        peak_name,
        ops_used,
        len(outs),
        arch,
        anchor,
        origin,
        vocab_size,
        unused,
        vmap,
        config_updates={"architectures": parts.architectures} if parts and parts.architectures else {},
        left_out=parts.left_out if parts else [],
        stats_means={m: st.info.mean for m, st in stats.items() if st.info.kind == "fisher"},
        whole_model=whole,
    )


def model_dir(path: str) -> Path | None:
    p = Path(path)
    return p if p.is_dir() else None
