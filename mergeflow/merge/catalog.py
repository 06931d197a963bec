"""Every merge operator that ships: one import line each registers it in OPERATORS."""

from mergeflow.merge import (  # noqa: F401
    breadcrumbs,
    breadcrumbs_ties,
    dare_linear,
    dare_ties,
    della,
    della_linear,
    fisher,
    karcher,
    linear,
    model_stock,
    multislerp,
    nearswap,
    nuslerp,
    passthrough,
    regmean,
    sce,
    slerp,
    task_arithmetic,
    ties,
)
from mergeflow.merge.base import OPERATORS, MergeOperator

__all__ = ["OPERATORS", "MergeOperator"]
