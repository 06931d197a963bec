"""Runs a plan: a topological order grouped by output tensor (so by shard), each value freed
after its last use, tensor reads prefetched in a background thread within the memory budget."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mergeflow.graph.tasks import Load, Merge
from mergeflow.io.reader import ModelReader
from mergeflow.progress import SILENT, Progress


class TensorSink(Protocol):
    """Where Write tasks put the merged tensors: the sharded writer, or memory (graph.in_memory)."""

    def write(self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None) -> None: ...


@dataclass
class ExecContext:
    readers: Mapping[str, ModelReader]
    writer: TensorSink
    device: torch.device
    compute_dtype: torch.dtype
    seed: int = 0
    check_finite: bool = False
    arch: Any = None  # ArchSpec, when aligning
    align_reports: list[Any] = field(default_factory=list)
    note: Callable[[str], None] | None = None  # shows what a long task is doing (the progress bar's caption)
    progress: Progress = SILENT  # where long tasks open their own bars


def schedule(roots: list[Any]) -> list[Any]:
    """Depth-first post-order from the roots, in root order; each task once."""
    order: list[Any] = []
    seen: set[Any] = set()
    for root in roots:
        stack = [(root, False)]
        while stack:
            task, expanded = stack.pop()
            if expanded:
                order.append(task)
                continue
            if task in seen:
                continue
            seen.add(task)
            stack.append((task, True))
            stack.extend((d, False) for d in reversed(task.deps()) if d not in seen)
    return order


def _nbytes(task: Any, ctx: ExecContext) -> int:
    size = (
        torch.empty((), dtype=ctx.compute_dtype).element_size()
        if task.float
        else task.stored_bytes // max(task.numel, 1)
    )
    return task.numel * size


def execute(
    roots: list[Any], ctx: ExecContext, prefetch_bytes: int = 0, on_done: Callable[[Any], None] | None = None
) -> None:
    """Run every task reachable from ``roots``. ``prefetch_bytes``: how much may be read ahead."""
    order = schedule(roots)
    users: dict[Any, int] = {}
    for task in order:
        for d in task.deps():
            users[d] = users.get(d, 0) + 1
    values: dict[Any, Any] = {}
    loads = [t for t in order if isinstance(t, Load)]
    pending: deque[tuple[Any, Future[Any]]] = deque()
    ahead = 0  # bytes submitted but not yet consumed
    next_load = 0
    pool = (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergeflow-read") if prefetch_bytes > 0 else None
    )

    def top_up() -> None:
        nonlocal ahead, next_load
        while pool is not None and next_load < len(loads):
            size = _nbytes(loads[next_load], ctx)
            if pending and ahead + size > prefetch_bytes:
                break
            task = loads[next_load]
            pending.append((task, pool.submit(task.run, ctx)))
            ahead += size
            next_load += 1

    try:
        for task in order:
            if isinstance(task, Load) and pool is not None:
                top_up()
                if not pending or pending[0][0] != task:  # cannot happen: loads are consumed in order
                    raise RuntimeError(f"prefetch out of order at {task}")
                _t, fut = pending.popleft()
                value = fut.result()
                ahead -= _nbytes(task, ctx)
                top_up()
            else:
                # a merge may overwrite its inputs: give it a copy of any value another task still needs
                mutates = isinstance(task, Merge) and task.stored_out is None  # pointwise ones read only
                args = [values[d].clone() if mutates and users[d] > 1 else values[d] for d in task.deps()]
                value = task.run(ctx, *args)
                del args
            for d in task.deps():
                users[d] -= 1
                if users[d] == 0:
                    del values[d]
            if users.get(task, 0) > 0:
                values[task] = value
            del value
            if on_done is not None:
                on_done(task)
    finally:
        if pool is not None:
            for _t, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
        pending.clear()
        values.clear()
