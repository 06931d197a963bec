"""Runs a plan: a topological order grouped by output tensor (so by shard), each value freed
after its last use, tensor reads prefetched in a background thread within the memory budget. With several
lanes (devices), the tasks that ask for one (each layer's alignment) run a few at a time, a thread per lane."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from mergeflow.graph.lanes import Lanes
from mergeflow.graph.order import run_order, schedule
from mergeflow.graph.tasks import Load, Merge
from mergeflow.io.reader import ModelReader
from mergeflow.progress import SILENT, Progress


class TensorSink(Protocol):
    """Where Write tasks put the merged tensors: the sharded writer, or memory (graph.in_memory)."""

    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None, owned: bool = False
    ) -> None:
        """``owned``: the tensor was made for this write and nothing else holds it (it may be kept, or written
        later by another thread)."""


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
    lanes: tuple[torch.device, ...] = ()  # with two or more: where laned tasks run, a thread each
    home: torch.device | None = None  # in a lane's context: the run's device, where a laned task's results go


def _nbytes(task: Any, ctx: ExecContext) -> int:
    size = (
        torch.empty((), dtype=ctx.compute_dtype).element_size()
        if task.float
        else task.stored_bytes // max(task.numel, 1)
    )
    return task.numel * size


class _Advisor:
    """Keeps up to ``budget`` stored bytes of the loads after the current one advised to the kernel."""

    def __init__(self, loads: list[Load], ctx: ExecContext, budget: int) -> None:
        self.loads, self.ctx, self.budget = loads, ctx, budget
        self.next = 0  # first load not yet advised
        self.done = 0  # loads consumed
        self.pending = 0  # stored bytes advised and not yet consumed
        self.seen: set[tuple[str, str]] = set()

    def consumed(self, task: Load) -> None:
        if self.budget > 0:
            if self.done < self.next:
                self.pending -= task.stored_bytes
            self.done += 1
            self.next = max(self.next, self.done)

    def ahead(self) -> None:
        while self.budget > 0 and self.next < len(self.loads) and self.pending < self.budget:
            task = self.loads[self.next]
            if (task.model, task.tensor) not in self.seen:  # row blocks of one tensor: advised once
                self.seen.add((task.model, task.tensor))
                self.ctx.readers[task.model].advise(task.tensor)
            self.pending += task.stored_bytes
            self.next += 1


def execute(
    roots: list[Any],
    ctx: ExecContext,
    prefetch_bytes: int = 0,
    on_done: Callable[[Any], None] | None = None,
    advise_bytes: int = 0,
) -> None:
    """Run every task reachable from ``roots``. ``prefetch_bytes``: how much may be read ahead (by a thread, into
    tensors). ``advise_bytes``: how many stored bytes of the next loads the kernel is asked to bring into the
    page cache ahead of use (asynchronous readahead, no thread, no memory of ours): for compute-bound runs such
    as alignment, where a reading thread would compete with the solves, so that reading the next layer
    overlaps solving this one."""
    lanes = Lanes(ctx) if len(ctx.lanes) > 1 else None
    order = run_order(roots, len(ctx.lanes))
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

    advise = _Advisor(loads, ctx, advise_bytes)
    finished = False

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
            if isinstance(task, Load):
                advise.consumed(task)
            advise.ahead()
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
                if lanes is not None:
                    lanes.resolve(values, task.deps())
                args = [values[d].clone() if mutates and users[d] > 1 else values[d] for d in task.deps()]
                value = (
                    lanes.start(task, args)
                    if lanes is not None and getattr(task, "laned", False)
                    else task.run(ctx, *args)
                )
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
        if lanes is not None:
            lanes.close(wait=True)  # a laned task whose value no task read still reports its failure
        finished = True
    finally:
        if lanes is not None and not finished:
            lanes.close(wait=False)
        if pool is not None:
            for _t, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
        pending.clear()
        values.clear()


__all__ = ["ExecContext", "TensorSink", "execute", "schedule"]
