"""Merge operators: pure functions over tensors, registered by name.

An operator is one file: a frozen ``Params`` model (global parameters), optionally a
``ModelParams`` model (one value per source model, e.g. ``weight``), and one function
decorated with :func:`merge_operator`. Field descriptions become the recipe reference.
Operators never open files and never know the model class.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from mergeflow.registry import Registry


class OpParams(BaseModel):
    """Base of every operator parameter model: frozen (hashable), unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    model_refs: ClassVar[tuple[str, ...]] = ()


class NoParams(OpParams):
    pass


@dataclass(frozen=True)
class MergeContext:
    """What an operator may know besides its inputs."""

    tensor: str  # output tensor name, for messages and per-tensor seeds
    seed: int = 0
    model_names: tuple[str, ...] = ()
    part: int = 0  # which row block of the tensor, when an elementwise operator runs block by block
    stats: tuple[torch.Tensor, ...] = ()  # per merged model, for operators that take statistics
    stats_scale: tuple[float, ...] = ()  # per model: the mean of its whole statistics file
    transposed: bool = False  # the weight is stored [in, out] (GPT-2 Conv1D), for Gram statistics

    def generator(self, device: torch.device) -> torch.Generator:
        """A generator seeded from (recipe seed, tensor name, row block): the same output whatever the
        execution order or memory budget (row blocks have a fixed size, see graph.plan)."""
        key = f"{self.seed}:{self.tensor}" + (f":{self.part}" if self.part else "")
        digest = hashlib.sha256(key.encode()).digest()
        gen = torch.Generator(device=device)
        gen.manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        return gen


class StatsFallbackParams(OpParams):
    """Parameters every operator that takes statistics has."""

    fallback: str = Field(
        "linear",
        description="Operator for tensors without statistics (norms, embeddings, "
        "biases where there are none).",
    )


# fn(tensors: Sequence[Tensor], base: Tensor | None, params: P, model_params: Sequence[M], ctx: MergeContext)
# -> Tensor, where P and M are the operator's own parameter models (subclasses of OpParams): typed loosely,
# since a function of a subclass is not a function of OpParams to a type checker
MergeFn = Callable[..., torch.Tensor]
SelectFn = Callable[..., list[str]]  # select(params: P, models: Sequence[str]) -> the models it reads


@dataclass(frozen=True)
class MergeOperator:
    name: str
    fn: MergeFn
    params: type[OpParams]
    model_params: type[OpParams]
    needs_base: bool
    min_models: int
    max_models: int | None
    work: float  # temporaries, in units of one input tensor in compute dtype (for the memory estimate)
    summary: str
    doc: str
    # which models' tensors the operator reads, given its params and the recipe's model order (default: all)
    select: SelectFn | None = None
    # each output entry depends only on the same entry of the inputs: large tensors may run in row blocks
    elementwise: bool = False
    # works relative to the base when the recipe names one, on the models themselves otherwise
    optional_base: bool = False
    # the statistics each merged model must provide ("fisher" or "gram"), and the operator that
    # merges tensors for which there are none
    stats: str | None = None
    # elementwise, deterministic and blind to where an entry sits: the executor may feed it cache-sized
    # pieces of the stored tensors, converted as it goes, instead of whole converted tensors
    pointwise: bool = False

    def uses_base(self, base: str | None) -> bool:
        return self.needs_base or (self.optional_base and base is not None)


OPERATORS: Registry[MergeOperator] = Registry("merge operator")


def _empty_safe(fn: MergeFn) -> MergeFn:
    """A tensor with no elements (a dimension of 0) merges to an empty tensor of its shape: operators
    that rank, sample or reshape to (rows, -1) need not handle it."""

    def run(
        tensors: list[torch.Tensor], base: torch.Tensor | None, params: Any, model_params: Any, ctx: Any
    ) -> torch.Tensor:
        if tensors and tensors[0].numel() == 0:
            return tensors[0]
        return fn(tensors, base, params, model_params, ctx)

    run.__doc__, run.__name__ = fn.__doc__, getattr(fn, "__name__", "merge")
    return run


def merge_operator(
    name: str,
    *,
    params: type[OpParams] = NoParams,
    model_params: type[OpParams] = NoParams,
    needs_base: bool = False,
    min_models: int = 1,
    max_models: int | None = None,
    work: float = 2.0,
    select: SelectFn | None = None,
    elementwise: bool = False,
    optional_base: bool = False,
    stats: str | None = None,
    pointwise: bool = False,
) -> Callable[[MergeFn], MergeFn]:
    """Register ``fn(tensors, base, params, model_params, ctx) -> tensor`` under ``name``.

    ``tensors`` are the models being merged (the base excluded when ``needs_base``), already on
    the compute device in the compute dtype, all of one shape; ``model_params`` has one entry each.
    The operator owns ``tensors`` and may overwrite them in place; it must not modify ``base``.
    """

    def deco(fn: MergeFn) -> MergeFn:
        doc = (fn.__doc__ or "").strip()
        OPERATORS.add(
            name,
            MergeOperator(
                name,
                _empty_safe(fn),
                params,
                model_params,
                needs_base,
                min_models,
                max_models,
                work,
                doc.splitlines()[0] if doc else name,
                doc,
                select,
                elementwise,
                optional_base,
                stats,
                pointwise,
            ),
        )
        return fn

    return deco


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """sum_i w_i x_i without materialising a stacked copy of the inputs."""
    out = tensors[0] * weights[0]
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        out.add_(t, alpha=w)
    return out


def model_weights(mp: Sequence[OpParams], normalize: bool, ctx: MergeContext) -> list[float]:
    """The per-model ``weight`` values, divided by their sum when ``normalize``."""
    weights = [float(m.weight) for m in mp]  # type: ignore[attr-defined]
    if not normalize:
        return weights
    total = sum(weights)
    if abs(total) < 1e-12:
        raise ValueError(
            f"{ctx.tensor}: weights sum to 0, so they cannot be normalised; set normalize: false "
            "or change the weights"
        )
    return [w / total for w in weights]


def deltas_(tensors: Sequence[torch.Tensor], base: torch.Tensor) -> list[torch.Tensor]:
    """Task vectors x_i - base, computed in place in the (operator-owned) inputs."""
    return [t.sub_(base) for t in tensors]
