"""Match the units of two layers by their features (one row per unit: e.g. an FFN neuron's gate and up rows,
bias and down column): the permutation maximising the summed inner products of matched rows.

Features come as parts, (local, anchor) pairs of (f, d_i) matrices that may be transposed views of the
layer's own tensors: the similarity is the sum of the parts' products, so no f x (sum d_i) copy is made.

Three solvers, chosen by the permute step's ``solver``:
- ``dense``: the whole f x f similarity, scipy's dense assignment (the reference);
- ``sparse``: the whole similarity on the tensors' device, a sparse assignment on each row's and column's
  best candidates, certified optimal on the whole matrix (``mergeflow.align.assign``); same answer as dense;
- ``sketch``: candidates from the similarity of count sketches of the rows to ``dims`` dimensions
  (f x f x dims multiply-adds instead of f x f x sum d_i, in the step's ``similarity`` precision), their
  exact similarity (float32, only the candidate entries), the sparse assignment on them. Approximate (a pair
  outside the candidates cannot be matched) and not certified; never worse than the identity, whose edges are
  always candidates.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from mergeflow.align import assign

SKETCH_SEED = 0x5EED
SPARSE_FROM = 2048  # units: below this the dense solver is as fast (no candidates, duals or certificate)
Parts = Sequence[tuple[torch.Tensor, torch.Tensor]]  # (local, anchor) feature blocks, (f, d_i) each


def similarity(parts: Parts, dtype: torch.dtype) -> torch.Tensor:
    """(f, f) summed inner products of the parts' rows, computed in ``dtype``, returned in float32 (float64
    when ``dtype`` is)."""
    out: torch.Tensor | None = None
    for local, anchor in parts:
        prod = local.to(dtype) @ anchor.to(dtype).T  # transposed views go to the BLAS as they are
        prod = prod.double() if dtype == torch.float64 else prod.float()
        out = prod if out is None else out.add_(prod)
    assert out is not None
    return out


def match_units(
    parts: Parts,
    solver: str = "sparse",
    k: int = 8,
    dims: int = 512,
    dtype: torch.dtype = torch.float32,
    sketch: str = "count",
) -> tuple[torch.Tensor, assign.Solve]:
    """perm with unit c of the result = unit perm[c] of the local model, and how the solve went."""
    width = sum(local.shape[1] for local, _ in parts)
    if solver == "sketch" and dims < width:
        return sketched(parts, k, dims, sketch, dtype)
    if solver not in ("dense", "sparse", "sketch"):  # a sketch as wide as the features would cost no less
        raise ValueError(f"unknown solver {solver!r}")
    return exact(similarity(parts, dtype), k, dense=solver == "dense")


def exact(score: torch.Tensor, k: int = 8, dense: bool = False) -> tuple[torch.Tensor, assign.Solve]:
    """The optimal assignment of a score matrix: scipy's dense solver when asked or below SPARSE_FROM units,
    the certified sparse solver above (the same optimum, much faster on hard 10^4-unit problems)."""
    if dense or score.shape[0] < SPARSE_FROM:
        return assign.dense(score), assign.Solve(certified=True, dense=True)
    return assign.certified(score, k)


def best_assignment(score: torch.Tensor, k: int = 8) -> torch.Tensor:
    """The optimal assignment of a given score matrix (e.g. activation correlations); see :func:`exact`."""
    return exact(score, k)[0]


def count_sketch(x: torch.Tensor, dims: int, seed: int = 0) -> torch.Tensor:
    """The rows of ``x`` (n, width; any strides) mapped to ``dims`` dimensions by a fixed count sketch: each
    input coordinate goes, with a random sign, into one random output coordinate (inner products are kept in
    expectation, with variance ~ |a|^2 |b|^2 / dims). One pass over ``x``: n x width additions, not the
    n x width x dims multiply-adds of a dense random projection. The same (width, seed) gets the same sketch."""
    n, width = x.shape
    gen = torch.Generator().manual_seed(SKETCH_SEED + 7919 * seed + width)
    bucket = torch.randint(0, dims, (width,), generator=gen).to(x.device)
    sign = (torch.randint(0, 2, (width,), generator=gen) * 2 - 1).to(device=x.device, dtype=torch.float32)
    if x.stride(0) < x.stride(1):  # a transposed view: sum its rows (contiguous) into the sketch's columns
        out_t = torch.zeros(dims, n, device=x.device, dtype=torch.float32)
        for j in range(0, width, assign.BLOCK):
            rows = x.T[j : j + assign.BLOCK].float() * sign[j : j + assign.BLOCK, None]
            out_t.index_add_(0, bucket[j : j + assign.BLOCK], rows)
        return out_t.T
    out = torch.zeros(n, dims, device=x.device, dtype=torch.float32)
    for i in range(0, n, assign.BLOCK):  # converted a block at a time (no float32 copy of a float64 x)
        out[i : i + assign.BLOCK].index_add_(1, bucket, x[i : i + assign.BLOCK].float() * sign)
    return out


def edge_scores(parts: Parts, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Summed <local[rows[e]], anchor[cols[e]]> of the parts for every edge e (sorted by row): one sampled
    matrix product per part (only the edges' entries of local @ anchor.T, in float32), summed in float64."""
    local0 = parts[0][0]
    n, dev = local0.shape[0], local0.device
    crow = torch.as_tensor(np.searchsorted(rows, np.arange(n + 1)), device=dev)
    col = torch.as_tensor(cols, device=dev)
    total = torch.zeros(len(cols), dtype=torch.float64, device=dev)
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(
            crow, col, torch.zeros(len(cols), device=dev), size=(n, n), check_invariants=False
        )
        for local, anchor in parts:
            out = torch.sparse.sampled_addmm(pattern, local.float(), anchor.float().T, beta=0.0)
            total += out.values()  # float32 products of each part, summed in float64
    return total.cpu().numpy()


