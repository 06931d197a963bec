"""Unit-matching solvers: the certified sparse assignment equals the dense optimum (and says how it got
there), its duals are a certificate, the blockwise candidates are each row's and column's best, and the
sketched solver is exact on near-copies and never worse than the identity."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
import torch

from mergeflow.align import assign, lap, unit_match
from mergeflow.testing.scramble import scramble_model
from tests.helpers import align, state


def objective(score: torch.Tensor, perm: torch.Tensor) -> float:
    return float(score[perm, torch.arange(len(perm))].sum())


def planted(n: int, width: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """anchor features, local = a row permutation of them plus noise, and the permutation that undoes it."""
    gen = torch.Generator().manual_seed(seed)
    anchor = torch.randn(n, width, generator=gen)
    scramble = torch.randperm(n, generator=gen)
    local = anchor[scramble] + noise * torch.randn(n, width, generator=gen)
    return local, anchor, torch.argsort(scramble)


@pytest.mark.parametrize("n,k,seed", [(7, 1, 0), (60, 1, 1), (200, 2, 2), (300, 8, 3), (1, 1, 4)])
def test_certified_sparse_assignment_is_the_dense_optimum(n, k, seed):
    """Random scores (no structure: the hardest case for candidates) with few candidates: edges are added
    until the certificate holds, and the answer is the dense solver's."""
    score = torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    perm, info = assign.certified(score, k)
    ref = assign.dense(score)
    assert torch.equal(perm, ref)  # continuous random scores: the optimum is unique
    assert info.certified and not info.dense and not info.fallback
    if n >= 60:
        assert info.added > 0 and info.rounds > 1  # the candidates alone were not enough


def test_certificate_that_keeps_failing_hands_over_to_the_dense_solver(monkeypatch):
    monkeypatch.setattr(assign, "ROUNDS", 1)
    score = torch.randn(120, 120, generator=torch.Generator().manual_seed(5))
    perm, info = assign.certified(score, 1)
    assert info.dense and info.fallback and info.rounds == 1
    assert torch.equal(perm, assign.dense(score))


