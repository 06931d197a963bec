"""Planning: check the models against each other and build one load -> merge -> write chain per
output tensor, in the order the reference model stores them (so reads run shard by shard)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError

from mergeflow.arch.layers import num_layers, position
from mergeflow.errors import (
    MemoryBudgetError,
    MissingTensor,
    RecipeError,
    ShapeMismatch,
    UnsupportedArchitecture,
)
from mergeflow.graph.tasks import Load, Merge, Write
from mergeflow.io.dtypes import NAMES, TORCH_TO_ST, is_float
from mergeflow.io.reader import ModelReader
from mergeflow.io.writer import OutTensor, ShardLayout, plan_shards
from mergeflow.merge.base import MergeOperator
from mergeflow.recipe.resolve import Resolver
from mergeflow.recipe.schema import Recipe


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

    @property
    def n_tensors(self) -> int:
        return len(self.writes)


def _check_models(recipe: Recipe, readers: Mapping[str, ModelReader], ref: str) -> None:
    types = {n: r.model_type for n, r in readers.items() if r.model_type is not None}
    if len(set(types.values())) > 1:
        desc = ", ".join(f"{n} is {t}" for n, t in types.items())
        raise UnsupportedArchitecture(f"models have different architectures ({desc})")
    ref_tensors = readers[ref].tensors
    for name, r in readers.items():
        for t, info in ref_tensors.items():
            other = r.tensors.get(t)
            if other is None:
                raise MissingTensor(f"model '{name}' ({r.path}) lacks tensor {t!r} that model '{ref}' has")
            if other.shape != info.shape:
                raise ShapeMismatch(f"tensor {t!r}: shape {list(other.shape)} in model '{name}' but "
                                    f"{list(info.shape)} in model '{ref}'")
        extra = [t for t in r.tensors if t not in ref_tensors]
        if extra:
            more = f" (and {len(extra) - 3} more)" if len(extra) > 3 else ""
            raise MissingTensor(f"model '{name}' has tensor(s) {', '.join(map(repr, extra[:3]))}{more} that "
                                f"model '{ref}' lacks")


def build_plan(recipe: Recipe, readers: Mapping[str, ModelReader], operators: Mapping[str, MergeOperator],
               max_memory: int | None = None) -> Plan:
    ref = recipe.config_source
    _check_models(recipe, readers, ref)
    ref_reader = readers[ref]
    compute = NAMES[recipe.dtype]
    csize = torch.empty((), dtype=compute).element_size()
    resolve = Resolver(recipe, operators)
    n_layers = num_layers(ref_reader.tensors, ref_reader.config)
    order = list(recipe.models)
    if recipe.base is not None:
        order.remove(recipe.base)
        order.insert(0, recipe.base)

    writes: list[Write] = []
    outs: list[OutTensor] = []
    loads: dict[tuple[str, str], Load] = {}
    bytes_read = peak = 0
    peak_name = ""
    ops_used: dict[str, int] = {}

    def load(model: str, tensor: str) -> Load:
        key = (model, tensor)
        if key not in loads:
            info = readers[model].info(tensor)
            loads[key] = Load(model, tensor, info.numel, info.nbytes, is_float(info.dtype))
        return loads[key]

    for tname, info in ref_reader.tensors.items():
        settings = resolve(tname, position(tname, n_layers))
        op = operators[settings.op]
        if not is_float(info.dtype):  # integer buffers (ids, masks) are copied, never averaged
            op = operators["passthrough"]
            settings = type(settings)("passthrough", {}, {m: {} for m in order})
        try:
            params = op.params.model_validate(settings.params)
            members = [m for m in order if not (op.needs_base and m == recipe.base)]
            if op.select is not None:
                members = op.select(params, members)
            mparams = tuple(op.model_params.model_validate(settings.model_params[m]) for m in members)
        except ValidationError as exc:
            raise RecipeError([f"tensor {tname!r}: parameters for {op.name}: {e['msg']}" for e in exc.errors()]
                              ) from None
        base = load(recipe.base, tname) if op.needs_base else None
        merge = Merge(tname, op.name, params, mparams, tuple(members), tuple(load(m, tname) for m in members), base)
        out_dtype = TORCH_TO_ST[NAMES[recipe.out_dtype]] if recipe.out_dtype and is_float(info.dtype) else info.dtype
        out = OutTensor(tname, out_dtype, info.shape)
        outs.append(out)
        writes.append(Write(out, merge))
        ops_used[op.name] = ops_used.get(op.name, 0) + 1
        n_in = len(merge.deps())
        task_bytes = int(info.numel * csize * (n_in + op.work) + out.nbytes)
        if task_bytes > peak:
            peak, peak_name = task_bytes, tname

    bytes_read = sum(ld.stored_bytes for ld in loads.values())
    if max_memory is not None and peak > max_memory:
        raise MemoryBudgetError(f"tensor {peak_name!r} needs about {peak / 2**20:.0f} MiB to merge, more than the "
                                f"memory budget of {max_memory / 2**20:.0f} MiB; raise --max-memory")
    layouts = plan_shards(outs, int(recipe.output.shard_size))
    return Plan(recipe, writes, layouts, bytes_read, sum(o.nbytes for o in outs), peak, peak_name, ops_used)


def model_dir(path: str) -> Path | None:
    p = Path(path)
    return p if p.is_dir() else None
