"""nuslerp: slerp of two models (or of their task vectors, when the recipe names a base), weighted by
their weights, over the whole tensor or row by row / column by column."""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator
from mergeflow.merge.linear import Weight


class NuslerpParams(OpParams):
    flatten: bool = Field(True, description="One angle for the whole tensor; false: one per row (or column).")
    row_wise: bool = Field(
        False, description="Without flatten: slerp columns (vectors along dim 0) instead of rows."
    )


def slerp_along(t: float, v0: torch.Tensor, v1: torch.Tensor, flatten: bool, row_wise: bool) -> torch.Tensor:
    shape = v0.shape
    if flatten or v0.dim() < 2:
        a, b = v0.reshape(1, -1), v1.reshape(1, -1)
    else:
        a, b = (v0.T, v1.T) if row_wise else (v0, v1)  # vectors along the last dim
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True).clamp(min=1e-7)
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True).clamp(min=1e-7)
    cos = ((a / na) * (b / nb)).sum(-1, keepdim=True).clamp(-1, 1)
    colinear = (1 - cos * cos) <= 1e-16
    theta = torch.acos(torch.where(colinear, torch.zeros_like(cos), cos))
    sin = torch.where(colinear, torch.ones_like(theta), torch.sin(theta))
    out = torch.where(
        colinear, (1 - t) * a + t * b, (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / sin
    )
    if not flatten and v0.dim() >= 2 and row_wise:
        return out.reshape(v0.T.shape).T.reshape(shape)
    return out.reshape(shape)


@merge_operator(
    "nuslerp",
    params=NuslerpParams,
    model_params=Weight,
    min_models=2,
    max_models=2,
    work=4.0,
    optional_base=True,
)
def nuslerp(tensors, base, p: NuslerpParams, mp, ctx):
    """slerp(x_0, x_1) at t = w_1 / (w_0 + w_1); on task vectors (then plus the base) when a base is set."""
    total = mp[0].weight + mp[1].weight
    t = 0.5 if abs(total) < 1e-6 else mp[1].weight / total
    v0, v1 = tensors
    if base is not None:
        return slerp_along(t, v0 - base, v1 - base, p.flatten, p.row_wise).add_(base)
    return slerp_along(t, v0, v1, p.flatten, p.row_wise)