def principal(parts: Parts, dims: int, iters: int = 2, seed: int = 0) -> list[torch.Tensor]:
    """An orthonormal basis (split by part: (d_i, dims) blocks) of the top-``dims`` right singular subspace of
    the anchor's features [anchor_1 ... anchor_P], by a randomised range finder with ``iters`` power iterations
    (Halko et al.), part by part: no concatenated copy, 2 + 2 x iters passes of n x width x dims multiply-adds."""
    anchors = [anchor for _, anchor in parts]
    n, dev = anchors[0].shape[0], anchors[0].device
    gen = torch.Generator().manual_seed(SKETCH_SEED + seed)
    y = torch.randn(n, dims, generator=gen).to(dev)
    for it in range(iters + 1):
        blocks = [a.T @ y for a in anchors]  # X^T y, a block per part
        q = torch.linalg.qr(torch.cat(blocks)).Q
        basis = list(torch.split(q, [a.shape[1] for a in anchors]))
        if it < iters:
            y = torch.linalg.qr(sum(a @ b for a, b in zip(anchors, basis, strict=True))).Q  # X q
    return basis


def sketched(
    parts: Parts, k: int, dims: int, kind: str = "count", dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, assign.Solve]:
    """``dtype``: of the f x f x dims sketch product that picks the candidates (the solve's largest product;
    bfloat16 halves it where the hardware has bf16 matrix units, and its rounding is far below the sketch's own
    error). The candidates are picked on the product's blocks as they come (no float32 copy of bfloat16
    blocks); their scores are float32 whatever it is."""
    n = parts[0][0].shape[0]
    parts = [(local.float(), anchor.float()) for local, anchor in parts]  # once, for the sketch and the edges
    if kind == "principal":  # both sides projected on the anchor's dominant subspace
        basis = principal(parts, dims)
        ls = sum(local @ b for (local, _), b in zip(parts, basis, strict=True))
        anc = sum(anchor @ b for (_, anchor), b in zip(parts, basis, strict=True))
    else:
        ls = sum(count_sketch(local, dims, i) for i, (local, _) in enumerate(parts))
        anc = sum(count_sketch(anchor, dims, i) for i, (_, anchor) in enumerate(parts))
    assert isinstance(ls, torch.Tensor) and isinstance(anc, torch.Tensor)
    ls, anc = ls.to(dtype), anc.to(dtype)
    blocks = ((i, ls[i : i + assign.BLOCK] @ anc.T) for i in range(0, n, assign.BLOCK))
    rows, cols = assign.candidates(blocks, n, k)
    w = edge_scores(parts, rows, cols)
    perm = assign.solve_edges(rows, cols, w, n)
    return torch.as_tensor(perm, device=parts[0][0].device), assign.Solve(rounds=1)
