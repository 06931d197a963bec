"""Shared pieces of the sparsifying task-vector operators (TIES, DARE and their kin)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field

from mergeflow.merge.base import MergeContext, OpParams, deltas_
from mergeflow.merge.select import kth_largest_cpu


class SparseModelParams(OpParams):
    weight: float = Field(1.0, description="Weight of this model's task vector.")
    density: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of the task vector's entries kept.")


Rescale = bool | Literal["l1"]


class DropParams(OpParams):
    rescale: Rescale = Field(
        True,
        description="true: scale each surviving entry by 1/its keep probability (the "
        "papers'; unbiased); 'l1': scale each task vector back to its L1 norm before the drop "
        "(mergekit's); false: no rescale.",
    )


class TrimRescaleParams(OpParams):
    rescale: bool = Field(
        False,
        description="Scale each trimmed task vector back to its L1 norm before the trim "
        "(mergekit's rescale option).",
    )


def l1_match_(masked: torch.Tensor, l1_before: torch.Tensor) -> torch.Tensor:
    """Scale a sparsified task vector back to its L1 norm before sparsification (mergekit's rescale)."""
    after = masked.abs().sum()
    if float(after) < 1e-7:
        return masked
    return masked.mul_(l1_before / after)


class SignParams(OpParams):
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    normalize: bool = Field(
        True,
        description="Divide by the summed weight of the models that agree in sign "
        "at each entry (the disjoint mean); false gives the plain weighted sum.",
    )
    majority: Literal["sum", "count"] = Field(
        "sum",
        description="Elect each entry's sign from the weighted "
        "sum of task vectors ('sum', the paper's) or by counting signs.",
    )


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest entry of a 1-D tensor, exactly, in linear time (a selection, not a sort).

    On the CPU: a sample-bracketed selection (``mergeflow.merge.select``; numpy's introselect over the
    entries inside the bracket, torch's CPU kthvalue being about ten times slower). Elsewhere torch's own
    kthvalue runs on the device.
    """
    n = values.numel()
    if values.device.type == "cpu":
        return kth_largest_cpu(values, k)
    return torch.kthvalue(values, n - k + 1).values


def top_mask(mag: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of exactly the ``k`` largest entries of a 1-D magnitude tensor.

    The threshold is one k-th value (linear time), not a sort. Checkpoints stored in bfloat16 repeat
    magnitudes a lot, so many entries can tie with the threshold: the first of them in storage order
    are kept, which makes the count exact, the result deterministic, and masks nested
    (top_mask(m, j) is inside top_mask(m, k) for j <= k).
    """
    n = mag.numel()
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=mag.device)
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=mag.device)
    threshold = kth_largest(mag, k)
    keep = mag >= threshold
    surplus = int(torch.count_nonzero(keep)) - k
    if surplus > 0:  # drop the last `surplus` entries tied with the threshold
        tied = torch.nonzero(mag == threshold).squeeze(1)  # ascending positions
        keep[tied[-surplus:]] = False
    return keep


def magnitudes(delta: torch.Tensor) -> torch.Tensor:
    mag = delta.abs().reshape(-1)
    return mag.float() if mag.element_size() < 4 else mag


def magnitude_trim_(
    deltas: Sequence[torch.Tensor], densities: Sequence[float], rescale: bool = False
) -> list[torch.Tensor]:
    """Keep exactly the k = max(1, floor(density * n)) entries of each tensor largest in magnitude and
    zero the rest, in place (TIES' trim); ``rescale`` restores each tensor's L1 norm afterwards."""
    for delta, density in zip(deltas, densities, strict=True):
        n = delta.numel()
        if density >= 1.0 or n == 0:
            continue
        if density <= 0.0:
            delta.zero_()
            continue
        l1 = delta.abs().sum() if rescale else None
        delta.mul_(top_mask(magnitudes(delta), max(1, int(density * n))).view(delta.shape))
        if l1 is not None:
            l1_match_(delta, l1)
    return list(deltas)


def outlier_trim_(delta: torch.Tensor, density: float, gamma: float, rescale: bool = False) -> torch.Tensor:
    """Model Breadcrumbs' mask, in place: drop the ``gamma`` fraction largest in magnitude (outliers) and
    the smallest, keeping ``density``. When density + gamma > 1 fewer outliers go, so that density holds.
    Kept: magnitude ranks (ascending) in [n_bot, n_bot + k) with k = floor(density n)."""
    n = delta.numel()
    if density >= 1.0 or n == 0:
        return delta
    k = int(density * n)
    n_bot = max(0, n - k - int(gamma * n))
    mag = magnitudes(delta)
    keep = top_mask(mag, n - n_bot).logical_and_(~top_mask(mag, n - n_bot - k))
    l1 = delta.abs().sum() if rescale else None
    delta.mul_(keep.view(delta.shape))
    return delta if l1 is None else l1_match_(delta, l1)


def random_drop_(
    delta: torch.Tensor, density: float, gen: torch.Generator, rescale: Rescale = True
) -> torch.Tensor:
    """Keep each entry with probability ``density`` (DARE), in place, then rescale (see DropParams)."""
    if density >= 1.0:
        return delta
    if density <= 0.0:
        return delta.zero_()
    l1 = delta.abs().sum() if rescale == "l1" else None
    keep = torch.rand(delta.shape, generator=gen, device=delta.device, dtype=torch.float32) < density
    delta.mul_(keep)
    if l1 is not None:
        return l1_match_(delta, l1)
    return delta.div_(density) if rescale is True else delta


def dare_deltas(
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor,
    mp: Sequence[SparseModelParams],
    ctx: MergeContext,
    rescale: Rescale,
) -> list[torch.Tensor]:
    """Task vectors with DARE's seeded random drop, in place in the (operator-owned) inputs."""
    gen = ctx.generator(base.device)
    return [random_drop_(d, m.density, gen, rescale) for d, m in zip(deltas_(tensors, base), mp, strict=True)]


def sign_consensus(trimmed: Sequence[torch.Tensor], weights: Sequence[float], p: SignParams) -> torch.Tensor:
    """TIES' elect + disjoint merge over (already sparsified) task vectors; consumes ``trimmed``.

    An entry of a (weighted) task vector agrees with the elected sign when its product with the
    elected quantity is positive: entries that are zero, or whose elected sign is zero, add
    nothing either way, so this equals comparing signs while needing no sign tensors.
    """
    for t, w in zip(trimmed, weights, strict=True):
        if w != 1.0:
            t.mul_(w)
    if p.majority == "sum":
        elected = torch.add(trimmed[0], trimmed[1]) if len(trimmed) > 1 else trimmed[0].clone()
        for t in trimmed[2:]:
            elected.add_(t)
    else:
        elected = torch.sign(trimmed[0])
        for t in trimmed[1:]:
            elected.add_(torch.sign(t))
    merged: torch.Tensor | None = None
    divisor = torch.zeros_like(elected) if p.normalize else None
    agree = torch.empty_like(elected)
    for t, w in zip(trimmed, weights, strict=True):
        torch.mul(t, elected, out=agree).gt_(0)  # 1.0 where t agrees with the elected sign, else 0.0
        t.mul_(agree)
        merged = t if merged is None else merged.add_(t)
        if divisor is not None:
            divisor.add_(agree, alpha=w)
    assert merged is not None
    if divisor is not None:
        merged.div_(divisor.add_(divisor == 0))  # no agreeing model: merged is 0 there, divide by 1
    return merged
