"""DELLA's MagPrune (Deep et al., 2024): random drop with keep probabilities that grow with magnitude."""

from __future__ import annotations

import torch
from pydantic import Field, model_validator

from mergeflow.merge.base import MergeContext, deltas_
from mergeflow.merge.sparsify import Rescale, SparseModelParams, l1_match_


class DellaModelParams(SparseModelParams):
    epsilon: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Spread of keep probabilities: from density - epsilon "
        "(smallest entry of a row) to density + epsilon (largest); 0 is DARE.",
    )

    @model_validator(mode="after")
    def _inside(self) -> DellaModelParams:
        if self.density < 1.0 and not (
            self.density - self.epsilon > 0.0 and self.density + self.epsilon <= 1.0
        ):
            raise ValueError("density - epsilon and density + epsilon must lie in (0, 1]")
        return self


def magprune_(
    delta: torch.Tensor, density: float, epsilon: float, gen: torch.Generator, rescale: Rescale = True
) -> torch.Tensor:
    """Within each row, rank entries by magnitude; keep each with probability density - epsilon + 2 epsilon
    rank / (n - 1) (seeded) and scale survivors by 1/probability, in place."""
    if density >= 1.0:
        return delta
    rows = delta.reshape(1, -1) if delta.dim() < 2 else delta.reshape(delta.shape[0], -1)  # (r, c)
    c = rows.shape[1]
    order = torch.argsort(rows.abs(), dim=1, stable=True)  # (r, c) ascending magnitude
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(c, device=delta.device).expand_as(order))
    prob = (density - epsilon) + (2 * epsilon / max(c - 1, 1)) * rank.to(torch.float32)
    keep = torch.rand(rows.shape, generator=gen, device=delta.device, dtype=torch.float32) < prob
    l1 = delta.abs().sum() if rescale == "l1" else None
    scale = keep / prob if rescale is True else keep.to(torch.float32)
    delta.mul_(scale.reshape(delta.shape).to(delta.dtype))
    return l1_match_(delta, l1) if l1 is not None else delta


def della_deltas(tensors, base, mp, ctx: MergeContext, rescale: Rescale) -> list[torch.Tensor]:
    gen = ctx.generator(base.device)
    return [
        magprune_(d, m.density, m.epsilon, gen, rescale)
        for d, m in zip(deltas_(tensors, base), mp, strict=True)
    ]
