"""Which shard files a plan reads, and when: the order downloads follow, the moment a shard may be
deleted, and the disk a merge holds at once when shards are fetched as it goes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergeflow.graph.order import run_order, schedule
from mergeflow.graph.tasks import Load
from mergeflow.io.reader import ModelReader


@dataclass
class ShardUse:
    model: str
    file: str
    first: int  # position in the executor's order of the first and last task that reads it
    last: int
    loads: int  # how many loads read it


def shard_uses(roots: list[Any], readers: Mapping[str, ModelReader], lanes: int = 1) -> list[ShardUse]:
    """Every (model, shard file) the tasks reachable from ``roots`` read, in order of first use (in the
    executor's order for ``lanes`` lanes)."""
    uses: dict[tuple[str, str], ShardUse] = {}
    for i, task in enumerate(run_order(roots, lanes)):
        if isinstance(task, Load):
            key = (task.model, readers[task.model].info(task.tensor).file)
            use = uses.get(key)
            if use is None:
                uses[key] = ShardUse(key[0], key[1], i, i, 1)
            else:
                use.last, use.loads = i, use.loads + 1
    return list(uses.values())


def disk_needed(uses: list[ShardUse], size: Mapping[tuple[str, str], int]) -> int:
    """The most bytes of shards held at once when each shard (of those in ``size``) is fetched just before
    its first use and deleted after its last."""
    events = sorted(
        [(u.first, 0, size[(u.model, u.file)]) for u in uses if (u.model, u.file) in size]
        + [(u.last, 1, -size[(u.model, u.file)]) for u in uses if (u.model, u.file) in size]
    )
    held = most = 0
    for _at, _kind, delta in events:  # at one position, arrivals count before departures
        held += delta
        most = max(most, held)
    return most


def whole_model_reads(roots: list[Any]) -> list[str]:
    """Tasks that read whole models outside the plan's loads (residual alignment, refinement): their shards
    cannot be fetched and dropped one by one."""
    return sorted({type(t).__name__ for t in schedule(roots) if getattr(t, "reads_whole_models", False)})
