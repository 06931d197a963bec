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
    # set for pointwise operators whose inputs are read as stored: the output's dtype, made piece by piece
    stored_out: str | None = None

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
            if self.stored_out is not None:
                return self._pointwise(ctx, op.fn, tensors, base, mctx)
            return op.fn(tensors, base, self.params, self.model_params, mctx)
        except ValueError as exc:  # operators raise ValueError for parameter values that cannot work here
            raise InputError(f"tensor {self.out!r}, operator {self.op}: {exc}") from None

    def _pointwise(
        self, ctx: Any, fn: Any, tensors: list[torch.Tensor], base: torch.Tensor | None, mctx: MergeContext
    ) -> torch.Tensor:
        """The operator on cache-sized pieces of the stored inputs, each converted to the compute dtype into
        a reused buffer, the result written into the output dtype: one pass over memory instead of a
        conversion, several arithmetic passes and a conversion back over whole tensors. Entry for entry the
        same arithmetic, so the same bits."""
        assert self.stored_out is not None
        cd = ctx.compute_dtype
        inputs = [*tensors, *([base] if base is not None else [])]
        if tensors[0].device.type != "cpu" or not all(t.is_floating_point() for t in inputs):
            conv = [t.to(cd) for t in inputs]  # accelerators convert whole tensors at memory speed
            return fn(conv[: len(tensors)], conv[-1] if base is not None else None, self.params,
                      self.model_params, mctx)  # fmt: skip
        out = torch.empty(tensors[0].shape, dtype=ST_TO_TORCH[self.stored_out])
        flat, dst = [t.reshape(-1) for t in inputs], out.view(-1)
        step = min(POINTWISE_PIECE, max(1, dst.numel()))
        bufs = [torch.empty(step, dtype=cd) for _ in inputs]
        n = len(tensors)
        for start in range(0, dst.numel(), step):
            stop = min(start + step, dst.numel())
            piece = [b[: stop - start].copy_(t[start:stop]) for b, t in zip(bufs, flat, strict=True)]
            res = fn(piece[:n], piece[n] if base is not None else None, self.params, self.model_params, mctx)
            dst[start:stop].copy_(res)
        return out


POINTWISE_PIECE = 1 << 18  # entries per piece: 1 MiB in float32, so a piece of every input stays in cache


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
        stored = value.to(ST_TO_TORCH[self.out.dtype])
        if ctx.check_finite and stored.is_floating_point() and not bool(torch.isfinite(stored).all()):
            raise NonFiniteTensor(f"tensor {self.out.name!r} has NaN or Inf after merging ({self.source.op})")
        # a converted copy is this write's alone; the value itself may be another task's input too
        ctx.writer.write(self.out.name, stored, rows=self.rows, owned=stored is not value)
        return None
