"""Shared pieces of the sparsifying task-vector operators (TIES, DARE and their kin)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams


class SparseModelParams(OpParams):
    weight: float = Field(1.0, description="Weight of this model's task vector.")
    density: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the task vector's entries kept.")


class SignParams(OpParams):
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    normalize: bool = Field(True, description="Divide by the summed weight of the models that agree in sign "
                            "at each entry (the disjoint mean); false gives the plain weighted sum.")
    majority: Literal["sum", "count"] = Field("sum", description="Elect each entry's sign from the weighted "
                                              "sum of task vectors ('sum', the paper's) or by counting signs.")


def magnitude_trim_(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Zero all but the ``density`` fraction of entries largest in magnitude, in place.

    The threshold is one k-th value per tensor (linear time), not a sort. Entries tied with the
    threshold are all kept, so slightly more than k may survive when values repeat.
    """
    n = delta.numel()
    k = int(round(density * n))
    if k >= n:
        return delta
    if k <= 0:
        return delta.zero_()
    mag = delta.abs().reshape(-1)
    if mag.dtype in (torch.bfloat16, torch.float16):
        mag = mag.float()
    threshold = torch.kthvalue(mag, n - k + 1).values  # (k-th largest)
    return delta.mul_(mag.reshape(delta.shape) >= threshold)


def random_drop_(delta: torch.Tensor, density: float, gen: torch.Generator, rescale: bool = True) -> torch.Tensor:
    """Keep each entry with probability ``density`` (DARE), in place; survivors scaled by 1/density."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return delta.zero_()
    keep = torch.rand(delta.shape, generator=gen, device=delta.device, dtype=torch.float32) < density
    delta.mul_(keep)
    return delta.div_(density) if rescale else delta


def sign_consensus(trimmed: Sequence[torch.Tensor], weights: Sequence[float], p: SignParams) -> torch.Tensor:
    """TIES' elect + disjoint merge over (already sparsified) task vectors."""
    for t, w in zip(trimmed, weights, strict=True):
        t.mul_(w)  # weighted task vectors, in place
    if p.majority == "sum":
        elected = torch.sign(sum(trimmed[1:], trimmed[0].clone()))
    else:
        elected = torch.sign(sum((torch.sign(t) for t in trimmed[1:]), torch.sign(trimmed[0])))
    merged = torch.zeros_like(trimmed[0])
    divisor = torch.zeros_like(trimmed[0]) if p.normalize else None
    for t, w in zip(trimmed, weights, strict=True):
        agree = torch.sign(t) == elected
        merged.add_(t * agree)
        if divisor is not None:
            divisor.add_(agree, alpha=w)
    if divisor is not None:
        divisor[divisor == 0] = 1.0
        merged.div_(divisor)
    return merged
