"""rescale: one scalar per key/value head on the QK and VO circuits (Q by a, K by 1/a; V by a, O by 1/a).

f(a) = ||a A - A2||^2 + ||B / a - B2||^2 is stationary where
||A||^2 a^4 - <A, A2> a^3 + <B, B2> a - ||B||^2 = 0. f grows without bound at 0 and at infinity
on both sides, so its global minimum is the real root with the lowest f, which may be negative
(a sign flip of both factors is still exact). a = 1 is feasible, so the result is never worse.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from mergeflow.align.base import Found, Layer, StepParams, align_step, dot, heads, qk_fixed, sq
from mergeflow.arch.spec import Geometry


class RescaleParams(StepParams):
    qk: bool = Field(True, description="Rescale query/key heads (one scalar per key/value head).")
    vo: bool = Field(True, description="Rescale value/output heads (one scalar per key/value head).")


def best_scale(
    a: list[torch.Tensor], a2: list[torch.Tensor], b: list[torch.Tensor], b2: list[torch.Tensor]
) -> float:
    """argmin_a ||a A - A2||^2 + ||B/a - B2||^2 over real a != 0 (A, B given as lists of blocks)."""
    aa = sum(sq(x) for x in a)
    ab = sum(dot(x, y) for x, y in zip(a, a2, strict=True))
    bb = sum(sq(x) for x in b)
    bb2 = sum(dot(x, y) for x, y in zip(b, b2, strict=True))
    if aa == 0.0 or bb == 0.0:
        return 1.0
    roots = np.roots([aa, -ab, 0.0, bb2, -bb])
    scale = max(abs(roots).max(), 1e-300)
    real = [float(r.real) for r in roots if abs(r.imag) <= 1e-9 * scale and r.real != 0.0]

    def f(x: float) -> float:
        return aa * x * x - 2 * ab * x + bb / (x * x) - 2 * bb2 / x

    return min(real + [1.0], key=f)


def _qk_blocks(layer: Layer, g: Geometry, j: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    kj = heads(g.h_kv, g.d_h, j)
    qs = [heads(g.h_q, g.d_h, i) for i in range(j * g.group, (j + 1) * g.group)]
    q = [layer[r][qi] for qi in qs for r in ("q", "q.b") if r in layer]
    k = [layer[r][kj] for r in ("k", "k.b") if r in layer]
    return q, k


def _vo_blocks(layer: Layer, g: Geometry, j: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    vj = heads(g.h_kv, g.d_h, j)
    v = [layer[r][vj] for r in ("v", "v.b") if r in layer]
    o = [layer["o"][:, heads(g.h_q, g.d_h, i)] for i in range(j * g.group, (j + 1) * g.group)]
    return v, o


def _check(g: Geometry, p: RescaleParams, family: str) -> str | None:
    fixed = qk_fixed(g, p.qk, family, "rescale: {qk: false, vo: true}")
    if fixed is None and p.qk and g.qk_norm == "full":
        return (
            f"{family} normalises each token's queries (keys) over all heads at once, so scaling one head's "
            "queries changes the others; use rescale: {qk: false, vo: true}"
        )
    return fixed


@align_step("rescale", RescaleParams, _check)
def rescale(local: Layer, anchor: Layer, g: Geometry, p: RescaleParams, found: Found = None) -> None:
    """One scalar per head (QK and VO), the global optimum of a quartic; may be negative; never worse than 1."""
    for blocks, on in ((_qk_blocks, p.qk), (_vo_blocks, p.vo)):
        if not on:
            continue
        for j in range(g.h_kv):
            a, b = blocks(local, g, j)
            a2, b2 = blocks(anchor, g, j)
            s = best_scale(a, a2, b, b2)
            if s != 1.0:
                for x in a:
                    x.mul_(s)  # views into the layer's tensors
                for x in b:
                    x.div_(s)
