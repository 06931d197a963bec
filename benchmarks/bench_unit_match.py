"""Benchmark: the FFN unit-matching solvers side by side on synthetic unit features.

    python benchmarks/bench_unit_match.py [--units 5632] [--width 6144] [--dims 256,1024]

Cases: a planted permutation of the anchor's features plus noise (relative sizes 0.1 and 5: near-copies and
a weak signal), and two unrelated feature sets. For each solver: seconds, units put back where the planted
permutation says, and the objective (summed inner products of matched units) relative to the optimum.
"""

from __future__ import annotations

import argparse
import time

import torch

from mergeflow.align.unit_match import match_units, similarity


def case(
    n: int, width: int, noise: float | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, width, generator=gen) / width**0.5
    if noise is None:
        return torch.randn(n, width, generator=gen) / width**0.5, anchor, torch.full((n,), -1)
    scramble = torch.randperm(n, generator=gen)
    local = anchor[scramble] + noise * torch.randn(n, width, generator=gen) / width**0.5
    return local, anchor, torch.argsort(scramble)


def lapx_solve(local: torch.Tensor, anchor: torch.Tensor, how: str, k: int) -> torch.Tensor:
    """The same assignment by lapx (https://github.com/rathaROG/lapx), for comparison: ``lapjv`` on the whole
    similarity, or ``lapmod`` on the candidate edges the sparse solver starts from (each unit's k best both
    ways + the identity; no certificate). Times include the similarity product, as for the other solvers."""
    import lap
    import numpy as np

    from mergeflow.align import assign

    score = similarity([(local, anchor)], torch.float32)
    n = score.shape[0]
    if how == "lapjv":
        _cost, _x, y = lap.lapjv((score.max() - score).double().numpy())
        return torch.as_tensor(y)
    rows, cols = assign.candidates(assign.row_blocks(score), n, k)
    w = score[torch.as_tensor(rows), torch.as_tensor(cols)].double().numpy()
    starts = np.searchsorted(rows, np.arange(n + 1))
    _cost, _x, y = lap.lapmod(n, w.max() - w, starts, cols)
    return torch.as_tensor(y)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=5632)
    ap.add_argument("--width", type=int, default=6144)
    ap.add_argument("--dims", default="256,1024", help="sketch dimensions to try")
    ap.add_argument("--principal", default="64,256", help="principal-subspace sketch dimensions to try")
    ap.add_argument("--candidates", type=int, default=8)
    args = ap.parse_args()
    solvers = ["dense", "sparse"] + [f"sketch:{d}" for d in args.dims.split(",")]
    solvers += [f"principal:{d}" for d in args.principal.split(",") if d]
    try:  # lapx, when installed (`pip install lapx`): not a dependency of mergeflow
        import lap  # noqa: F401

        solvers += ["lapx:lapjv", "lapx:lapmod"]
    except ImportError:
        print("lapx not installed: its rows are left out (pip install lapx)")
    print(
        f"{args.units} units x {args.width} features, float32 similarity, {torch.get_num_threads()} threads"
    )
    print()
    print("| case | solver | seconds | units recovered | objective / optimum | sparse rounds, edges added |")
    print("|---|---|---|---|---|---|")
    for label, noise in (("planted + 0.1 noise", 0.1), ("planted + 5x noise", 5.0), ("unrelated", None)):
        local, anchor, truth = case(args.units, args.width, noise, 0)
        score = similarity([(local, anchor)], torch.float32).double()
        cols = torch.arange(args.units)
        best = None
        for name in solvers:
            solver, _, dims = name.partition(":")
            start = time.perf_counter()
            kind = "principal" if solver == "principal" else "count"
            solver = "sketch" if kind == "principal" else solver
            if solver == "lapx":
                perm, info = lapx_solve(local, anchor, dims, args.candidates), None
            else:
                perm, info = match_units(
                    [(local, anchor)], solver, args.candidates, int(dims or 512), sketch=kind
                )
            sec = time.perf_counter() - start
            obj = float(score[perm, cols].sum())
            best = obj if best is None else best
            rec = f"{float((perm == truth).float().mean()):.1%}" if noise is not None else "-"
            extra = f"{info.rounds}, {info.added}" if solver == "sparse" and info is not None else "-"
            print(f"| {label} | {name} | {sec:.2f} | {rec} | {obj / best:.4f} | {extra} |", flush=True)


if __name__ == "__main__":
    main()
