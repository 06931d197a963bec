"""dare_linear: random drop with rescale (DARE, Yu et al., 2024), then a weighted sum of task vectors."""

from __future__ import annotations

from mergeflow.merge.base import merge_operator, model_weights, weighted_sum
from mergeflow.merge.sparsify import DropParams, SparseModelParams, dare_deltas
from mergeflow.merge.task_arithmetic import TaskArithmeticParams


class DareLinearParams(TaskArithmeticParams, DropParams):
    pass


@merge_operator(
    "dare_linear",
    params=DareLinearParams,
    model_params=SparseModelParams,
    needs_base=True,
    work=3.0,
    elementwise=True,
)
def dare_linear(tensors, base, p: DareLinearParams, mp, ctx):
    """base + lambda * sum_i w_i drop(x_i - base); each entry kept with probability density; seeded."""
    dropped = dare_deltas(tensors, base, mp, ctx, p.rescale)
    return weighted_sum(dropped, model_weights(mp, p.normalize, ctx)).mul_(p.lambda_).add_(base)
