"""Sinkhorn re-basin (Pena et al., CVPR 2023), the third optimisation baseline of the Deep-Align paper: each
hidden layer's permutation is a learned score matrix, made a soft permutation by Sinkhorn; the scores are
trained by gradient descent on the task loss at the midpoint between A and the softly permuted B (hard
permutations in the forward pass, the soft ones' gradients in the backward pass: straight-through), then
rounded by linear assignment."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from mergeflow.align.permute import assignment
from mergeflow.deepalign.encoder import sinkhorn
from mergeflow.deepalign.mlp import Weights, forward, lerp, soft_permute


def _hard(log: torch.Tensor) -> torch.Tensor:
    perm = assignment(log.detach().T.double())
    return F.one_hot(perm, log.shape[0]).to(log.dtype)


def sinkhorn_rebasin(
    a: Weights,
    b: Weights,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 200,
    lr: float = 0.1,
    batch: int = 128,
    seed: int = 0,
    init: list[torch.Tensor] | None = None,
    activation: str = "relu",
) -> list[torch.Tensor]:
    """Permutations of ``b``'s hidden units toward ``a`` found by minimising the midpoint loss on (x, y)."""
    gen = torch.Generator().manual_seed(seed)
    scores = []
    for j, (w, _b) in enumerate(b[:-1]):
        d = w.shape[0]
        s = torch.zeros(d, d)
        if init is not None:  # start near a given permutation
            s[torch.arange(d), init[j]] = 1.0
        scores.append(s.requires_grad_())
    opt = torch.optim.Adam(scores, lr=lr)
    for _ in range(steps):
        logs = [sinkhorn(s * 10.0) for s in scores]
        soft = [lg.exp() for lg in logs]
        mats = [h + p - p.detach() for h, p in zip([_hard(lg) for lg in logs], soft, strict=True)]
        rows = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        loss = F.cross_entropy(forward(lerp(a, soft_permute(b, mats), 0.5), x[rows], activation), y[rows])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [assignment(s.detach().T.double()) for s in scores]
