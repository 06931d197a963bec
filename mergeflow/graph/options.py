"""What a run may do: the command line's flags as one object, and the device they name."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.errors import InputError


def resolve_device(name: str, flag: str | None = None) -> torch.device:
    """``flag``: the whole --device value ``name`` is one of (named in the messages)."""
    flag = flag or name
    if "," in name:
        raise InputError(f"--device {name}: this command runs on one device; name one (cpu, cuda, cuda:N)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    which = "" if flag == name else f"{name} "
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise InputError(f"--device {flag}: {which}not a device; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"--device {flag}: {which}mergeflow runs on cpu or cuda, not {dev.type}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {flag}: {which}CUDA is not available on this machine")
    return dev


def resolve_devices(name: str) -> tuple[torch.device, ...]:
    """The devices of a run: one name, or a list (``cuda:0,cuda:1``) whose devices each take a share of the
    alignment's layers (a lane each; a device named twice gets two lanes, so that one lane's host work overlaps
    the other's device work). ``auto``: every visible GPU, else the CPU. Merges run on the first."""
    if name == "auto" and torch.cuda.is_available():
        return tuple(torch.device("cuda", i) for i in range(torch.cuda.device_count()))
    names = [n.strip() for n in name.split(",")]
    if len(names) > 1 and not all(names):
        raise InputError(f"--device {name}: an empty name in the list")
    if len(names) > 1 and "auto" in names:
        raise InputError(f"--device {name}: auto cannot be one of a list")
    return tuple(resolve_device(n, name) for n in names)


@dataclass
class Options:
    device: str = "auto"  # cpu, cuda, cuda:N, a list such as "cuda:0,cuda:1" (alignment lanes), or auto
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
