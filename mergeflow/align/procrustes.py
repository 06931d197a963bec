"""Orthogonal Procrustes in closed form, free or restricted to the RoPE commutant."""

from __future__ import annotations

import torch

from mergeflow.arch.spec import Geometry


def procrustes(m: torch.Tensor) -> torch.Tensor:
    """argmax_{R in O(n)} tr(R M) = V U^T for M = U S V^T (reflections allowed: any orthogonal map is a symmetry)."""
    u, _s, vh = torch.linalg.svd(m)
    return vh.T @ u.T


def rope_procrustes(m: torch.Tensor, geom: Geometry) -> torch.Tensor:
    """argmax tr(R M) over maps that commute with every RoPE rotation: one 2x2 rotation per frequency
    plane (angle atan2(M_pq - M_qp, M_pp + M_qq)), a free orthogonal map on the pass-through dims."""
    d_h = geom.d_h
    r = torch.zeros(d_h, d_h, dtype=m.dtype, device=m.device)
    planes = geom.planes()
    if planes:
        p = torch.tensor([a for a, _ in planes], device=m.device)
        q = torch.tensor([b for _, b in planes], device=m.device)
        phi = torch.atan2(m[p, q] - m[q, p], m[p, p] + m[q, q])
        c, s = torch.cos(phi), torch.sin(phi)
        r[p, p], r[q, q], r[p, q], r[q, p] = c, c, -s, s
    rest = sorted(set(range(d_h)) - {i for pl in planes for i in pl})
    if rest:
        idx = torch.tensor(rest, device=m.device)
        r[idx.unsqueeze(1), idx.unsqueeze(0)] = procrustes(m[idx][:, idx])
    return r
