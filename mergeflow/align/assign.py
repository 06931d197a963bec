"""Linear assignment for unit matching: dense (scipy's Jonker-Volgenant on the whole score matrix), and
sparse on candidate edges with a certificate of optimality.

The sparse solver runs scipy's LAPJVsp on a few candidate edges per row and column (plus the identity, so a
full matching always exists and the result is never worse than keeping the units where they are). Its
matching is optimal on those edges; whether it is optimal on the whole matrix is a question of duality: from
the matching, shortest-path potentials of its residual graph give duals (u, v) with u_i + v_j = score[i, j]
on matched edges and >= on every candidate edge. If also score[i, j] <= u_i + v_j on every edge of the whole
matrix, no other matching scores more (the certificate). Edges that break it are added and the problem solved
again; after a few rounds without a certificate, the dense solver decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mergeflow.align.lap import solve_edges as solve_edges  # re-exported: callers use assign.solve_edges

BLOCK = 1024  # rows of the score matrix per certificate-check block
ROUNDS = 8  # rounds of added edges before the dense solver decides


def dense(score: torch.Tensor) -> torch.Tensor:
    """perm with new[c] = old[perm[c]] maximising sum_c score[perm[c], c] (rows: local, columns: anchor)."""
    from scipy.optimize import linear_sum_assignment  # imported here: it costs every run 0.3 s of start-up

    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy(), maximize=True)
    perm = np.empty_like(rows)
    perm[cols] = rows
    return torch.as_tensor(perm, device=score.device)


@dataclass
class Solve:
    """How a sparse solve went, for the alignment report."""

    rounds: int = 0  # sparse solves
    added: int = 0  # edges added because they broke the certificate
    certified: bool = False  # the result is the optimum of the whole matrix
    dense: bool = False  # the dense solver decided
    fallback: bool = False  # ... because the certificate kept failing


def candidates(blocks: Iterable[tuple[int, torch.Tensor]], n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's and each column's k best edges of an n x n score matrix given as row blocks (first row,
    block), and the identity: (rows, cols), unique, sorted by row. Columns keep a running top k, so the matrix
    need never exist whole."""
    by_row: list[torch.Tensor] = []
    best: torch.Tensor | None = None  # (n, <=k) best scores per column so far, and their rows
    best_rows: torch.Tensor | None = None
    for first, block in blocks:
        by_row.append(torch.topk(block, min(k, n), dim=1).indices)
        # per column: along the rows of the block as it is (35% faster than a transposed copy in float32)
        value, row = (t.T for t in torch.topk(block, min(k, block.shape[0]), dim=0))
        row = row + first
        if best is not None and best_rows is not None:
            value, row = torch.cat([best, value], 1), torch.cat([best_rows, row], 1)
            value, keep = torch.topk(value, min(k, value.shape[1]), dim=1)
            row = row.gather(1, keep)
        best, best_rows = value, row
    assert best_rows is not None
    rows_k = torch.cat(by_row).cpu().numpy()
    cols_k = best_rows.cpu().numpy()
    ar = np.arange(n)
    rows = np.concatenate([np.repeat(ar, rows_k.shape[1]), cols_k.reshape(-1), ar])
    cols = np.concatenate([rows_k.reshape(-1), np.repeat(ar, cols_k.shape[1]), ar])
    return split(np.unique(rows.astype(np.int64) * n + cols), n)


