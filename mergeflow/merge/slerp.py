"""slerp: spherical linear interpolation between two models (Shoemake, 1985), in torch on the compute device."""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator


class SlerpParams(OpParams):
    t: float = Field(0.5, ge=0.0, le=1.0, description="Interpolation factor: 0 gives the first model (the base, "
                     "if set), 1 the second.")
    colinear_threshold: float = Field(0.9995, gt=0.0, le=1.0, description="Above this |cosine| between the "
                                      "two tensors, fall back to linear interpolation.")


@merge_operator("slerp", params=SlerpParams, min_models=2, max_models=2, work=2.0)
def slerp(tensors, base, p: SlerpParams, mp, ctx):
    """Interpolate along the great circle between the two flattened tensors; linear when nearly colinear."""
    a, b = tensors
    t = p.t
    # the angle comes from the normalised directions, in float64 for a stable arccos
    na = torch.linalg.vector_norm(a, dtype=torch.float64)
    nb = torch.linalg.vector_norm(b, dtype=torch.float64)
    if na.item() == 0.0 or nb.item() == 0.0:
        return a.mul_(1 - t).add_(b, alpha=t)
    dot = (torch.dot(a.reshape(-1).double(), b.reshape(-1).double()) / (na * nb)).clamp(-1.0, 1.0).item()
    if abs(dot) > p.colinear_threshold:
        return a.mul_(1 - t).add_(b, alpha=t)
    theta = torch.arccos(torch.tensor(dot, dtype=torch.float64)).item()
    sin_theta = torch.sin(torch.tensor(theta, dtype=torch.float64)).item()
    s0 = torch.sin(torch.tensor((1 - t) * theta, dtype=torch.float64)).item() / sin_theta
    s1 = torch.sin(torch.tensor(t * theta, dtype=torch.float64)).item() / sin_theta
    return a.mul_(s0).add_(b, alpha=s1)
