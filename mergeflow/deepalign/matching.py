"""Optimisation baselines for aligning two MLPs: weight matching (coordinate descent over the hidden layers,
as in Git Re-Basin) and activation matching (correlation of hidden units on data), both with an exact linear
assignment per layer. Permutations map B onto A: ``permute(B, perms)`` is B re-parameterised to sit near A."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mergeflow.align.permute import assignment
from mergeflow.deepalign.mlp import Weights, hidden_activations, permute


def identity(sizes: Sequence[int]) -> list[torch.Tensor]:
    return [torch.arange(d) for d in sizes[1:-1]]


def objective(a: Weights, b: Weights, perms: Sequence[torch.Tensor]) -> float:
    """sum over layers of <A_l, P(B)_l> (weights and biases): what weight matching maximises."""
    pb = permute(b, perms)
    return float(sum((wa * wb).sum() + (ba * bb).sum() for (wa, ba), (wb, bb) in zip(a, pb, strict=True)))


def distance(a: Weights, b: Weights) -> float:
    """Euclidean distance between two parameter vectors."""
    sq = sum(((wa - wb) ** 2).sum() + ((ba - bb) ** 2).sum() for (wa, ba), (wb, bb) in zip(a, b, strict=True))
    return float(torch.as_tensor(sq).sqrt())


@dataclass
class Matched:
    perms: list[torch.Tensor]
    iterations: int  # full sweeps over the hidden layers until no permutation changed
    objective: float


def weight_matching(
    a: Weights, b: Weights, init: Sequence[torch.Tensor] | None = None, max_sweeps: int = 100, seed: int = 0
) -> Matched:
    """Coordinate descent: each hidden layer's permutation solved exactly with the others fixed, layers in a
    random order per sweep, until a sweep changes nothing. ``init``: starting permutations (identity)."""
    a64 = [(w.double(), bias.double()) for w, bias in a]
    b64 = [(w.double(), bias.double()) for w, bias in b]
    perms = [p.clone() for p in init] if init is not None else [torch.arange(w.shape[0]) for w, _ in b[:-1]]
    gen = torch.Generator().manual_seed(seed)
    sweeps = 0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 (the count is returned)
        changed = False
        for j in torch.randperm(len(perms), generator=gen).tolist():
            wa, ba = a64[j]
            wb, bb = b64[j]
            if j > 0:
                wb = wb[:, perms[j - 1]]
            score = wb @ wa.T + torch.outer(bb, ba)  # rows: B's units, columns: A's
            na, nb = a64[j + 1][0], b64[j + 1][0]
            if j + 1 < len(perms):
                nb = nb[perms[j + 1]]
            score = score + nb.T @ na
            new = assignment(score)
            if not torch.equal(new, perms[j]):
                perms[j], changed = new, True
        if not changed:
            break
    return Matched(perms, sweeps, objective(a64, b64, perms))


def activation_matching(
    a: Weights, b: Weights, x: torch.Tensor, activation: str = "relu", eps: float = 1e-8
) -> list[torch.Tensor]:
    """Each hidden layer's units paired by the correlation of their activations on ``x`` (both models on the
    same inputs), one exact assignment per layer."""
    perms = []
    with torch.no_grad():
        for ha, hb in zip(
            hidden_activations(a, x, activation), hidden_activations(b, x, activation), strict=True
        ):
            ha, hb = ha.double(), hb.double()
            za = (ha - ha.mean(0)) / (ha.std(0) + eps)
            zb = (hb - hb.mean(0)) / (hb.std(0) + eps)
            perms.append(assignment(zb.T @ za / x.shape[0]))
    return perms
