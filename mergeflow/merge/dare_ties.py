"""dare_ties: random drop with rescale (DARE, Yu et al., 2024), then TIES' sign election and disjoint merge."""

from __future__ import annotations

from mergeflow.merge.base import merge_operator
from mergeflow.merge.sparsify import DropParams, SignParams, SparseModelParams, dare_deltas, sign_consensus


class DareTiesParams(SignParams, DropParams):
    pass


@merge_operator(
    "dare_ties",
    params=DareTiesParams,
    model_params=SparseModelParams,
    needs_base=True,
    work=4.0,
    elementwise=True,
)
def dare_ties(tensors, base, p: DareTiesParams, mp, ctx):
    """base + lambda * disjoint_mean(sign-elected, randomly dropped and rescaled task vectors); seeded."""
    dropped = dare_deltas(tensors, base, mp, ctx, p.rescale)
    return sign_consensus(dropped, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
