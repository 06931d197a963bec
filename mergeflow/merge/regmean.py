"""regmean: regression mean (Jin et al., 2023, "Dataless Knowledge Fusion by Merging Weights of
Language Models"): for a linear layer, the weight minimising sum_i ||X_i W^T - X_i W_i^T||^2."""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import StatsFallbackParams, merge_operator


class RegMeanParams(StatsFallbackParams):
    alpha: float = Field(
        0.9,
        ge=0.0,
        le=1.0,
        description="Scale of the Gram matrices' off-diagonal entries "
        "(the diagonal is kept); 1 is the exact least-squares solution, 0 a diagonal weighting.",
    )
    ridge: float = Field(
        1e-6,
        ge=0.0,
        description="Added to the summed Gram's diagonal, relative to its mean "
        "diagonal entry, so that the solve is stable.",
    )


def _reduced(g: torch.Tensor, alpha: float) -> torch.Tensor:
    if alpha == 1.0:
        return g
    return g.mul(alpha).add_(torch.diag_embed(torch.diagonal(g)), alpha=1.0 - alpha)


@merge_operator("regmean", params=RegMeanParams, work=6.0, stats="gram")
def regmean(tensors, base, p: RegMeanParams, mp, ctx):
    """(sum_i W_i G_i)(sum_i G_i)^-1 with off-diagonals of each G_i scaled by alpha; float64 (statistics: gram)."""
    dev = tensors[0].device
    wide = torch.float64 if dev.type != "mps" else torch.float32
    gsum = None
    rhs = None
    for w, g in zip(tensors, ctx.stats, strict=True):
        g = _reduced(g.to(wide), p.alpha)
        w = w.to(wide)
        term = g @ w if ctx.transposed else w @ g  # [in, out] = G W, or [out, in] = W G
        rhs = term if rhs is None else rhs.add_(term)
        gsum = g.clone() if gsum is None else gsum.add_(g)  # statistics are inputs: never modified
    assert gsum is not None and rhs is not None  # an operator always gets at least one model
    n = gsum.shape[0]
    gsum.diagonal().add_(p.ridge * float(gsum.diagonal().mean().clamp(min=1e-30)))
    try:
        # [in, out]: W = G^-1 R; [out, in]: W = R G^-1, i.e. G W^T = R^T (G symmetric)
        out = torch.linalg.solve(gsum, rhs) if ctx.transposed else torch.linalg.solve(gsum, rhs.T).T
    except RuntimeError as exc:
        raise ValueError(f"the summed Gram matrix ({n}x{n}) is singular; raise ridge ({exc})") from None
    return out.to(tensors[0].dtype)
