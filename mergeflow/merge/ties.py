"""ties: trim, elect sign, disjoint merge (Yadav et al., 2023, "TIES-Merging")."""

from __future__ import annotations

from mergeflow.merge.base import deltas_, merge_operator
from mergeflow.merge.sparsify import SignParams, SparseModelParams, magnitude_trim_, sign_consensus


@merge_operator("ties", params=SignParams, model_params=SparseModelParams, needs_base=True, work=4.0)
def ties(tensors, base, p: SignParams, mp, ctx):
    """base + lambda * disjoint_mean(sign-elected, magnitude-trimmed task vectors)."""
    trimmed = magnitude_trim_(deltas_(tensors, base), [m.density for m in mp])
    return sign_consensus(trimmed, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
