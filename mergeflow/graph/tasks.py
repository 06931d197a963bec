"""Frozen, hashable tasks: load -> merge -> write, one chain per output tensor.

A task names its dependencies and computes its value from theirs; the executor decides when
it runs, on which device, and when its value is freed. Tasks share a dependency (the same
loaded tensor used by two merges) by being equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.errors import InputError
from mergeflow.io.dtypes import ST_TO_TORCH
from mergeflow.io.writer import OutTensor
from mergeflow.merge.base import OPERATORS, MergeContext, OpParams


class NonFiniteTensor(InputError):  # the inputs or the recipe's parameters produce NaN/Inf
    pass


@dataclass(frozen=True)
class Load:
    model: str
    tensor: str
    numel: int
    stored_bytes: int
    float: bool  # floating-point tensors are read in the compute dtype, others as stored
    rows: tuple[int, int] | None = None  # a block of rows [start, stop) of dim 0, or the whole tensor

    def deps(self) -> tuple[Any, ...]:
        return ()

    def run(self, ctx: Any) -> torch.Tensor:
        dtype = ctx.compute_dtype if self.float else None
        return ctx.readers[self.model].read(self.tensor, dtype=dtype, device=ctx.device, rows=self.rows)


@dataclass(frozen=True)
class Merge:
    out: str
    op: str
    params: OpParams
    model_params: tuple[OpParams, ...]
    models: tuple[str, ...]
    inputs: tuple[Load, ...]
    base: Load | None
    part: int = 0
    stats: tuple[Load, ...] = ()  # per merged model, for operators that take statistics
    stats_scale: tuple[float, ...] = ()
    transposed: bool = False

    def deps(self) -> tuple[Any, ...]:
        return self.inputs + ((self.base,) if self.base is not None else ()) + self.stats

    def run(self, ctx: Any, *values: torch.Tensor) -> torch.Tensor:
        n = len(self.inputs)
        tensors = list(values[:n])
        base = values[n] if self.base is not None else None
        stats = tuple(values[n + (self.base is not None) :])
        for i, (load, value) in enumerate(zip(self.stats, stats, strict=True)):  # one NaN spreads everywhere
            if not bool(torch.isfinite(value).all()):
                raise NonFiniteTensor(
                    f"statistics of model '{self.models[i]}' for tensor "
                    f"{load.tensor!r} have NaN or Inf; recompute them with `mergeflow stats`"
                )
        op = OPERATORS.get(self.op)
        mctx = MergeContext(
            self.out, ctx.seed, self.models, self.part, stats, self.stats_scale, self.transposed
        )
        try:
            return op.fn(tensors, base, self.params, self.model_params, mctx)
        except ValueError as exc:  # operators raise ValueError for parameter values that cannot work here
            raise InputError(f"tensor {self.out!r}, operator {self.op}: {exc}") from None


@dataclass(frozen=True)
class Write:
    out: OutTensor
    source: Merge
    rows: tuple[int, int] | None = None

    @property
    def nbytes(self) -> int:
        if self.rows is None or not self.out.shape:
            return self.out.nbytes
        return self.out.nbytes // self.out.shape[0] * (self.rows[1] - self.rows[0])

    def deps(self) -> tuple[Any, ...]:
        return (self.source,)

    def run(self, ctx: Any, value: torch.Tensor) -> None:
        value = value.to(ST_TO_TORCH[self.out.dtype])
        if ctx.check_finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise NonFiniteTensor(f"tensor {self.out.name!r} has NaN or Inf after merging ({self.source.op})")
        ctx.writer.write(self.out.name, value, rows=self.rows)
        return None
