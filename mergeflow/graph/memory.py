"""The memory side of a run: the budget's split, glibc's allocator setting, and the peak measured."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import psutil

MAPPED_SHARE = 8
PREFETCH_CAP = 64 * 2**20  # reading further ahead than this buys no throughput, only memory
# alignment: stored bytes the kernel is asked to read ahead (about two 7B layers of a pair)
ADVISE_CAP = 2**30
# finished tensors waiting for the writing thread (a 7B layer's outputs: 440 MB)
WRITE_BEHIND_CAP = 512 * 2**20
# MERGEFLOW_READAHEAD=off: no kernel readahead advice in alignment runs (benchmarks; --no-prefetch also stops it)
READAHEAD = os.environ.get("MERGEFLOW_READAHEAD", "on") != "off"
# MERGEFLOW_WRITE_BEHIND: auto (a writing thread when computing on an accelerator, whose host cores are idle;
# on a CPU it competes with the computing threads: neutral on 2 cores, see docs/performance.md), on, off
WRITE_BEHIND = os.environ.get("MERGEFLOW_WRITE_BEHIND", "auto")


@dataclass(frozen=True)
class Overlap:
    """How a run overlaps its reading and writing with its computing, in bytes (0: not at all)."""

    prefetch: int  # read ahead into tensors by a thread (merges: reading is most of their time)
    advise: int  # stored bytes the kernel is asked to read ahead, no thread (alignment: compute-bound)
    write_behind: int  # finished tensors handed to a writing thread


def overlap(
    budget: int, peak_task_bytes: int, aligning: bool, enabled: bool = True, device_type: str = "cpu"
) -> Overlap:
    """Within the part of the budget the plan's largest task leaves. A reading thread would compete with an
    alignment's solves for the cores, so alignment asks the kernel to read its next layers instead."""
    writing = WRITE_BEHIND == "on" or (WRITE_BEHIND == "auto" and device_type != "cpu")
    window = max(tensor_budget(budget) - peak_task_bytes, 0)
    prefetch = min(window, PREFETCH_CAP) if enabled and not aligning else 0
    advise = min(tensor_budget(budget), ADVISE_CAP) if enabled and READAHEAD and aligning else 0
    behind = min(window - prefetch, WRITE_BEHIND_CAP) if enabled and writing else 0
    return Overlap(prefetch, advise, behind)


def malloc_returns_large_blocks(budget: int) -> None:
    """Ask glibc to serve blocks above a fixed size from their own mappings, returned to the OS on free.

    By default glibc raises that threshold (up to 32 MiB) as tensors are freed, then serves tensors
    below it from its heaps, whose freed holes stay resident: resident memory drifts to about twice
    the tensors in flight. A fixed threshold keeps it at what is live, but every fresh mapping costs
    page faults (a third of TIES' time with a 1 MiB threshold). So the threshold follows the budget:
    budget/64, between 1 MiB and 32 MiB: tight budgets get exact accounting, roomy ones speed.
    """
    import ctypes
    import ctypes.util

    if platform.system() != "Linux" or os.environ.get("MERGEFLOW_MALLOC") == "default":
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        threshold = int(os.environ.get("MERGEFLOW_MMAP_THRESHOLD", 0)) or min(
            max(budget // 64, 1 << 20), 32 << 20
        )
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def tensor_budget(budget: int) -> int:
    """The part of the memory budget that tensors in flight (including read-ahead) may use."""
    return budget - 2 * (budget // MAPPED_SHARE)


def default_max_memory() -> int:
    """Half of the memory available now: leaves room for the page cache that streaming relies on."""
    return int(psutil.virtual_memory().available * 0.5)


def peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started (Linux: VmHWM, which, unlike ru_maxrss,
    does not include the parent's memory inherited across fork and exec)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if platform.system() == "Darwin" else peak * 1024
