"""rotate: per-head orthogonal Procrustes on the QK and VO circuits.

q.k is unchanged when the same orthogonal R acts on a head's query and key rows, and O V is
unchanged when R acts on V's rows and R^T on O's columns. Under grouped-query attention a key
(value) head is shared by its group of query heads, so there is one R per key/value head, fitted
to the whole group. Under RoPE only maps commuting with the position rotations keep scores
exact: one angle per frequency plane. Biases move with their rows.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.align.base import Found, Layer, StepParams, align_step, heads, qk_fixed
from mergeflow.align.procrustes import procrustes, rope_procrustes
from mergeflow.arch.spec import Geometry


class RotateParams(StepParams):
    qk: bool = Field(True, description="Rotate query/key heads (one rotation per key/value head).")
    vo: bool = Field(True, description="Rotate value/output heads (one rotation per key/value head).")


def _check(geom: Geometry, p: RotateParams, family: str) -> str | None:
    fixed = qk_fixed(geom, p.qk, family, "rotate: {qk: false, vo: true}")
    if fixed:
        return fixed
    if p.qk and geom.qk_norm:
        return (
            f"{family} normalises queries and keys per head (QK-norm), which a general rotation does not "
            "commute with; use rotate: {qk: false, vo: true} (value/output rotation stays exact)"
        )
    return None


def _outer(layer: Layer, other: Layer, role: str, rows: slice) -> torch.Tensor | None:
    if role not in layer:
        return None
    return torch.outer(layer[role][rows], other[role][rows])


def rotate_qk(local: Layer, anchor: Layer, g: Geometry) -> None:
    for j in range(g.h_kv):
        kj = heads(g.h_kv, g.d_h, j)
        qs = [heads(g.h_q, g.d_h, i) for i in range(j * g.group, (j + 1) * g.group)]
        m = local["k"][kj] @ anchor["k"][kj].T  # (d_h, d_h)
        for qi in qs:
            m += local["q"][qi] @ anchor["q"][qi].T
        for role, rows in [("k.b", kj)] + [("q.b", qi) for qi in qs]:
            extra = _outer(local, anchor, role, rows)
            if extra is not None:
                m += extra
        r = rope_procrustes(m, g) if g.rope != "none" else procrustes(m)
        for role, rows in [("k", kj), ("k.b", kj)] + [(x, qi) for qi in qs for x in ("q", "q.b")]:
            if role in local:
                local[role][rows] = r @ local[role][rows]


def rotate_vo(local: Layer, anchor: Layer, g: Geometry) -> None:
    for j in range(g.h_kv):
        vj = heads(g.h_kv, g.d_h, j)
        os_ = [heads(g.h_q, g.d_h, i) for i in range(j * g.group, (j + 1) * g.group)]
        m = local["v"][vj] @ anchor["v"][vj].T
        for oi in os_:
            m += local["o"][:, oi].T @ anchor["o"][:, oi]
        extra = _outer(local, anchor, "v.b", vj)
        if extra is not None:
            m += extra
        r = procrustes(m)
        local["v"][vj] = r @ local["v"][vj]
        if "v.b" in local:
            local["v.b"][vj] = r @ local["v.b"][vj]
        for oi in os_:
            local["o"][:, oi] = local["o"][:, oi] @ r.T


@align_step("rotate", RotateParams, _check)
def rotate(local: Layer, anchor: Layer, g: Geometry, p: RotateParams, found: Found = None) -> None:
    """Per-head orthogonal Procrustes (SVD) on query/key and value/output; per-plane angles under RoPE."""
    if p.qk:
        rotate_qk(local, anchor, g)
    if p.vo:
        rotate_vo(local, anchor, g)
