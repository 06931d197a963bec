"""model_stock: interpolate the average of fine-tunes toward the base by their task vectors' angle
(Jang et al., 2024, "Model Stock")."""

from __future__ import annotations

import torch
from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator


class ModelStockParams(OpParams):
    filter_wise: bool = Field(False, description="One angle per row (output filter) instead of per tensor.")


@merge_operator("model_stock", params=ModelStockParams, needs_base=True, min_models=2, work=3.0)
def model_stock(tensors, base, p: ModelStockParams, mp, ctx):
    """t avg(x_i) + (1 - t) base, t = k cos / (1 + (k - 1) cos), cos the mean pairwise cosine of task vectors."""
    shape = base.shape
    flat = (
        (lambda t: t.reshape(t.shape[0] if t.dim() > 1 else 1, -1))
        if p.filter_wise
        else (lambda t: t.reshape(1, -1))
    )
    b = flat(base)
    offs = [flat(t) - b for t in tensors]  # (r, c) each
    cos = []
    for i, a in enumerate(offs):
        for c in offs[i + 1 :]:
            den = (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(c, dim=-1)).clamp(min=1e-6)
            cos.append(((a * c).sum(dim=-1) / den).clamp(-1, 1))
    k = len(tensors)
    cos_t = torch.stack(cos).mean(dim=0).unsqueeze(-1)  # (r, 1)
    den = 1 + (k - 1) * cos_t
    singular = den.abs() < 1e-6  # no finite estimate: keep the base there
    t = torch.where(singular, torch.zeros_like(cos_t), k * cos_t / torch.where(singular, 1.0, den))
    avg = sum(offs[1:], offs[0].clone()).div_(k).add_(b)
    return (t * avg + (1 - t) * b).reshape(shape)
