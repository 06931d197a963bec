"""Lanes: laned tasks (each layer's alignment) run in a thread per device, a few at a time (graph.order.hoist
brings them together), while the executor goes on; a task that needs a laned task's value waits for it.

On GPUs the lanes are the devices of ``--device cuda:0,cuda:1``: a layer's tensors cross to its lane's device,
its solves run there (with that device current, so that a bare ``"cuda"`` means it) and its results come back
to the run's device, where the merges are. The host work of one lane (the assignment solves, which hold the
GIL) overlaps the others' device work, also when one device is named twice."""

from __future__ import annotations

import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch


def lane_devices(
    devices: tuple[torch.device, ...], budget: int, peak: int, aligning: bool, flag: str
) -> tuple[torch.device, ...]:
    """The lanes a run gets: its devices when it aligns layers, as many as the tensors' budget holds the
    largest task's working set (each lane holds one layer's), none when that is one. ``flag``: the --device
    value, for the warning when the budget holds fewer than it lists."""
    if not aligning or len(devices) < 2:
        return ()
    fits = budget // max(peak, 1)
    if fits < len(devices):
        warnings.warn(
            f"--device {flag}: the memory budget holds {max(fits, 1)} layer(s)' alignment at once; "
            + (
                f"using {fits} of the {len(devices)} devices"
                if fits >= 2
                else f"aligning on {devices[0]} alone"
            )
            + " (raise --max-memory for more)",
            stacklevel=3,
        )
    return devices[:fits] if fits >= 2 else ()


class Pending:
    """A laned task's value while its lane computes it."""

    def __init__(self, future: Future[Any]) -> None:
        self.future = future


class Lanes:
    def __init__(self, ctx: Any) -> None:
        self.contexts = [replace(ctx, device=d, home=ctx.device, lanes=()) for d in ctx.lanes]
        self.pools = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"mergeflow-lane{i}")
            for i in range(len(ctx.lanes))
        ]
        self.started: list[Future[Any]] = []

    def start(self, task: Any, args: list[Any]) -> Pending:
        """Run ``task`` on the next lane in turn (a group of hoisted tasks: one per lane)."""
        lane = len(self.started) % len(self.pools)
        future = self.pools[lane].submit(_run, task, self.contexts[lane], args)
        self.started.append(future)
        return Pending(future)

    @staticmethod
    def resolve(values: dict[Any, Any], deps: tuple[Any, ...]) -> None:
        """Wait for the laned values among ``deps`` (a failure in a lane is raised here)."""
        for d in deps:
            value = values.get(d)
            if isinstance(value, Pending):
                values[d] = value.future.result()

    def finish(self) -> None:
        for future in self.started:
            future.result()

    def close(self) -> None:
        """After a failure: what has not started is dropped, what runs is waited for (no thread outlives the
        run)."""
        for pool in self.pools:
            pool.shutdown(wait=True, cancel_futures=True)


def _run(task: Any, ctx: Any, args: list[Any]) -> Any:
    on = torch.cuda.device(ctx.device) if ctx.device.type == "cuda" else nullcontext()
    with on:
        return task.run(ctx, *args)
