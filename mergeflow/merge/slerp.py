"""slerp: spherical linear interpolation between two models (Shoemake, 1985), in torch on the compute device."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator


class SlerpParams(OpParams):
    t: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Interpolation factor: 0 gives the first model (the base, if set), 1 the second.",
    )
    colinear_threshold: float = Field(
        0.9995,
        gt=0.0,
        le=1.0,
        description="Above this |cosine| between the two tensors, fall back to linear interpolation.",
    )


@merge_operator("slerp", params=SlerpParams, min_models=2, max_models=2, work=2.0)
def slerp(tensors, base, p: SlerpParams, mp, ctx):
    """Interpolate along the great circle between the two flattened tensors; linear when nearly colinear."""
    a, b = tensors
    t = p.t
    # three reductions in the compute dtype (blocked sums); the angle itself in Python floats
    na = torch.linalg.vector_norm(a).item()
    nb = torch.linalg.vector_norm(b).item()
    if na == 0.0 or nb == 0.0:
        return a.mul_(1 - t).add_(b, alpha=t)
    dot = min(max(torch.dot(a.reshape(-1), b.reshape(-1)).item() / (na * nb), -1.0), 1.0)
    if abs(dot) > p.colinear_threshold:
        return a.mul_(1 - t).add_(b, alpha=t)
    theta = math.acos(dot)
    s0 = math.sin((1 - t) * theta) / math.sin(theta)
    s1 = math.sin(t * theta) / math.sin(theta)
    return a.mul_(s0).add_(b, alpha=s1)
