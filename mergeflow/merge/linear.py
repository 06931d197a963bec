"""linear: weighted average of the models."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator, model_weights, weighted_sum


class LinearParams(OpParams):
    normalize: bool = Field(
        True, description="Divide by the sum of the weights, so weights need not sum to 1."
    )


class Weight(OpParams):
    weight: float = Field(1.0, description="Weight of this model.")


@merge_operator(
    "linear", params=LinearParams, model_params=Weight, work=1.0, elementwise=True, pointwise=True
)
def linear(tensors, base, p: LinearParams, mp, ctx):
    """Weighted average: sum_i w_i x_i / sum_i w_i (or the plain weighted sum without normalize)."""
    return weighted_sum(tensors, model_weights(mp, p.normalize, ctx))
