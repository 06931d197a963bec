"""Training pairs for Deep-Align, as in the paper: a zoo network against a copy of itself that was
augmented (noise, dropped weights, positive rescaling of ReLU units) and randomly permuted, whose aligning
permutation is known (the supervised pairs); and two different zoo networks, whose alignment is judged by the
reconstruction and the loss along the path between them (the unsupervised pairs)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mergeflow.deepalign.mlp import Weights, permute


@dataclass(frozen=True)
class Augment:
    noise: float = 0.1  # Gaussian noise, relative to each layer's standard deviation (upper end of a uniform)
    dropout: float = 0.1  # fraction of weights set to zero (upper end of a uniform)
    rescale: float = 0.5  # log-uniform scale in [1/(1+r), 1+r] per hidden ReLU unit (0: none)


def augment(w: Weights, aug: Augment, gen: torch.Generator, relu: bool = True) -> Weights:
    """A noisy, partly dropped, rescaled copy: its units still correspond one to one to ``w``'s."""
    out = []
    noise = float(torch.rand((), generator=gen)) * aug.noise
    drop = float(torch.rand((), generator=gen)) * aug.dropout
    for wt, b in w:
        sd = float(wt.std())
        wt = wt + noise * sd * torch.randn(wt.shape, generator=gen)
        b = b + noise * sd * torch.randn(b.shape, generator=gen)
        wt = wt * (torch.rand(wt.shape, generator=gen) >= drop)
        out.append((wt, b))
    if (
        relu and aug.rescale > 0
    ):  # ReLU(s x) = s ReLU(x), s > 0: scale unit rows by s, the next columns by 1/s
        top = torch.log1p(torch.tensor(aug.rescale))
        for j in range(len(out) - 1):
            s = torch.exp((2 * torch.rand(out[j][0].shape[0], generator=gen) - 1) * top)
            out[j] = (out[j][0] * s[:, None], out[j][1] * s)
            out[j + 1] = (out[j + 1][0] / s, out[j + 1][1])
    return out


def random_perms(sizes: Sequence[int], gen: torch.Generator) -> list[torch.Tensor]:
    return [torch.randperm(d, generator=gen) for d in sizes[1:-1]]


def inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(perm))
    return inv


def supervised_pair(
    w: Weights, sizes: Sequence[int], aug: Augment, gen: torch.Generator, relu: bool = True
) -> tuple[Weights, list[torch.Tensor]]:
    """(B, target): B is ``w`` augmented and scrambled; ``permute(B, target)`` is the augmented copy in
    ``w``'s order."""
    scramble = random_perms(sizes, gen)
    b = permute(augment(w, aug, gen, relu), scramble)
    return b, [inverse(p) for p in scramble]
