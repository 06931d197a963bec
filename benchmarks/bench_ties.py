"""The sparse assignment on near-tied latents, as refine's layered mode meets them: scipy's solver on integer
levels (what `learn.edges` uses) against real weights, each solve in a process of its own with a timeout.

    python benchmarks/bench_ties.py [--problems 300] [--seeds 1,2,3] [--levels 20] [--timeout 10] [--planted]

Each problem: 50-300 units, the identity plus a random fraction (100%, 10% or 3%) of the edges, latents made by
1-7 Adam-like sign steps of 0.5 (with 1e-5 relative jitter: near-ties), a third of them scaled down to 1e-3 with
1e-9 noise. Prints, per weight kind, the problems solved, the ones that ran past the timeout (a hang), the worst
solve time, and the largest shortfall against scipy's dense solver (levels: within n levels by construction).

With --planted, also what alignment's solves meet (every sparse solve is on `lap.exact_levels(n)` levels): FFN-like
unit matchings (anchor rows, the local model's a permutation of them plus noise; some with pruned all-zero or
duplicated units), candidates as the `sparse` solver picks them; per problem, the solve on the real weights and on
the levels: time, the same objective, and whether the certificate's duals exist on the real weights.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def problem(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n = int(rng.integers(50, 300))
    r, c = np.divmod(np.arange(n * n), n)
    keep = (r == c) | (rng.random(n * n) < rng.choice([1.0, 0.1, 0.03]))
    r, c = r[keep], c[keep]
    z = (r == c).astype(float)
    for _ in range(int(rng.integers(1, 8))):
        z = z + 0.5 * np.sign(rng.standard_normal(len(z))) * (1 + 1e-5 * rng.standard_normal(len(z)))
    if rng.random() < 0.3:
        z = z * 1e-3 + rng.standard_normal(len(z)) * 1e-9
    return r, c, z, n


def _solve(queue: mp.Queue, r: np.ndarray, c: np.ndarray, z: np.ndarray, n: int, levels: int | None) -> None:
    from mergeflow.align.lap import solve_edges

    start = time.perf_counter()
    perm = solve_edges(r, c, z, n, levels)
    queue.put((perm, time.perf_counter() - start))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=300, help="per seed")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--levels", type=int, default=20, help="log2 of the integer levels")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a solve counts as a hang")
    ap.add_argument("--real", action="store_true", help="also solve on the real weights (hangs are expected)")
    ap.add_argument(
        "--planted", action="store_true", help="also alignment-like problems, real vs exact levels"
    )
    args = ap.parse_args()
    from scipy.optimize import linear_sum_assignment

    ctx = mp.get_context("fork")
    kinds = [("levels", 1 << args.levels)] + ([("real", None)] if args.real else [])
    stats = {k: {"solved": 0, "hung": 0, "worst_s": 0.0, "gap": 0.0} for k, _ in kinds}
    for seed in (int(s) for s in args.seeds.split(",")):
        rng = np.random.default_rng(seed)
        for _ in range(args.problems):
            r, c, z, n = problem(rng)
            dense = np.full((n, n), -1e9)
            dense[c, r] = z  # rows: new units, columns: old units
            a, b = linear_sum_assignment(dense, maximize=True)
            best = dense[a, b].sum()
            for kind, levels in kinds:
                queue: mp.Queue = ctx.Queue()
                proc = ctx.Process(target=_solve, args=(queue, r, c, z, n, levels))
                proc.start()
                proc.join(args.timeout)
                if proc.is_alive():
                    proc.kill()
                    proc.join()
                    stats[kind]["hung"] += 1
                    continue
                perm, sec = queue.get()
                s = stats[kind]
                s["solved"] += 1
                s["worst_s"] = max(s["worst_s"], sec)
                s["gap"] = max(s["gap"], best - dense[np.arange(n), perm].sum())
    print("| weights | solved | past the timeout | worst solve s | largest shortfall vs dense |")
    print("|---|---|---|---|---|")
    for kind, s in stats.items():
        print(f"| {kind} | {s['solved']} | {s['hung']} | {s['worst_s']:.4f} | {s['gap']:.2e} |")
    if args.planted:
        planted()


def planted() -> None:
    import torch

    from mergeflow.align import assign, lap

    print(
        "\n| units | width | noise | pruned | duplicated | real s | levels s | same objective | certified |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    cases = [
        (4096, 1024, 0.5, 0, 0),
        (4096, 1024, 3.0, 0, 0),
        (14336, 1024, 1.0, 0, 0),
        (4096, 1024, 0.5, 0.3, 0),
    ]
    cases += [(4096, 1024, 0.5, 0, 0.2), (4096, 256, 10.0, 0, 0)]
    lap.solve_edges(np.arange(2), np.arange(2), np.ones(2), 2)  # imports outside the timings
    for n, d, noise, prune, dup in cases:
        anchor = torch.randn(n, d, generator=gen)
        anchor[: int(prune * n)] = 0
        if dup:
            anchor[int((1 - dup) * n) :] = anchor[-1]
        perm = torch.randperm(n, generator=gen)
        local = anchor[perm] + noise * torch.randn(n, d, generator=gen) * (anchor[perm] != 0).any(
            1, keepdim=True
        )
        score = local @ anchor.T
        rows, cols = assign.candidates(assign.row_blocks(score), n, 8)
        w = score.reshape(-1)[torch.as_tensor(rows * n + cols)].double().numpy()
        got = []
        for levels in (None, 0):
            start = time.perf_counter()
            p = lap.solve_edges(rows, cols, w, n, levels)
            sec = time.perf_counter() - start
            total = float(score[torch.as_tensor(p), torch.arange(n)].double().sum())
            got.append((sec, total, assign.duals(rows, cols, w, p) is not None))
        (real_s, real_total, real_ok), (lv_s, lv_total, lv_ok) = got
        print(
            f"| {n} | {d} | {noise} | {prune:.0%} | {dup:.0%} | {real_s:.3f} | {lv_s:.3f} | "
            f"{real_total == lv_total} | {real_ok} / {lv_ok} |"
        )


if __name__ == "__main__":
    main()
