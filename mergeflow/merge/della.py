"""della: MagPrune (magnitude-ranked random drop, rescaled), then TIES' sign election and disjoint merge."""

from __future__ import annotations

from mergeflow.merge.base import merge_operator
from mergeflow.merge.magprune import DellaModelParams, della_deltas
from mergeflow.merge.sparsify import DropParams, SignParams, sign_consensus


class DellaParams(SignParams, DropParams):
    pass


@merge_operator("della", params=DellaParams, model_params=DellaModelParams, needs_base=True, work=5.0)
def della(tensors, base, p: DellaParams, mp, ctx):
    """base + lambda * disjoint_mean(sign-elected, MagPrune-dropped task vectors); seeded."""
    dropped = della_deltas(tensors, base, mp, ctx, p.rescale)
    return sign_consensus(dropped, [m.weight for m in mp], p).mul_(p.lambda_).add_(base)
