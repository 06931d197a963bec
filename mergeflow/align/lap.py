"""The sparse linear assignment on candidate edges, with numpy and scipy only (no torch), so that worker
processes can import it cheaply (refine's layered mode solves its layers' matchings in a pool)."""

from __future__ import annotations

import numpy as np


def exact_levels(n: int) -> int:
    """The most integer levels an n-unit matching can be solved on with every sum of costs exact in float64
    (n * levels well below 2**53), at most 2**36: at 14336 units a level is 1.5e-11 of the weights' range."""
    return 1 << min(36, 50 - max(n, 1).bit_length())


def solve_edges(
    rows: np.ndarray, cols: np.ndarray, w: np.ndarray, n: int, levels: int | None = 0
) -> np.ndarray:
    """perm (new[c] = old[perm[c]]) of the maximum-weight full matching on the edges; they must hold one.
    The costs handed to scipy are integers: the weights' range cut into ``levels`` levels (0: the most that
    stay exact, :func:`exact_levels`; the matching is optimal within n levels). scipy's LAPJVsp (1.17) can
    loop for ever on real-valued weights with many near-ties (a learned latent has them by construction; a
    pruned or duplicated unit's scores may), never on integers: benchmarks/bench_ties.py, 900 random
    tie-heavy problems of 50-300 units: none past a 10 s timeout on 2**20 or 2**36 levels, 16 on the real
    weights (docs/performance.md). ``levels=None``: the real weights (for that benchmark only)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    if levels is None:
        graph = sp.csr_matrix((w - w.min() + 1.0, (rows, cols)), shape=(n, n))
        r, c = min_weight_full_bipartite_matching(graph, maximize=True)
    else:
        levels = levels or exact_levels(n)
        span = float(w.max() - w.min()) or 1.0
        cost = np.round((w.max() - w) / span * levels) + 1.0  # positive: no explicit zeros
        r, c = min_weight_full_bipartite_matching(sp.csr_matrix((cost, (rows, cols)), shape=(n, n)))
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
