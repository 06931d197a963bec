"""The sparse linear assignment on candidate edges, with numpy and scipy only (no torch), so that worker
processes can import it cheaply (refine's layered mode solves its layers' matchings in a pool)."""

from __future__ import annotations

import numpy as np


def solve_edges(
    rows: np.ndarray, cols: np.ndarray, w: np.ndarray, n: int, levels: int | None = None
) -> np.ndarray:
    """perm (new[c] = old[perm[c]]) of the maximum-weight full matching on the edges; they must hold one.
    ``levels``: solve on integer costs, the weights' range cut into that many levels (optimal within n times
    a level). scipy's LAPJVsp (1.17) can loop for ever on real weights with many near-ties, which a learned
    latent has by construction (Adam moves every entry by about the learning rate at first):
    benchmarks/bench_ties.py, 900 random tie-heavy problems of 50-300 units: none past a 10 s timeout with
    2**20 levels, 16 with real weights (docs/performance.md)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    if levels is not None:
        span = float(w.max() - w.min()) or 1.0
        cost = np.round((w.max() - w) / span * levels) + 1.0  # positive: no explicit zeros
        r, c = min_weight_full_bipartite_matching(sp.csr_matrix((cost, (rows, cols)), shape=(n, n)))
    else:
        graph = sp.csr_matrix((w - w.min() + 1.0, (rows, cols)), shape=(n, n))
        r, c = min_weight_full_bipartite_matching(graph, maximize=True)
    perm = np.empty(n, dtype=np.int64)
    perm[c] = r
    return perm


_EDGES: dict[int, tuple[np.ndarray, np.ndarray, int]] = {}  # a worker's layers: (old, new, units)


def hold(edges: dict[int, tuple[np.ndarray, np.ndarray, int]]) -> None:
    """A worker's initialiser: the candidate edges of the layers it will match, sent once."""
    _EDGES.update(edges)


def match_held(layer: int, w: np.ndarray, levels: int) -> np.ndarray:
    """The matching of a held layer's edges under the latent ``w``."""
    old, new, n = _EDGES[layer]
    return solve_edges(old, new, w, n, levels)
