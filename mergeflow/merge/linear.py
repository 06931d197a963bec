"""linear: weighted average of the models."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator, weighted_sum


class LinearParams(OpParams):
    normalize: bool = Field(True, description="Divide by the sum of the weights, so weights need not sum to 1.")


class Weight(OpParams):
    weight: float = Field(1.0, description="Weight of this model.")


@merge_operator("linear", params=LinearParams, model_params=Weight, work=1.0, elementwise=True)
def linear(tensors, base, p: LinearParams, mp, ctx):
    """Weighted average: sum_i w_i x_i / sum_i w_i (or the plain weighted sum without normalize)."""
    weights = [m.weight for m in mp]
    total = sum(weights)
    if p.normalize:
        if abs(total) < 1e-12:
            raise ValueError(f"{ctx.tensor}: linear weights sum to 0; set normalize: false or change weights")
        weights = [w / total for w in weights]
    return weighted_sum(tensors, weights)
