"""A prepared plan executed into memory instead of a folder: the merged tensors as a dict (stored names),
for callers that evaluate a merge and throw it away (a search trial). Same tasks, same executor; only the
writer differs."""

from __future__ import annotations

from typing import Any

import torch

from mergeflow.graph.executor import ExecContext, execute
from mergeflow.io.dtypes import NAMES, ST_TO_TORCH
from mergeflow.io.writer import OutTensor


class MemoryWriter:
    """What the executor writes, kept: whole tensors, or row blocks assembled into one."""

    def __init__(self, outs: list[OutTensor]) -> None:
        self.outs = {o.name: o for o in outs}
        self.tensors: dict[str, torch.Tensor] = {}

    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None, owned: bool = False
    ) -> None:
        if rows is None:
            self.tensors[name] = tensor
            return
        if name not in self.tensors:
            out = self.outs[name]
            self.tensors[name] = torch.empty(out.shape, dtype=ST_TO_TORCH[out.dtype], device=tensor.device)
        self.tensors[name][rows[0] : rows[1]] = tensor

    def is_done(self, name: str) -> bool:
        return False


def merge_in_memory(prep: Any) -> dict[str, torch.Tensor]:
    """Every tensor of ``prep``'s merged model (a Prepared of ``mergeflow.graph.run``), in memory."""
    plan = prep.plan
    writer = MemoryWriter([w.out for w in plan.writes])
    ctx = ExecContext(
        prep.readers, writer, prep.device, NAMES[prep.recipe.dtype], prep.recipe.seed, True, plan.arch
    )
    try:
        execute(list(plan.writes), ctx)
    finally:
        for r in prep.readers.values():
            r.close()
    return writer.tensors
