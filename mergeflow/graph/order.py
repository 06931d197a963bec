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
    """``order`` with its laned tasks (``task.laned``: each layer's alignment) started ``lanes`` at a time: at
    each laned task's own place, the next ``lanes - 1`` laned tasks, with whatever they need that is not in
    place yet (their reads), are moved up to just after it. A sliding window: while the tasks after a laned
    task wait for its result, the others run, and when it is done the next one starts (its reads made while
    the others compute). Still a topological order; the reads of up to ``lanes`` laned tasks are held at once."""
    laned = [t for t in order if getattr(t, "laned", False)]
    if lanes < 2 or len(laned) < 2:
        return order
    at = {t: i for i, t in enumerate(laned)}
    out: list[Any] = []
    placed: set[Any] = set()
    for task in order:
        if task in at:
            for member in laned[at[task] : at[task] + lanes]:
                out.extend(schedule([member], placed))  # nothing for those placed already
        elif task not in placed:
            out.append(task)
            placed.add(task)
    return out


def run_order(roots: list[Any], lanes: int = 1) -> list[Any]:
    """The executor's order for ``lanes`` lanes (what downloads and shard deletion follow too)."""
    return hoist(schedule(roots), lanes)
