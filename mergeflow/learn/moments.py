"""Running moments of two activation sets, and the scores activation matching solves from them."""

from __future__ import annotations

from typing import Any

import torch


class Moments:
    """Running float64 sums of two activation sets seen row by row: counts, sums, squares, cross products."""

    def __init__(self, wa: int, wb: int, device: torch.device) -> None:
        z: dict[str, Any] = dict(dtype=torch.float64, device=device)
        self.n = 0
        self.sa, self.sb = torch.zeros(wa, **z), torch.zeros(wb, **z)
        self.qa, self.qb = torch.zeros(wa, **z), torch.zeros(wb, **z)
        self.ba = torch.zeros(wb, wa, **z)  # sum b a^T: rows source, columns anchor

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.to(torch.float64), b.to(torch.float64)
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.qa += (a * a).sum(0)
        self.qb += (b * b).sum(0)
        self.ba += b.T @ a

    def covariance(self) -> torch.Tensor:
        n = max(self.n, 1)
        return self.ba / n - torch.outer(self.sb / n, self.sa / n)

    def variances(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = max(self.n, 1)
        return (
            (self.qa / n - (self.sa / n) ** 2).clamp_min(0.0),
            (self.qb / n - (self.sb / n) ** 2).clamp_min(0.0),
        )

    def correlation(self) -> torch.Tensor:
        va, vb = self.variances()
        return self.covariance() / torch.outer(vb.sqrt(), va.sqrt()).clamp_min(1e-12)


def head_score(m: Moments, h_q: int, h_kv: int, d_h: int) -> torch.Tensor:
    """score[a, b] (source group a, anchor group b): per query head of the group, the nuclear norm of the
    heads' output cross-covariance over the square root of their total variances, summed."""
    cov = m.covariance()
    va, vb = m.variances()
    group = h_q // h_kv
    score = torch.zeros(h_kv, h_kv, dtype=torch.float64, device=cov.device)
    for a in range(h_kv):
        for b in range(h_kv):
            for t in range(group):
                ra = slice((a * group + t) * d_h, (a * group + t + 1) * d_h)
                rb = slice((b * group + t) * d_h, (b * group + t + 1) * d_h)
                scale = (vb[ra].sum() * va[rb].sum()).sqrt().clamp_min(1e-12)
                score[a, b] += torch.linalg.matrix_norm(cov[ra, rb], ord="nuc") / scale
    return score