def test_duals_certify_an_optimal_matching_and_refuse_a_worse_one():
    n = 40
    score = torch.randn(n, n, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    rows, cols = assign.split(np.arange(n * n), n)  # every edge
    w = score.reshape(-1).numpy()
    best = assign.dense(score).numpy()
    u, v = assign.duals(rows, cols, w, best)
    slack = u[rows] + v[cols] - w
    assert slack.min() > -1e-9  # feasible on every edge
    assert np.abs(slack[best[cols] == rows]).max() < 1e-9  # tight on the matching
    assert abs(u.sum() + v.sum() - objective(score, torch.as_tensor(best))) < 1e-9  # strong duality
    worse = best.copy()
    worse[[0, 1]] = worse[[1, 0]]
    if objective(score, torch.as_tensor(worse)) < objective(score, torch.as_tensor(best)) - 1e-9:
        assert assign.duals(rows, cols, w, worse) is None


def test_blockwise_candidates_are_each_rows_and_columns_best(monkeypatch):
    monkeypatch.setattr(assign, "BLOCK", 7)  # many blocks, one of them short
    n, k = 30, 3
    score = torch.randn(n, n, generator=torch.Generator().manual_seed(7))
    rows, cols = assign.candidates(assign.row_blocks(score), n, k)
    got = set(zip(rows.tolist(), cols.tolist(), strict=True))
    s = score.numpy()
    want = {(i, int(j)) for i in range(n) for j in np.argsort(-s[i])[:k]}
    want |= {(int(i), j) for j in range(n) for i in np.argsort(-s[:, j])[:k]}
    want |= {(i, i) for i in range(n)}
    assert got == want
    assert np.all(np.diff(rows * n + cols) > 0)  # unique, sorted by row


def test_edge_scores_are_the_inner_products_of_the_edges():
    local, anchor, _ = planted(50, 33, 0.5, 8)
    rows, cols = assign.candidates(assign.row_blocks(local @ anchor.T), 50, 4)
    w = unit_match.edge_scores([(local[:, :20], anchor[:, :20]), (local[:, 20:], anchor[:, 20:])], rows, cols)
    np.testing.assert_allclose(w, (local[rows] * anchor[cols]).sum(1).numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "solver,kind,dtype",
    [
        ("dense", "", "float32"),
        ("sparse", "", "float32"),
        ("sketch", "count", "float32"),
        ("sketch", "count", "bfloat16"),  # the sketch product in bfloat16, the candidates' scores float32
        ("sketch", "principal", "float32"),
    ],
)
def test_every_solver_undoes_a_planted_permutation_of_near_copies(solver, kind, dtype, monkeypatch):
    monkeypatch.setattr(unit_match, "SPARSE_FROM", 0)
    local, anchor, truth = planted(500, 256, 0.1, 9)
    perm, info = unit_match.match_units(
        [(local, anchor)], solver, k=4, dims=32, dtype=getattr(torch, dtype), sketch=kind or "count"
    )
    assert torch.equal(perm, truth)
    assert info.certified == (solver != "sketch")


def test_sketch_is_never_worse_than_the_identity_on_unrelated_units():
    gen = torch.Generator().manual_seed(10)
    local, anchor = torch.randn(400, 128, generator=gen), torch.randn(400, 128, generator=gen)
    score = (local @ anchor.T).double()
    perm, info = unit_match.match_units([(local, anchor)], "sketch", k=4, dims=16)
    ident = objective(score, torch.arange(400))
    best = objective(score, assign.dense(score))
    assert ident < objective(score, perm) <= best + 1e-6
    assert not info.certified


def test_a_sketch_as_wide_as_the_features_is_the_certified_solve():
    local, anchor, truth = planted(64, 16, 1.0, 11)
    perm, info = unit_match.match_units([(local, anchor)], "sketch", k=2, dims=16)
    assert info.certified and torch.equal(perm, assign.dense(local @ anchor.T))


def test_principal_basis_spans_the_anchors_dominant_subspace_part_by_part():
    """Features of rank 12 plus faint noise, split into two parts: the basis is orthonormal, split like the
    parts, and projecting on it keeps the features (their top-12 right singular subspace)."""
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(300, 12, generator=gen) @ torch.randn(12, 80, generator=gen)
    x += 1e-4 * torch.randn(300, 80, generator=gen)
    parts = [(x[:, :30], x[:, :30]), (x[:, 30:], x[:, 30:])]
    basis = unit_match.principal(parts, 16)
    assert [tuple(b.shape) for b in basis] == [(30, 16), (50, 16)]
    q = torch.cat(basis)
    torch.testing.assert_close(q.T @ q, torch.eye(16), atol=1e-5, rtol=0)
    kept = x @ q @ q.T
    assert float((kept - x).norm() / x.norm()) < 1e-3


def test_principal_sketch_keeps_more_of_a_weak_signal_than_a_count_sketch():
    """Units with 3x noise over the planted copy, 32 dimensions: the anchor's principal directions recover
    more units than a count sketch of the same width (measured at 7B FFN sizes in docs/performance.md)."""
    local, anchor, truth = planted(1000, 512, 3.0, 15)
    got = {}
    for kind in ("count", "principal"):
        perm, _ = unit_match.match_units([(local, anchor)], "sketch", k=8, dims=32, sketch=kind)
        got[kind] = float((perm == truth).float().mean())
    assert got["principal"] > got["count"] + 0.1, got


def test_count_sketch_keeps_inner_products_in_expectation():
    gen = torch.Generator().manual_seed(12)
    a, b = torch.randn(200, 2048, generator=gen), torch.randn(200, 2048, generator=gen)
    dims = 256
    sa, sb = unit_match.count_sketch(a, dims), unit_match.count_sketch(b, dims)
    assert torch.equal(sa, unit_match.count_sketch(a, dims))  # a fixed sketch
    exact, approx = (a * b).sum(1), (sa * sb).sum(1)
    scale = a.norm(dim=1) * b.norm(dim=1) / dims**0.5  # the estimate's standard deviation
    z = (approx - exact) / scale
    assert abs(float(z.mean())) < 0.3 and 0.6 < float(z.std()) < 1.5
    torch.testing.assert_close((sa * sa).sum(1).mean(), (a * a).sum(1).mean(), rtol=0.05, atol=0)


@pytest.mark.parametrize("solver", ["dense", "sketch", "sketch, sketch_kind: principal", "sparse"])
def test_recipe_solvers_recover_a_scrambled_llama_like_the_default(tmp_path, toy, solver, monkeypatch):
    """Each solver through a recipe (sparse even on these 64 units, which it leaves to dense by default)."""
    monkeypatch.setattr(unit_match, "SPARSE_FROM", 0)
    a = toy("llama")
    b = scramble_model(a, tmp_path / "scrambled", seed=3, heads_perm=True)
    steps = (
        f"[{{permute: {{heads: true, solver: {solver}, candidates: 4, sketch_dims: 64}}}}, "
        "{rotate: {qk: true, vo: true}}, {rescale: {}}]"
    )
    c, report = align(tmp_path, b, a, steps)
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5
    counts = report["counts"]["permute"]
    assert counts["ffn_solves"] == counts["certified"] + solver.startswith("sketch") * counts["ffn_solves"]
    assert counts["dense_fallbacks"] == 0


def test_best_assignment_of_a_given_score_matrix_is_the_optimum(monkeypatch):
    """What activation matching calls on its correlation matrices: dense when small, certified sparse when
    large (the threshold lowered here), the same permutation."""
    score = torch.randn(150, 150, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    ref = assign.dense(score)
    assert torch.equal(unit_match.best_assignment(score), ref)
    monkeypatch.setattr(unit_match, "SPARSE_FROM", 100)
    assert torch.equal(unit_match.best_assignment(score, k=2), ref)


def _solve_into(queue, rows, cols, w, n):
    queue.put(lap.solve_edges(rows, cols, w, n))


def test_sparse_solve_finishes_on_near_ties_that_loop_scipy_for_ever():
    """A 71-unit problem of near-tied weights (benchmarks/bench_ties.py, seed 1, problem 192) on which scipy
    1.17's LAPJVsp, given the real weights, never returns: every sparse solve hands it integer levels, and
    this one ends (in a process of its own, so that a regression fails instead of hanging the tests) at the
    dense optimum, within the n levels the quantisation may cost."""
    from scipy.optimize import linear_sum_assignment

    data = np.load(Path(__file__).parent / "corpus" / "ties" / "lapjvsp_loops.npz")
    rows, cols, w, n = data["rows"], data["cols"], data["w"], int(data["n"])
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_solve_into, args=(queue, rows, cols, w, n))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        proc.join()
        pytest.fail("the sparse solve did not end within 60 s")
    perm = queue.get()
    dense = np.full((n, n), -1e9)
    dense[cols, rows] = w  # rows: new units, columns: old units
    a, b = linear_sum_assignment(dense, maximize=True)
    level = (w.max() - w.min()) / lap.exact_levels(n)
    assert sorted(perm) == list(range(n))
    assert dense[np.arange(n), perm].sum() >= dense[a, b].sum() - n * level - 1e-9


def test_exact_levels_keep_every_path_sum_exact_in_float64():
    """An augmenting path's cost sums at most 2n edge costs of at most levels + 1: below 2**53 for any n."""
    for n in (1, 2, 71, 2048, 14336, 16383, 16384, 28672, 1 << 17, 10**6):
        levels = lap.exact_levels(n)
        assert 2 * n * (levels + 1) < 2**53 and levels >= 1 << 29
    assert lap.exact_levels(14336) == 1 << 36 and lap.exact_levels(28672) == 1 << 35
