"""refine's layered mode: weights built a layer at a time under checkpointing, permutations on candidate
edges. With every edge a candidate it is the whole mode, step for step; with few it keeps the function."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mergeflow.learn.edges import EdgePerm, permuted_by_edges
from tests.conftest import cli, write
from tests.helpers import align, outputs, trained_norms, vision_data

FULL = "{permute: {residual: true, heads: true, ffn: true}}, {orthogonal: {residual: true}}"
TEXT = "\n".join(f"hello world {i}, merging models number {i * 7}" for i in range(40)) + "\n"


@pytest.mark.parametrize("dense_below", [2048, 0])  # the matching by the dense solver, and by the sparse one
def test_edge_gradient_is_the_dense_estimators_on_its_edges(monkeypatch, dense_below):
    """d loss / d z[e] = <gradient of new unit i, old unit j> summed over the FFN's parts: the dense
    straight-through estimator's gradient (P @ W forward) read at the edges."""
    monkeypatch.setattr("mergeflow.learn.edges.DENSE_BELOW", dense_below)
    g = torch.Generator().manual_seed(0)
    n, d = 12, 5
    canon = {
        "up": torch.randn(n, d, generator=g),
        "gate": torch.randn(n, d, generator=g),
        "down": torch.randn(d, n, generator=g),
    }
    rng = np.random.default_rng(0)
    keep = rng.random(n * n) < 0.3
    keep[np.arange(n) * n + np.arange(n)] = True
    new, old = np.divmod(np.flatnonzero(keep), n)
    edges = EdgePerm(new, old, n, torch.device("cpu"))
    with torch.no_grad():
        edges.z.add_(torch.randn(len(edges.z), generator=g, dtype=torch.float64))
    perm = edges.hard()
    target = {k: torch.randn(v.shape, generator=g) for k, v in canon.items()}

    def loss(c):
        return sum(((c[k] - target[k]) ** 2).sum() for k in c)

    mine = dict(canon)
    permuted_by_edges(edges, perm)(mine)
    loss(mine).backward()

    p = torch.zeros(n, n, dtype=torch.float32, requires_grad=True)
    hard = torch.eye(n)[perm]
    dense = {
        "up": (p + hard) @ canon["up"],
        "gate": (p + hard) @ canon["gate"],
        "down": canon["down"] @ (p + hard).T,
    }
    loss(dense).backward()
    for k in canon:
        torch.testing.assert_close(mine[k], dense[k].detach())  # the forward is the matching itself
    torch.testing.assert_close(edges.z.grad.float(), p.grad[edges.new, edges.old], rtol=1e-5, atol=1e-5)
    # the matching maximises the summed latent of its edges, and uses edges only
    m = np.full((n, n), -np.inf)
    m[new, old] = edges.z.detach().numpy()
    assert np.isfinite(m[np.arange(n), perm.numpy()]).all()
    from scipy.optimize import linear_sum_assignment

    r, c = linear_sum_assignment(np.where(np.isfinite(m), m, -1e9), maximize=True)
    z = edges.z.detach().numpy()
    level = n * (z.max() - z.min()) / 2**20  # the sparse solver's integer levels
    assert m[np.arange(n), perm.numpy()].sum() == pytest.approx(m[r, c].sum(), abs=level)


@pytest.mark.parametrize(
    ("family", "steps"),
    [
        ("llama", FULL + ", {rotate: {}}"),
        ("gpt2", "{permute: {residual: true, ffn: true}}"),  # Conv1D weights, tied head: permutations only
        (
            "gpt2",
            "{permute: {residual: true, ffn: true}}, {orthogonal: {residual: true, untie: true}}",
        ),  # untied
        ("vit", FULL + ", {rotate: {}}"),  # renamed modules (transformers 5), a classifier on images
    ],
)
def test_layered_mode_with_every_edge_is_the_whole_mode(tmp_path, toy, family, steps):
    a = trained_norms(toy(family, seed=1), tmp_path / "a", 1)
    b = trained_norms(toy(family, seed=2), tmp_path / "b", 2)
    data = vision_data(tmp_path / "d.npz") if family == "vit" else write(tmp_path / "t.txt", TEXT)
    got = {}
    for mode in ("whole", "layered"):
        refine = f"{{data: {data}, steps: 6, lr: 0.01, perm_lr: 0.5, batch_size: 8, mode: {mode}, candidates: 100000}}"
        out, report = align(tmp_path, b, a, f"[{steps}, {{refine: {refine}}}]", name=mode)
        got[mode] = (load_file(out / "model.safetensors"), report["refine"][0])
        torch.testing.assert_close(outputs(out, family)[0], outputs(b, family)[0], atol=1e-5, rtol=1e-5)
    (whole, w_rep), (layered, l_rep) = got["whole"], got["layered"]
    assert l_rep["loss_first"] == pytest.approx(w_rep["loss_first"], rel=1e-5)
    assert l_rep["loss_last"] == pytest.approx(w_rep["loss_last"], rel=1e-5)
    assert l_rep["ffn_units_moved"] == w_rep["ffn_units_moved"] > 0
    assert "candidate_edges" in l_rep and "candidate_edges" not in w_rep
    for name, t in whole.items():
        torch.testing.assert_close(layered[name], t, atol=2e-5, rtol=1e-4)


