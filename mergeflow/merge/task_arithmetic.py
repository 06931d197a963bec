"""task_arithmetic: add a weighted sum of task vectors to the base model (Ilharco et al., 2023)."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator, model_weights, weighted_sum
from mergeflow.merge.linear import Weight


class TaskArithmeticParams(OpParams):
    lambda_: float = Field(1.0, alias="lambda", description="Scale of the merged task vector.")
    normalize: bool = Field(
        False, description="Divide the weighted sum of task vectors by the sum of weights."
    )


@merge_operator(
    "task_arithmetic",
    params=TaskArithmeticParams,
    model_params=Weight,
    needs_base=True,
    work=2.0,
    elementwise=True,
    pointwise=True,
)
def task_arithmetic(tensors, base, p: TaskArithmeticParams, mp, ctx):
    """base + lambda * sum_i w_i (x_i - base)."""
    weights = model_weights(mp, p.normalize, ctx)
    # sum_i w_i (x_i - base) = sum_i w_i x_i - (sum_i w_i) base: one accumulator, no task-vector copies
    merged = weighted_sum(tensors, weights).sub_(base, alpha=sum(weights))
    return merged.mul_(p.lambda_).add_(base)