def row_blocks(score: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    for i in range(0, score.shape[0], BLOCK):
        yield i, score[i : i + BLOCK]


def split(linear: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return linear // n, linear % n


def duals(
    rows: np.ndarray, cols: np.ndarray, w: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """(u, v) with u_i + v_j >= w_ij on every edge and = on the matching ``perm``, or None when there are none
    (the matching is not optimal on these edges). Potentials are the shortest distances in the residual graph
    (unmatched edge row -> column costs -w, matched edge column -> row costs +w) from a source joined to every
    node at cost 0, by Bellman-Ford relaxation over all edges at once."""
    n = len(perm)
    matched = perm[cols] == rows
    tails = np.where(matched, n + cols, rows)
    heads = np.where(matched, rows, n + cols)
    cost = np.where(matched, w, -w)
    order = np.argsort(heads, kind="stable")
    tails, heads, cost = tails[order], heads[order], cost[order]
    targets, starts = np.unique(heads, return_index=True)
    dist = np.zeros(2 * n)
    eps = 1e-12 * (float(np.abs(w).max()) + 1.0)  # improvements below rounding do not count
    for _ in range(2 * n + 1):
        best = np.minimum.reduceat(dist[tails] + cost, starts)
        better = best < dist[targets] - eps
        if not better.any():
            break
        dist[targets[better]] = best[better]
    else:
        return None  # a negative cycle: the matching can be improved on these edges
    u = dist[:n]
    on_match = np.zeros(n)
    on_match[cols[matched]] = w[matched]
    return u, on_match - u[perm]


def largest(score: torch.Tensor) -> float:
    """max |score|, without an |score| copy."""
    low, high = torch.aminmax(score)
    return max(-float(low), float(high))


def violations(
    score: torch.Tensor, u: np.ndarray, v: np.ndarray, limit: int, size: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Edges of the whole matrix with score > u + v (beyond rounding), the worst ``limit`` of them. A pass in
    the score's own precision with a safety margin picks the edges that may break the bound (the matched
    ones, at equality, always do); those are checked again in float64. ``size``: max |score|, if known."""
    ut = torch.as_tensor(u, device=score.device)
    vt = torch.as_tensor(v, device=score.device)
    u_low, v_low = ut.to(score.dtype), vt.to(score.dtype)
    size = largest(score) if size is None else size
    scale = size + float(np.abs(u).max(initial=0.0)) + float(np.abs(v).max(initial=0.0))
    margin = 1e-5 * scale if score.dtype != torch.float64 else 0.0  # far above float32 rounding of u + v
    tol = 1e-9 * size + 1e-30
    found: list[torch.Tensor] = []
    amount: list[torch.Tensor] = []
    for i, block in row_blocks(score):
        low = block - v_low[None, :]
        maybe = torch.nonzero(low.sub_(u_low[i : i + BLOCK, None]) > tol - margin)
        r, c = maybe[:, 0], maybe[:, 1]
        slack = block[r, c].double() - ut[r + i] - vt[c]
        bad = slack > tol
        if bool(bad.any()):
            amount.append(slack[bad])
            found.append(torch.stack([r[bad] + i, c[bad]], 1))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    idx, how = torch.cat(found), torch.cat(amount)
    if len(idx) > limit:
        idx = idx[torch.topk(how, limit).indices]
    pairs = idx.cpu().numpy()
    return pairs[:, 0], pairs[:, 1]


def certified(score: torch.Tensor, k: int = 8) -> tuple[torch.Tensor, Solve]:
    """The assignment maximising ``score`` (n x n, any device), solved sparsely and certified optimal on the
    whole matrix; see the module's doc. Same answer as :func:`dense` up to ties."""
    n = score.shape[0]
    info = Solve()
    score = score.float() if score.dtype not in (torch.float32, torch.float64) else score
    rows, cols = candidates(row_blocks(score), n, k)
    flat, size = score.reshape(-1), largest(score)
    for _ in range(ROUNDS):
        info.rounds += 1
        lin = torch.as_tensor(rows * n + cols, device=score.device)
        w = flat[lin].double().cpu().numpy()
        perm = solve_edges(rows, cols, w, n)
        d = duals(rows, cols, w, perm)
        if d is None:
            break
        bad_r, bad_c = violations(score, *d, limit=n, size=size)
        if not len(bad_r):
            info.certified = True
            return torch.as_tensor(perm, device=score.device), info
        info.added += len(bad_r)
        rows, cols = split(np.union1d(rows * n + cols, bad_r * n + bad_c), n)
    info.dense = info.fallback = info.certified = True
    return dense(score), info
