"""Statistics over several processes (data-parallel): each takes a contiguous block of the examples, and the
per-process sums are added up with accelerate's collectives. Started by a launcher that sets the usual
environment (``torchrun --nproc_per_node N``, or ``accelerate launch --num_processes N`` on GPUs); a plain
run is one process and touches no distributed state."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


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
        if self.size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t[0])

    @property
    def sharing_host(self) -> int:
        """Processes of the group on this machine (torchrun's LOCAL_WORLD_SIZE; 1 when not launched)."""
        return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if self.size > 1 else 1

    def total(self, value: float) -> float:
        if self.size == 1:
            return value
        return float(self.sum({"v": torch.tensor([value], dtype=torch.float64, device=self.device)})["v"][0])


def process_group(device: torch.device) -> Group:
    """This process's place in the launched group, or a group of one. Under a multi-GPU launch each process
    computes on its own GPU (cuda:LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Group(0, 1, device)
    import atexit

    from accelerate import PartialState

    state = PartialState(cpu=device.type == "cpu")
    atexit.unregister(_close)  # once, however many commands the process runs
    atexit.register(_close)
    return Group(state.process_index, state.num_processes, state.device if device.type != "cpu" else device)


def _close() -> None:
    """Tear the process group down before the interpreter exits: left to the exit itself, gloo's threads were
    still joinable when their owner was destroyed and a process that finished first died of SIGABRT
    ("terminate called without an active exception"), failing the launch after a correct result."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
