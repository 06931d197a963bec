"""ties: trim, elect sign, disjoint merge (Yadav et al., 2023, "TIES-Merging")."""

from __future__ import annotations

from mergeflow.merge.base import deltas_, merge_operator
from mergeflow.merge.sparsify import (
    SignParams,
    SparseModelParams,
    TrimRescaleParams,
    magnitude_trim_,
    sign_consensus,
)


class TiesParams(SignParams, TrimRescaleParams):
    pass


@merge_operator("ties", params=TiesParams, model_params=SparseModelParams, needs_base=True, work=4.0)
def ties(tensors, base, p: TiesParams, mp, ctx):
    """base + lambda * disjoint_mean(sign-elected, magnitude-trimmed task vectors)."""
    trimmed = magnitude_trim_(deltas_(tensors, base), [m.density for m in mp], p.rescale)
    return sign_consensus(trimmed, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
