"""FFN permutations learned on candidate edges (refine's layered mode).

The whole-model refinement keeps a dense f x f latent matrix per FFN; at a 7B model's f = 14336 that is
1.6 GB per layer in float64 (three times it with Adam's state) and a dense assignment per layer per step.
Here the latent lives only on candidate edges (new unit i may take old unit j): each unit's k most similar
units of the other model, both ways, and the identity (so a full matching always exists). Forward, the
permutation is the maximum-weight matching of the latent on those edges (a sparse assignment), applied by
indexing; backward, the straight-through gradient of the dense estimator restricted to the edges:
d loss / d z[i, j] = sum over the FFN's parts of <gradient of new unit i, old unit j>, computed in blocks of
edges. With every edge a candidate (k >= f) this is the dense estimator's gradient exactly.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

import numpy as np
import torch

from mergeflow.align import assign, lap
from mergeflow.align.permute import FFN_ROWS, unit_parts
from mergeflow.align.unit_match import SPARSE_FROM

EDGE_BLOCK_ELEMS = 1 << 24  # gathered elements per block of the backward's edge dot products
DENSE_BELOW = SPARSE_FROM  # FFN units: below this the dense solver is fast and exact (as in alignment)
WORKERS = max(
    1, (os.cpu_count() or 1) - 1
)  # processes matching layers in parallel (the sparse solver holds the GIL)
LEVELS = 1 << 20  # integer levels of the latent's range the matching is solved on (see assign.solve_edges)


class EdgePerm:
    """A latent score per candidate edge (new unit ``new[e]`` takes old unit ``old[e]``), started at the
    identity (1 on its edges, 0 elsewhere), and the matching it gives."""

    def __init__(self, new: np.ndarray, old: np.ndarray, n: int, device: torch.device) -> None:
        self.n = n
        self.new_np, self.old_np = new.astype(np.int64), old.astype(np.int64)
        self.new = torch.as_tensor(self.new_np, device=device)
        self.old = torch.as_tensor(self.old_np, device=device)
        self.z = (self.new == self.old).to(torch.float64).requires_grad_(True)

    def hard(self) -> torch.Tensor:
        """perm: new unit i takes old unit perm[i], maximising the summed latent of the chosen edges: exactly
        by the dense solver below DENSE_BELOW units (edges missing from the matrix score far below any
        present), else by the sparse one on integer levels of the latent."""
        w = self.z.detach().cpu().numpy()
        if self.n < DENSE_BELOW:
            score = np.full((self.n, self.n), w.min() - 1.0 - self.n * (w.max() - w.min()))
            score[self.old_np, self.new_np] = w
            return assign.dense(torch.as_tensor(score)).to(self.new.device)
        perm = assign.solve_edges(self.old_np, self.new_np, w, self.n, levels=LEVELS)
        return torch.as_tensor(perm, device=self.new.device)


class Matcher:
    """Each step's matchings of all layers: the sparse ones (DENSE_BELOW units or more) in a pool of spawned
    worker processes when there are two or more of them and WORKERS allows, each worker holding the layers'
    edges from the start (a step sends only the latents); otherwise in this process. A context manager: the
    pool is shut down on the way out."""

    def __init__(self, edges: list[EdgePerm | None]) -> None:
        self.edges = edges
        self.sparse = [k for k, e in enumerate(edges) if e is not None and e.n >= DENSE_BELOW]
        self.pool: ProcessPoolExecutor | None = None
        if len(self.sparse) >= 2 and WORKERS >= 2:
            held = {
                k: (e.old_np, e.new_np, e.n)
                for k, e in enumerate(edges)
                if e is not None and k in self.sparse
            }
            self.pool = ProcessPoolExecutor(
                min(WORKERS, len(self.sparse)),
                mp_context=get_context("spawn"),
                initializer=lap.hold,
                initargs=(held,),
            )

    def __enter__(self) -> Matcher:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def hard(self) -> list[torch.Tensor | None]:
        """Every layer's current matching (None where permutations are not learned)."""
        if self.pool is None:
            return [None if e is None else e.hard() for e in self.edges]
        futures = {
            k: self.pool.submit(lap.match_held, k, e.z.detach().cpu().numpy(), LEVELS)
            for k, e in enumerate(self.edges)
            if k in self.sparse and e is not None
        }
        out: list[torch.Tensor | None] = []
        for k, e in enumerate(self.edges):
            if e is None:
                out.append(None)
            elif k in futures:
                out.append(torch.as_tensor(futures[k].result(), device=e.new.device))
            else:
                out.append(e.hard())
        return out


def candidate_edges(
    local: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(new, old): each anchor unit's and each local unit's ``k`` most similar units of the other layer by
    their weights (gate/up rows, biases, down columns; canonical layers), and the identity. The similarity
    is made a block of rows at a time."""
    parts = [(lo.float(), an.float()) for lo, an in zip(unit_parts(local), unit_parts(anchor), strict=True)]
    n = parts[0][0].shape[0]

    def blocks() -> Any:
        for i in range(0, n, assign.BLOCK):
            yield i, sum(lo[i : i + assign.BLOCK] @ an.T for lo, an in parts)

    old, new = assign.candidates(blocks(), n, min(k, n))  # rows: local (old), columns: anchor (new)
    return new, old


class _Gathered(torch.autograd.Function):
    """The FFN's parts with their units re-ordered by ``perm``; the straight-through gradient goes to the
    edge latents ``z`` (the parts themselves are constants of the refinement)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        z: torch.Tensor,
        perm: torch.Tensor,
        new: torch.Tensor,
        old: torch.Tensor,
        *parts: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(new, old, *parts)
        return tuple(p.index_select(0, perm) for p in parts)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        new, old, *parts = ctx.saved_tensors
        width = max(1, sum(p[0].numel() for p in parts))
        step = max(1, EDGE_BLOCK_ELEMS // width)
        gz = torch.zeros(len(new), dtype=torch.float64, device=new.device)
        for s in range(0, len(new), step):
            ni, oi = new[s : s + step], old[s : s + step]
            total = None
            for g, p in zip(grads, parts, strict=True):
                if g is None:
                    continue
                dots = (
                    g.index_select(0, ni).reshape(len(ni), -1) * p.index_select(0, oi).reshape(len(oi), -1)
                ).sum(1)
                total = dots if total is None else total + dots
            if total is not None:
                gz[s : s + step] = total.double()
        return (gz, None, None, None, *(None for _ in parts))


def permuted_by_edges(edges: EdgePerm, perm: torch.Tensor) -> Any:
    """A ``permute`` for ``transform_layer``: the canonical FFN re-ordered by ``perm`` (the edges' current
    matching), differentiable in the edges' latents."""

    def permute(canon: dict[str, torch.Tensor]) -> None:
        roles = [r for r in FFN_ROWS if r in canon]
        parts = [canon[r] for r in roles] + [canon["down"].T]
        out = _Gathered.apply(edges.z, perm, edges.new, edges.old, *parts)
        for r, t in zip(roles, out, strict=False):
            canon[r] = t
        canon["down"] = out[-1].T

    return permute
