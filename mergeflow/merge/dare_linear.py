"""dare_linear: random drop with rescale (DARE, Yu et al., 2024), then a weighted sum of task vectors."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, deltas_, merge_operator, weighted_sum
from mergeflow.merge.sparsify import SparseModelParams, random_drop_


class DareLinearParams(OpParams):
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    normalize: bool = Field(False, description="Divide the weighted sum of task vectors by the sum of weights.")
    rescale: bool = Field(True, description="Scale surviving entries by 1/density (DARE's 1/(1-p)).")


@merge_operator("dare_linear", params=DareLinearParams, model_params=SparseModelParams, needs_base=True, work=3.0,
                elementwise=True)
def dare_linear(tensors, base, p: DareLinearParams, mp, ctx):
    """base + lambda * sum_i w_i drop(x_i - base); each entry kept with probability density; seeded."""
    gen = ctx.generator(base.device)
    dropped = [random_drop_(d, m.density, gen, p.rescale) for d, m in zip(deltas_(tensors, base), mp, strict=True)]
    weights = [m.weight for m in mp]
    if p.normalize:
        total = sum(weights)
        if abs(total) < 1e-12:
            raise ValueError(f"{ctx.tensor}: dare_linear weights sum to 0 with normalize: true")
        weights = [w / total for w in weights]
    return weighted_sum(dropped, weights).mul_(p.lambda_).add_(base)
