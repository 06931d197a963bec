"""della_linear: MagPrune (magnitude-ranked random drop, rescaled), then a weighted sum of task vectors."""

from __future__ import annotations

from mergeflow.merge.base import merge_operator, model_weights, weighted_sum
from mergeflow.merge.dare_linear import DareLinearParams
from mergeflow.merge.magprune import DellaModelParams, della_deltas


@merge_operator(
    "della_linear", params=DareLinearParams, model_params=DellaModelParams, needs_base=True, work=5.0
)
def della_linear(tensors, base, p: DareLinearParams, mp, ctx):
    """base + lambda * sum_i w_i magprune(x_i - base); seeded."""
    dropped = della_deltas(tensors, base, mp, ctx, p.rescale)
    return weighted_sum(dropped, model_weights(mp, p.normalize, ctx)).mul_(p.lambda_).add_(base)
