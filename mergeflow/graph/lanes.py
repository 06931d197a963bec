"""Lanes: laned tasks (each layer's alignment) run in a thread per device, a few at a time (graph.order.hoist
brings them together), while the executor goes on; a task that needs a laned task's value waits for it.

On GPUs the lanes are the devices of ``--device cuda:0,cuda:1``: a layer's tensors cross to its lane's device,
its solves run there (with that device current, so that a bare ``"cuda"`` means it) and its results come back
to the run's device, where the merges are. The host work of one lane (the assignment solves, which hold the
GIL) overlaps the others' device work, also when one device is named twice."""

from __future__ import annotations

import queue
import threading
import warnings
from concurrent.futures import Future
from contextlib import nullcontext
from dataclasses import replace
from typing import Any

import torch

LANE = "mergeflow-lane"  # the lane threads' name prefix


def lane_devices(
    devices: tuple[torch.device, ...], budget: int, peak: int, aligning: bool, flag: str
) -> tuple[torch.device, ...]:
    """The lanes a run gets: its devices when it aligns layers, as many as the tensors' budget holds the
    largest task's working set (each lane holds one layer's), none when that is one. ``flag``: the --device
    value, for the warning when the budget holds fewer than it lists (none for auto)."""
    if not aligning or len(devices) < 2:
        return ()
    fits = budget // max(peak, 1)
    if fits < len(devices) and flag != "auto":  # auto takes the GPUs that fit without a word
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


def lanes_busy() -> bool:
    """A lane thread of this process is still computing (after a failure, they are not waited for)."""
    return any(t.name.startswith(LANE) and t.is_alive() for t in threading.enumerate())


class Pending:
    """A laned task's value while its lane computes it."""

    def __init__(self, future: Future[Any]) -> None:
        self.future = future


class Lanes:
    """A daemon thread per lane, fed through a queue: an interrupted run (Ctrl-C) ends at once instead of
    waiting for the layers in flight (a 7B layer takes a minute on a CPU); a lane computes and never writes,
    so a thread cut short at exit leaves nothing half-done."""

    def __init__(self, ctx: Any) -> None:
        self.contexts = [replace(ctx, device=d, home=ctx.device, lanes=()) for d in ctx.lanes]
        self.queues: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in ctx.lanes]
        self.started = 0
        self.stopped = False  # after a failure: queued tasks are dropped
        self.errors: list[BaseException] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"{LANE}{i}", daemon=True)
            for i in range(len(ctx.lanes))
        ]
        for thread in self.threads:
            thread.start()

    def _work(self, lane: int) -> None:
        # no future is kept here once its task is done: the consumers' values are the only references, so a
        # layer's tensors are freed after their last use, as on one device
        while (item := self.queues[lane].get()) is not None:
            future, task, args = item
            del item
            if self.stopped:
                future.cancel()
            elif future.set_running_or_notify_cancel():
                try:
                    future.set_result(_run(task, self.contexts[lane], args))
                except BaseException as exc:  # handed to whoever waits for the value
                    self.errors.append(exc)
                    future.set_exception(exc)
            del future, task, args

    def start(self, task: Any, args: list[Any]) -> Pending:
        """Run ``task`` on the next lane in turn (hoisted tasks start in order, so each finds the lane of the
        task ``lanes`` before it, which is done or nearly)."""
        future: Future[Any] = Future()
        self.queues[self.started % len(self.queues)].put((future, task, args))
        self.started += 1
        return Pending(future)

    @staticmethod
    def resolve(values: dict[Any, Any], deps: tuple[Any, ...]) -> None:
        """Wait for the laned values among ``deps`` (a failure in a lane is raised here)."""
        for d in deps:
            value = values.get(d)
            if isinstance(value, Pending):
                values[d] = value.future.result()

    def close(self, wait: bool) -> None:
        """Stop the lanes. ``wait`` (after a success): join the threads, then raise a failure no task waited
        for. Else (a failure, Ctrl-C): drop what is queued and return at once; a thread still computing ends
        with its layer, or with the process."""
        self.stopped = self.stopped or not wait
        for q in self.queues:
            q.put(None)
        if wait:
            for thread in self.threads:
                thread.join()
            if self.errors:
                raise self.errors[0]


def _run(task: Any, ctx: Any, args: list[Any]) -> Any:
    on = torch.cuda.device(ctx.device) if ctx.device.type == "cuda" else nullcontext()
    with on:
        return task.run(ctx, *args)
