"""Which operator merges one output tensor, with which validated parameters and models; the memory check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from mergeflow.arch.layers import position
from mergeflow.errors import MemoryBudgetError, RecipeError
from mergeflow.graph.checks import check_finite, check_kinds
from mergeflow.graph.stats_inputs import Stats, tensor_stats
from mergeflow.io.dtypes import is_float
from mergeflow.io.header import TensorInfo
from mergeflow.io.reader import ModelReader
from mergeflow.merge.base import MergeOperator
from mergeflow.recipe.resolve import Resolver
from mergeflow.recipe.schema import Recipe


@dataclass
class Choice:
    """The operator that merges one output tensor, its validated parameters and its models."""

    op: MergeOperator
    params: Any
    mparams: tuple[Any, ...]
    members: list[str]
    with_base: bool
    info: TensorInfo  # the output's dtype and shape
    tstats: Any  # the tensor's statistics (Fisher, Gram) when the operator reads them


def choose_operator(
    recipe: Recipe,
    operators: Mapping[str, MergeOperator],
    resolve: Resolver,
    item: Any,
    info: TensorInfo,
    n_layers: int,
    all_readers: Mapping[str, ModelReader],
    stats: Mapping[str, Stats],
    own_shape: bool,
) -> Choice:
    """The recipe's settings for ``item`` (filters, gradients), checked: integer buffers are copied, an operator
    whose statistics are missing falls back, and every parameter is validated (RecipeError names the tensor)."""
    tname = item.out
    settings = resolve(tname, position(tname, n_layers, recipe.outside_position))
    check_kinds(tname, {m: all_readers[m].info(item.names[m]).dtype for m in item.models}, settings.op)
    op = operators[settings.op]
    if not is_float(info.dtype) or item.copy:  # integer buffers (ids, masks) are copied, never averaged
        op = operators["passthrough"]
        settings = type(settings)("passthrough", {}, {m: {} for m in item.models})
    try:
        params = op.params.model_validate(settings.params)
        with_base = op.uses_base(recipe.base)
        if with_base and recipe.base not in item.names:
            raise RecipeError(
                [
                    f"tensor {tname!r}: {op.name} needs the base model '{recipe.base}' among the "
                    "sources of this slice"
                ]
            )
        members = [m for m in item.models if not (with_base and m == recipe.base)]
        if op.select is not None:
            members = op.select(params, members)
            if own_shape:  # the selected model's own shape
                info = all_readers[members[0]].info(item.names[members[0]])
        tstats = (
            None
            if op.stats is None
            else tensor_stats(op.stats, tname, info.shape, members, item.names, stats)
        )
        if op.stats is not None and tstats is None:
            fallback = operators[params.fallback]  # type: ignore[attr-defined]  # (StatsFallbackParams)
            known = fallback.model_params.model_fields
            op, params = fallback, fallback.params.model_validate({})
            settings = type(settings)(
                op.name,
                {},
                {
                    m: {k: v for k, v in settings.model_params[m].items() if k in known}
                    for m in settings.model_params
                },
            )
        mparams = tuple(op.model_params.model_validate(settings.model_params[m]) for m in members)
        check_finite(tname, op.name, params, dict(zip(members, mparams, strict=True)))
    except ValidationError as exc:
        raise RecipeError(
            [f"tensor {tname!r}: parameters for {op.name}: {e['msg']}" for e in exc.errors()]
        ) from None
    return Choice(op, params, mparams, members, with_base, info, tstats)


def check_budget(peak: int, what: str, max_memory: int | None, hint: str = "") -> None:
    """Refuse a plan whose largest working set ``peak`` (bytes, described by ``what``, e.g. "tensor 'x' to
    merge") exceeds ``max_memory``, the three quarters of --max-memory that tensors in flight may use."""
    if max_memory is not None and peak > max_memory:
        raise MemoryBudgetError(
            f"{what} needs about {_size(peak)}, more than the {_size(max_memory)} that tensors in flight may use "
            f"(three quarters of the memory budget; the rest is kept for mapped file pages and headroom); raise "
            f"--max-memory to at least {_size(peak * 4 // 3 + 2**20, up=True).replace(' ', '')}{hint}"
        )


def _size(n: int, up: bool = False) -> str:
    """Bytes as MiB below 4 GiB, else GiB (rounded up when ``up``)."""
    unit, name = (2**20, "MiB") if n < 4 * 2**30 else (2**30, "GiB")
    value = -(-n // unit) if up else n / unit
    return f"{value:.0f} {name}" if up else f"{value:.1f} {name}"
