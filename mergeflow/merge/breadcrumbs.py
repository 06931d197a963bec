"""breadcrumbs: task arithmetic over task vectors with both tails masked (Davari & Belilovsky, 2023)."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import deltas_, merge_operator, model_weights, weighted_sum
from mergeflow.merge.sparsify import SparseModelParams, TrimRescaleParams, outlier_trim_
from mergeflow.merge.task_arithmetic import TaskArithmeticParams


class BreadcrumbsModelParams(SparseModelParams):
    gamma: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of entries largest in magnitude dropped as "
        "outliers (fewer when density + gamma > 1).",
    )


class BreadcrumbsParams(TaskArithmeticParams, TrimRescaleParams):
    pass


def outlier_deltas(tensors, base, mp, rescale: bool = False) -> list:
    return [
        outlier_trim_(d, m.density, m.gamma, rescale) for d, m in zip(deltas_(tensors, base), mp, strict=True)
    ]


@merge_operator(
    "breadcrumbs", params=BreadcrumbsParams, model_params=BreadcrumbsModelParams, needs_base=True, work=3.0
)
def breadcrumbs(tensors, base, p: BreadcrumbsParams, mp, ctx):
    """base + lambda * sum_i w_i mask_i(x_i - base), each mask dropping the gamma largest and the smallest entries."""
    trimmed = outlier_deltas(tensors, base, mp, p.rescale)
    return weighted_sum(trimmed, model_weights(mp, p.normalize, ctx)).mul_(p.lambda_).add_(base)
