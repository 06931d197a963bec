"""sce: Select, Calculate, Erase (FuseChat 2.0, Wan et al., 2024).

Select the entries where the task vectors vary most across models (a fraction ``select_topk`` of the
entries with nonzero variance), weight each model by the mean square of its selected task vector,
erase entries whose sign disagrees with the elected sign of the summed task vectors, and add the
weighted mean of what remains to the base.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, deltas_, merge_operator
from mergeflow.merge.sparsify import top_mask


class SceParams(OpParams):
    select_topk: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Fraction of the entries with nonzero variance "
        "across task vectors that are kept (those varying most).",
    )


@merge_operator("sce", params=SceParams, needs_base=True, work=5.0)
def sce(tensors, base, p: SceParams, mp, ctx):
    """base + sum_i w_i agree_i d_i / sum_i w_i agree_i over the most varying entries; w_i ~ mean(d_i^2)."""
    d = deltas_(tensors, base)
    if p.select_topk < 1.0:
        mean = sum(d[1:], d[0].clone()).div_(len(d))
        var = sum(((x - mean) ** 2 for x in d[1:]), (d[0] - mean) ** 2).reshape(-1)
        k = int(int(torch.count_nonzero(var)) * p.select_topk)
        keep = top_mask(var.float() if var.element_size() < 4 else var, k).view(base.shape)
        for x in d:
            x.mul_(keep)
    energy = [float((x.double() ** 2).mean()) for x in d]
    total = sum(energy)
    weights = [e / total for e in energy] if total > 1e-12 else [1.0 / len(d)] * len(d)
    elected = sum(d[1:], d[0].clone())  # the sign of the summed task vectors is elected
    merged = torch.zeros_like(base)
    divisor = torch.zeros_like(base)
    for x, w in zip(d, weights, strict=True):
        agree = (x * elected).gt_(0)  # 1.0 where x has the elected sign
        merged.add_(x.mul_(agree), alpha=w)
        divisor.add_(agree, alpha=w)
    return merged.div_(divisor.clamp_(min=1e-6)).add_(base)
