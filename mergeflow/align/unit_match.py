"""Match the units of two layers by their feature rows (one row per unit, e.g. an FFN neuron's gate, up and
down weights): the permutation maximising the summed inner products of matched rows.

Three solvers, chosen by the permute step's ``solver``:
- ``dense``: the whole f x f similarity, scipy's dense assignment (the reference);
- ``sparse``: the whole similarity on the tensors' device, a sparse assignment on each row's and column's
  best candidates, certified optimal on the whole matrix (``mergeflow.align.assign``); same answer as dense;
- ``sketch``: candidates from the similarity of random projections of the rows to ``dims`` dimensions
  (f x f x dims multiply-adds instead of f x f x D), their exact similarity, the sparse assignment on them.
  Approximate (a pair outside the candidates cannot be matched) and not certified; never worse than the
  identity, whose edges are always candidates.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from mergeflow.align import assign

SKETCH_SEED = 0x5EED


def similarity(local: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """(f, f) inner products of the feature rows, in the features' dtype."""
    return local @ anchor.T


def match_units(
    local: torch.Tensor, anchor: torch.Tensor, solver: str = "dense", k: int = 8, dims: int = 512
) -> tuple[torch.Tensor, assign.Solve]:
    """perm with unit c of the result = unit perm[c] of ``local`` (rows of ``local`` and ``anchor``: one unit
    each, same width), and how the solve went."""
    if solver == "dense":
        return assign.dense(similarity(local, anchor)), assign.Solve(certified=True, dense=True)
    if solver == "sparse":
        return assign.certified(similarity(local, anchor), k)
    if solver == "sketch":
        return sketched(local, anchor, k, dims)
    raise ValueError(f"unknown solver {solver!r}")


def count_sketch(x: torch.Tensor, dims: int) -> torch.Tensor:
    """The rows of ``x`` (n, width) mapped to ``dims`` dimensions by a fixed count sketch: each input
    coordinate goes, with a random sign, into one random output coordinate (inner products are kept in
    expectation, with variance ~ |a|^2 |b|^2 / dims). One pass over ``x``: n x width additions, not the
    n x width x dims multiply-adds of a dense random projection. The same width always gets the same sketch."""
    width = x.shape[1]
    gen = torch.Generator().manual_seed(SKETCH_SEED + width)
    bucket = torch.randint(0, dims, (width,), generator=gen).to(x.device)
    sign = (torch.randint(0, 2, (width,), generator=gen) * 2 - 1).to(device=x.device, dtype=torch.float32)
    out = torch.zeros(x.shape[0], dims, device=x.device, dtype=torch.float32)
    for i in range(0, x.shape[0], assign.BLOCK):  # converted a block at a time: no float32 copy of x
        out[i : i + assign.BLOCK].index_add_(1, bucket, x[i : i + assign.BLOCK].float() * sign)
    return out


def edge_scores(local: torch.Tensor, anchor: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """<local[rows[e]], anchor[cols[e]]> for every edge e (sorted by row), in float32 products returned as
    float64: one sampled matrix product (only the edges' entries of local @ anchor.T are computed)."""
    n = local.shape[0]
    crow = torch.as_tensor(np.searchsorted(rows, np.arange(n + 1)), device=local.device)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow,
            torch.as_tensor(cols, device=local.device),
            torch.zeros(len(cols), device=local.device),
            size=(n, anchor.shape[0]),
            check_invariants=False,
        )
        out = torch.sparse.sampled_addmm(pattern, local.float(), anchor.float().T, beta=0.0)
    return out.values().double().cpu().numpy()


def sketched(
    local: torch.Tensor, anchor: torch.Tensor, k: int, dims: int
) -> tuple[torch.Tensor, assign.Solve]:
    n, width = local.shape
    if dims >= width:  # no cheaper than the whole similarity: solve that one, certified
        return assign.certified(similarity(local, anchor), k)
    ls, anc = count_sketch(local, dims), count_sketch(anchor, dims)
    blocks = ((i, ls[i : i + assign.BLOCK] @ anc.T) for i in range(0, n, assign.BLOCK))
    rows, cols = assign.candidates(blocks, n, k)
    w = edge_scores(local, anchor, rows, cols)
    perm = assign.solve_edges(rows, cols, w, n)
    return torch.as_tensor(perm, device=local.device), assign.Solve(edges=len(rows), rounds=1)
