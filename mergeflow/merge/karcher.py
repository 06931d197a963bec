"""karcher: the weighted Karcher (Frechet) mean of the models' directions on the sphere, scaled by their
weighted mean norm. For two models it is slerp; for more, the point that slerp-style averaging converges to."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator
from mergeflow.merge.linear import Weight


class KarcherParams(OpParams):
    max_iter: int = Field(20, ge=1, le=1000, description="Most Riemannian gradient steps.")
    tol: float = Field(
        1e-7, gt=0.0, description="Stop when the mean tangent step is shorter than this (radians)."
    )


@merge_operator("karcher", params=KarcherParams, model_params=Weight, min_models=1, work=4.0)
def karcher(tensors, base, p: KarcherParams, mp, ctx):
    """argmin_mu sum_i w_i angle(mu, x_i)^2 on the unit sphere, times sum_i w_i |x_i| / sum_i w_i."""
    shape = tensors[0].shape
    w = [m.weight for m in mp]
    total = sum(w)
    if total <= 0:
        raise ValueError(f"{ctx.tensor}: karcher weights must sum to a positive number")
    flat = [t.reshape(-1) for t in tensors]
    norms = [float(torch.linalg.vector_norm(x)) for x in flat]
    scale = sum(wi * ni for wi, ni in zip(w, norms, strict=True)) / total
    units = [x / n for x, n in zip(flat, norms, strict=True) if n > 0]
    wu = [wi for wi, n in zip(w, norms, strict=True) if n > 0]
    if not units:
        return tensors[0].zero_()
    mu = sum((wi * u for wi, u in zip(wu, units, strict=True)), torch.zeros_like(units[0]))
    if float(torch.linalg.vector_norm(mu)) < 1e-12:  # antipodal inputs: no unique mean, start from the first
        mu = units[0].clone()
    mu /= torch.linalg.vector_norm(mu)
    for _ in range(p.max_iter):
        step = torch.zeros_like(mu)
        for wi, u in zip(wu, units, strict=True):
            cos = min(max(float(torch.dot(mu, u)), -1.0), 1.0)
            theta = math.acos(cos)
            if theta > 1e-12:
                step.add_(u - cos * mu, alpha=wi * theta / math.sin(theta) / sum(wu))  # log map of u at mu
        length = float(torch.linalg.vector_norm(step))
        if length < p.tol:
            break
        mu = mu * math.cos(length) + step * (math.sin(length) / length)  # exp map
        mu /= torch.linalg.vector_norm(mu)
    return (mu * scale).reshape(shape)
