"""dare_ties: random drop with rescale (DARE, Yu et al., 2024), then TIES' sign election and disjoint merge."""

from __future__ import annotations

from pydantic import Field

from mergeflow.merge.base import deltas_, merge_operator
from mergeflow.merge.sparsify import SignParams, SparseModelParams, random_drop_, sign_consensus


class DareTiesParams(SignParams):
    rescale: bool = Field(True, description="Scale surviving entries by 1/density (DARE's 1/(1-p)).")


@merge_operator("dare_ties", params=DareTiesParams, model_params=SparseModelParams, needs_base=True, work=4.0,
                elementwise=True)
def dare_ties(tensors, base, p: DareTiesParams, mp, ctx):
    """base + lambda * disjoint_mean(sign-elected, randomly dropped and rescaled task vectors); seeded."""
    gen = ctx.generator(base.device)
    dropped = [random_drop_(d, m.density, gen, p.rescale) for d, m in zip(deltas_(tensors, base), mp, strict=True)]
    return sign_consensus(dropped, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
