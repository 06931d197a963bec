"""nearswap: take the second model's value where it is close to the base, the base's elsewhere."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator


class NearswapParams(OpParams):
    t: float = Field(
        0.001,
        ge=0.0,
        description="Closeness scale: weight of the second model is min(1, t / |base - other|) per entry.",
    )


@merge_operator(
    "nearswap", params=NearswapParams, needs_base=True, min_models=1, max_models=1, work=2.0, elementwise=True
)
def nearswap(tensors, base, p: NearswapParams, mp, ctx):
    """w other + (1 - w) base with w = clamp(t / |base - other|, 0, 1) entry by entry."""
    (other,) = tensors
    w = (base - other).abs_().clamp_(min=1e-6).reciprocal_().mul_(p.t).clamp_(0.0, 1.0)
    return other.sub_(base).mul_(w).add_(base)
