"""breadcrumbs_ties: Model Breadcrumbs' two-tailed mask, then TIES' sign election and disjoint merge."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import merge_operator
from mergeflow.merge.breadcrumbs import BreadcrumbsModelParams, outlier_deltas
from mergeflow.merge.sparsify import SignParams, TrimRescaleParams, sign_consensus


class BreadcrumbsTiesParams(SignParams, TrimRescaleParams):
    normalize: bool = Field(
        False,
        description="Divide by the summed weight of the models that agree in sign "
        "(the disjoint mean); false (mergekit's default here) gives the plain sum.",
    )


@merge_operator(
    "breadcrumbs_ties",
    params=BreadcrumbsTiesParams,
    model_params=BreadcrumbsModelParams,
    needs_base=True,
    work=4.0,
)
def breadcrumbs_ties(tensors, base, p: BreadcrumbsTiesParams, mp, ctx):
    """base + lambda * sign-elected merge of task vectors masked at both magnitude tails."""
    trimmed = outlier_deltas(tensors, base, mp, p.rescale)
    return sign_consensus(trimmed, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
