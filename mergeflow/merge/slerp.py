"""slerp: spherical linear interpolation between two models (Shoemake, 1985), in torch on the compute device."""

from __future__ import annotations

import math

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator, piece_sums


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


def _sums(tensors, base):
    """||a||^2, ||b||^2 and <a, b> of (a piece of) the two tensors, in float64."""
    a, b = tensors
    return torch.stack([torch.dot(a, a), torch.dot(b, b), torch.dot(a, b)]).double()


def coefficients(sums: torch.Tensor, t: float, colinear_threshold: float) -> tuple[float, float]:
    """(s0, s1) with slerp(a, b) = s0 a + s1 b, from the tensors' sums (see ``_sums``); linear when nearly
    colinear or when either tensor is zero."""
    aa, bb, ab = (float(x) for x in sums)
    na, nb = math.sqrt(aa), math.sqrt(bb)
    if na == 0.0 or nb == 0.0:
        return 1 - t, t
    dot = min(max(ab / (na * nb), -1.0), 1.0)
    if abs(dot) > colinear_threshold:
        return 1 - t, t
    theta = math.acos(dot)
    return math.sin((1 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)


@merge_operator(
    "slerp", params=SlerpParams, min_models=2, max_models=2, work=2.0, pointwise=True, reduce=_sums
)
def slerp(tensors, base, p: SlerpParams, mp, ctx):
    """Interpolate along the great circle between the two flattened tensors; linear when nearly colinear."""
    a, b = tensors
    # the angle from three sums over the whole tensors (float32 pieces added in float64; given by the executor
    # when it feeds the operator pieces), then one pointwise pass
    s0, s1 = coefficients(piece_sums(_sums, tensors, base, ctx), p.t, p.colinear_threshold)
    return (a * s0).add_(b, alpha=s1)  # inputs left as they are: pieces may be views of shared values
