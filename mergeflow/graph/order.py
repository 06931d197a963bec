"""The order the executor runs a plan's tasks in: a topological order from the roots, and with several lanes
the laned tasks brought together so that a few of them can run at once."""

from __future__ import annotations

from typing import Any


def schedule(roots: list[Any], placed: set[Any] | None = None) -> list[Any]:
    """Depth-first post-order from the roots, in root order; each task once. ``placed``: tasks already in
    an order being built (left out, and the new ones added to it)."""
    order: list[Any] = []
    seen: set[Any] = set() if placed is None else placed
    for root in roots:
        stack = [(root, False)]
        while stack:
            task, expanded = stack.pop()
            if expanded:
                order.append(task)
                continue
            if task in seen:
                continue
            seen.add(task)
            stack.append((task, True))
            stack.extend((d, False) for d in reversed(task.deps()) if d not in seen)
    return order


def hoist(order: list[Any], lanes: int) -> list[Any]:
    """``order`` with its laned tasks (``task.laned``: each layer's alignment) taken ``lanes`` at a time: the
    others of a group, with whatever they need that is not in place yet (their reads), moved up to just
    after the group's first, so that the group runs at once while the tasks after it wait for their results.
    Still a topological order; the reads of up to ``lanes`` laned tasks are held at once."""
    laned = [t for t in order if getattr(t, "laned", False)]
    if lanes < 2 or len(laned) < 2:
        return order
    group: dict[Any, list[Any]] = {}
    for i in range(0, len(laned), lanes):
        group[laned[i]] = laned[i : i + lanes]
    out: list[Any] = []
    placed: set[Any] = set()
    for task in order:
        if task in placed:
            continue
        for member in group.get(task, [task]):
            out.extend(schedule([member], placed))  # the first: its reads are in place already
    return out


def run_order(roots: list[Any], lanes: int = 1) -> list[Any]:
    """The executor's order for ``lanes`` lanes (what downloads and shard deletion follow too)."""
    return hoist(schedule(roots), lanes)
