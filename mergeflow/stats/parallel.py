"""Statistics over several processes (data-parallel): each takes a contiguous block of the examples, and the
per-process sums are added up with accelerate's collectives. Started by a launcher that sets the usual
environment (``torchrun --nproc_per_node N``, or ``accelerate launch --num_processes N`` on GPUs); a plain
run is one process and touches no distributed state."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar, cast

import torch

from mergeflow.errors import InputError

T = TypeVar("T")
# the first process may write a large temporary model alone (an aligned 7B copy, an interpolated point) while
# the others wait in a collective: far longer than torch's default timeouts (10 min NCCL, 30 min gloo)
TIMEOUT = timedelta(hours=3)


@dataclass(frozen=True)
class Group:
    index: int  # this process
    size: int  # processes
    device: torch.device  # where this process computes

    @property
    def main(self) -> bool:
        return self.index == 0

    def sum(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Every process's tensors added up (same names on every process), on every process."""
        if self.size == 1:
            return tensors
        from accelerate.utils import reduce

        return {name: reduce(tensors[name].contiguous(), "sum") for name in sorted(tensors)}

    def least(self, value: int) -> int:
        """The smallest of every process's ``value`` (the same answer on every process)."""
        return int(self._reduce([value], "MIN")[0])

    def most(self, values: list[float]) -> list[float]:
        """The largest of every process's ``values``, element by element (the same answer on every process)."""
        return self._reduce(values, "MAX")

    def _reduce(self, values: list[float], op: str) -> list[float]:
        if self.size == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return [float(v) for v in t]

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value`` (any picklable object), in process order, on every process."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    @contextmanager
    def working(self) -> Iterator[None]:
        """Work with collectives in it: a process that leaves it by an exception does not meet the others at
        exit (they may be blocked in a collective it never joins; the launcher stops them when it exits)."""
        global _failed
        try:
            yield
        except BaseException:
            _failed = True
            raise

    @property
    def sharing_host(self) -> int:
        """Processes of the group on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when not launched)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.size > 1 else 1

    @property
    def on_host(self) -> str:
        """ " (N processes on this machine)" when several share it, for messages about its resources."""
        return f" ({self.sharing_host} processes on this machine)" if self.sharing_host > 1 else ""

    @property
    def one_host(self) -> bool:
        """Several processes, all on this machine: files one of them writes, the others can read."""
        return self.size > 1 and self.sharing_host == self.size

    @property
    def makes_files(self) -> bool:
        """Whether this process writes (and deletes) the temporary models it evaluates (see ``made_once``)."""
        return self.main or not self.one_host

    def temporary_need(self, need: int, what: str) -> tuple[int, str]:
        """The disk this process checks for before writing temporary models of ``need`` bytes (see
        ``made_once``), and how a refusal names the work: nothing for a process the first one writes for, the
        processes on this machine together when each writes its own."""
        if self.one_host or self.sharing_host == 1:
            return (need if self.makes_files else 0), what
        return need * self.sharing_host, what + self.on_host

    def made_once(self, make: Callable[[], T], what: str) -> T:
        """``make()`` (which writes a temporary model and returns its path) run by the first process alone when
        every process is on this machine, its result handed to the others (which wait); else each process
        makes its own. A failure in the first process is an error in every process."""
        if not self.one_host:
            return make()
        if not self.main:
            status, value = self.gather(None)[0]
            if status != "ok":
                raise InputError(f"{what}: the first process failed ({value}); see its message")
            return cast(T, value)
        try:
            result = make()
        except BaseException as exc:
            self.gather(("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            raise
        self.gather(("ok", result))
        return result

    def total(self, value: float) -> float:
        if self.size == 1:
            return value
        return float(self.sum({"v": torch.tensor([value], dtype=torch.float64, device=self.device)})["v"][0])


_failed = False  # an exception left collective work in this process


def process_group(device: torch.device) -> Group:
    """This process's place in the launched group, or a group of one. Under a multi-GPU launch each process
    computes on its own GPU (cuda:LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Group(0, 1, device)
    import atexit

    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu", timeout=TIMEOUT)
    atexit.unregister(_close)  # once, however many commands the process runs
    atexit.register(_close)
    return Group(state.process_index, state.num_processes, state.device if device.type != "cpu" else device)


def _close() -> None:
    """Tear the process group down together before the interpreter exits. A process that finished first and
    tore its group down alone (or left it to the exit) died of SIGABRT in the interpreter's finalisation in
    about one launch in six ("terminate called without an active exception": gloo's connection threads), which
    failed the launch after a correct result; with every process meeting at a barrier first, none in 60. A
    process whose collective work failed skips the barrier (see ``Group.working``)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if not _failed:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()  # the group's objects go while the interpreter is whole
