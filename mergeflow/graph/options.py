"""What a run may do: the command line's flags as one object, and the device they name."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.errors import InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {name}: not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {name}: mergeflow runs on cpu or cuda, not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {name}: CUDA is not available on this machine")
    return dev


@dataclass
class Options:
    device: str = "auto"
    max_memory: int | None = None
    force: bool = False
    allow_pickle: bool = False
    check_finite: bool = False
    prefetch: bool = True
    resume: bool = False
    parents: bool = False  # create missing parent folders of the output (else only the output itself)
    label: str = "merging"  # what the progress bar calls the work
    strict: bool = False  # warnings about the recipe (an override that selects nothing) become errors
    headers_only: bool = False  # Hub models from config and headers only (pre-flight): plan, never run
    disk_budget: int | None = (
        None  # Hub shards fetched into the partial output and deleted after their last use
    )
    # process-wide: glibc's mmap threshold follows the memory budget (graph.memory.malloc_returns_large_blocks),
    # so resident memory tracks the tensors in flight; the CLI turns it on, a library caller decides
    tune_malloc: bool = False