def test_layered_mode_on_few_candidates_keeps_the_function_and_learns(tmp_path, toy):
    a = trained_norms(toy("llama", seed=1), tmp_path / "a", 1)
    b = trained_norms(toy("llama", seed=2), tmp_path / "b", 2)
    data = write(tmp_path / "t.txt", TEXT)
    refine = (
        f"{{data: {data}, steps: 12, lr: 0.01, perm_lr: 0.5, batch_size: 8, mode: layered, candidates: 2}}"
    )
    # weight matching in float32 (the recipe's align_dtype) before the refinement, as the graph's layers do
    out, report = align(tmp_path, b, a, f"[{FULL}, {{refine: {refine}}}]", extra="align_dtype: float32\n")
    torch.testing.assert_close(outputs(out, "llama")[0], outputs(b, "llama")[0], atol=1e-5, rtol=1e-5)
    rep = report["refine"][0]
    f = json.loads((b / "config.json").read_text())["intermediate_size"]
    layers = json.loads((b / "config.json").read_text())["num_hidden_layers"]
    assert f * layers < rep["candidate_edges"] <= 5 * f * layers  # 2 both ways, and the identity
    assert rep["loss_last"] < rep["loss_first"] and rep["residual_change"] > 0 and rep["ffn_units_moved"] > 0


def test_auto_mode_is_layered_where_the_whole_mode_does_not_fit(tmp_path):
    """A 9.8 M-parameter Llama under a 480 MiB budget: the whole mode (about 493 MB) does not fit the 360 MiB
    tensors may use, the layered one (about 295 MB) does; without a budget the whole mode runs."""
    from mergeflow.testing.models import build

    cfg = {"hidden_size": 256, "intermediate_size": 688, "vocab_size": 16000, "num_hidden_layers": 2}
    cfg |= {"num_attention_heads": 4, "num_key_value_heads": 4}
    a = build("llama", tmp_path / "a", seed=0, config=cfg)
    b = build("llama", tmp_path / "b", seed=1, config=cfg)
    data = write(tmp_path / "d.txt", TEXT)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: a\n"
        f"align: [{{permute: {{residual: true, ffn: true}}}}, {{refine: {{data: {data}, steps: 2, batch_size: 4}}}}]\n"
        "merge: linear\n",
    )
    shown = cli("plan", str(rec), "--max-memory", "480MiB", "--device", "cpu")
    assert "whole-model step: refine (mode: layered" in shown.stdout, shown.stdout + shown.stderr
    for budget, layered in (("480MiB", True), (None, False)):
        out = tmp_path / f"out-{layered}"
        res = cli("run", str(rec), str(out), "--device", "cpu", *(("--max-memory", budget) if budget else ()))
        assert res.returncode == 0, res.stderr
        rep = json.loads((out / "alignment.json").read_text())["refine"][0]
        assert rep["mode"] == ("layered" if layered else "whole") and ("candidate_edges" in rep) is layered


def test_matchings_in_worker_processes_are_those_of_one_process(tmp_path, toy, monkeypatch):
    """Every layer's matching by the sparse solver, in a pool of two spawned processes and in this one."""
    a = trained_norms(toy("llama", seed=1), tmp_path / "a", 1)
    b = trained_norms(toy("llama", seed=2), tmp_path / "b", 2)
    data = write(tmp_path / "t.txt", TEXT)
    refine = f"{{data: {data}, steps: 4, perm_lr: 0.5, batch_size: 8, mode: layered, candidates: 4}}"
    from concurrent.futures import ProcessPoolExecutor

    pools = []

    class Recorded(ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            pools.append(args[1])  # the layer
            return super().submit(*args, **kwargs)

    monkeypatch.setattr("mergeflow.learn.edges.ProcessPoolExecutor", Recorded)
    monkeypatch.setattr("mergeflow.learn.edges.DENSE_BELOW", 0)
    got = []
    for workers in (2, 1):
        monkeypatch.setattr("mergeflow.learn.edges.WORKERS", workers)
        out, report = align(tmp_path, b, a, f"[{FULL}, {{refine: {refine}}}]", name=f"w{workers}")
        got.append((load_file(out / "model.safetensors"), report["refine"][0]))
    (pool, pool_rep), (one, one_rep) = got
    layers = json.loads((b / "config.json").read_text())["num_hidden_layers"]
    assert sorted(set(pools)) == list(range(layers)) and len(pools) == layers * 5  # 4 steps and the final one
    assert pool_rep["ffn_units_moved"] == one_rep["ffn_units_moved"] > 0
    assert pool_rep["loss_last"] == one_rep["loss_last"]
    assert all(torch.equal(pool[k], one[k]) for k in one)
