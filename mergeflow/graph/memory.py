"""The memory side of a run: the budget's split, glibc's allocator setting, and the peak measured."""

from __future__ import annotations

import os
import platform

import psutil

MAPPED_SHARE = 8


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
