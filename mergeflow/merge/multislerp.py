"""multislerp: barycentric interpolation of several models on the hypersphere (mergekit's Multi-SLERP).

The models' directions (of their task vectors, when the recipe names a base) are averaged with the
weights and renormalised, then scaled by the weighted mean norm. (The tangent-space correction of
the original formulation sums to zero at the normalised weighted mean, so it is left out.)
"""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator
from mergeflow.merge.linear import Weight


class MultislerpParams(OpParams):
    normalize_weights: bool = Field(True, description="Divide the weights by their sum.")
    eps: float = Field(1e-8, gt=0.0, description="Below this norm a direction counts as zero.")


@merge_operator(
    "multislerp", params=MultislerpParams, model_params=Weight, min_models=1, work=3.0, optional_base=True
)
def multislerp(tensors, base, p: MultislerpParams, mp, ctx):
    """normalize(sum_i w_i x_i / |x_i|) * sum_i w_i |x_i| (x_i: task vectors when a base is set, plus the base)."""
    if len(tensors) == 1:
        return tensors[0]
    w = [m.weight for m in mp]
    if p.normalize_weights:
        total = sum(w)
        if abs(total) < 1e-12:
            raise ValueError(f"{ctx.tensor}: multislerp weights sum to 0")
        w = [x / total for x in w]
    xs = [t - base if base is not None else t for t in tensors]
    norms = [float(torch.linalg.vector_norm(x)) for x in xs]
    mean = sum((wi / (n + p.eps) * x for wi, x, n in zip(w, xs, norms, strict=True)), torch.zeros_like(xs[0]))
    mean_norm = float(torch.linalg.vector_norm(mean))
    if mean_norm < p.eps:
        if len(xs) != 2:
            raise ValueError(
                f"{ctx.tensor}: the weighted directions cancel (antipodal models); change the weights"
            )
        out = xs[0] * w[0] + xs[1] * w[1]
    else:
        out = mean.mul_(sum(wi * n for wi, n in zip(w, norms, strict=True)) / mean_norm)
    return out.add_(base) if base is not None else out
