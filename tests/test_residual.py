"""Residual-stream alignment: planted maps are recovered, functions kept, invalid requests refused."""

from __future__ import annotations

import pytest
import torch

from mergeflow.align.scramble import random_orthogonal
from mergeflow.align.stream_map import ResidualMap, centred_basis, solve
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import align, exact_steps, outputs, state, trained_norms

PERM = "[{permute: {residual: true, heads: true, ffn: true}}, {rotate: {qk: true, vo: true}}, {rescale: {}}]"
ORTH = "[{orthogonal: {residual: true}}, " + PERM[1:]


@pytest.mark.parametrize(
    "family",
    [
        "gpt2",
        "vit",
        "llama",
        "bert",
        "roberta",
        "distilbert",
        "gemma",
        "gemma2",
        "gemma3",
        "phi3",
        "olmo2",
        "mixtral",
        "qwen2_moe",
    ],
)
def test_planted_residual_permutation_is_recovered(tmp_path, toy, family):
    a = trained_norms(toy(family), tmp_path / "a")
    b = scramble_model(a, tmp_path / "b", seed=5, heads_perm=True, residual="permutation")
    # the planted map keeps the function
    torch.testing.assert_close(outputs(b, family)[0], outputs(a, family)[0], atol=1e-6, rtol=1e-6)
    c, report = align(tmp_path, b, a, exact_steps(family, PERM))
    res = report["residual"][0]
    assert res["distance_start"] > 1.0 and res["distance_best"] < 1e-9, res["history"]
    torch.testing.assert_close(outputs(c, family)[0], outputs(b, family)[0], atol=1e-6, rtol=1e-6)
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5  # the weights of the anchor come back


@pytest.mark.parametrize("family", ["vit", "llama", "gpt2", "gemma", "phi3", "mixtral", "qwen2_moe"])
def test_planted_orthogonal_residual_map_is_recovered(tmp_path, toy, family):
    untied = {"config": {"tie_word_embeddings": False}} if family != "vit" else {}  # tied heads: see below
    a = trained_norms(toy(family, **untied), tmp_path / "a")
    b = scramble_model(a, tmp_path / "b", seed=6, heads_perm=True, residual="orthogonal")
    logits_a, logits_b = outputs(a, family)[0], outputs(b, family)[0]
    torch.testing.assert_close(logits_b, logits_a, atol=1e-6, rtol=1e-6)  # a folded, rotated copy
    c, report = align(tmp_path, b, a, exact_steps(family, ORTH))
    res = report["residual"][0]
    assert res["distance_best"] < 1e-6 * res["distance_start"], res["history"]
    out_b, out_c = outputs(b, family), outputs(c, family)
    torch.testing.assert_close(out_c[0], out_b[0], atol=1e-6, rtol=1e-6)  # logits equal
    # hidden states live in the anchor's basis now: their norms per position are kept
    for hb, hc in zip(out_b[1:-1], out_c[1:-1], strict=True):
        torch.testing.assert_close(hc.norm(dim=-1), hb.norm(dim=-1), atol=1e-5, rtol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "phi3"])
def test_float32_layers_under_a_residual_map_keep_the_function(tmp_path, toy, family):
    """align_dtype: float32 with a stream map (solved in float64, applied to float32 layers): the function is
    kept and the weights are those of the float64 alignment."""
    steps = PERM if family == "gpt2" else ORTH
    untied = {"config": {"tie_word_embeddings": False}}
    a = trained_norms(toy(family, **untied), tmp_path / "a")
    b = scramble_model(
        a,
        tmp_path / "b",
        seed=6,
        heads_perm=True,
        residual="permutation" if family == "gpt2" else "orthogonal",
    )
    c, _ = align(tmp_path, b, a, exact_steps(family, steps), name="f32", extra="align_dtype: float32\n")
    c64, _ = align(tmp_path, b, a, exact_steps(family, steps), name="f64")
    torch.testing.assert_close(outputs(c, family)[0], outputs(b, family)[0], atol=1e-5, rtol=1e-5)
    s64, sc = (
        state(c64),
        state(c),
    )  # the same weights as the float64 alignment (folded, for an orthogonal map)
    assert max((s64[k] - sc[k]).abs().max().item() for k in s64) < 1e-4


@pytest.mark.parametrize("family", ["vit", "llama", "gpt2"])
def test_aligning_to_itself_keeps_the_model_and_the_identity_map(tmp_path, toy, family):
    a = trained_norms(toy(family), tmp_path / "a")
    steps = PERM if family == "gpt2" else ORTH
    c, report = align(tmp_path, a, a, steps)
    assert report["residual"][0]["identity"]
    xs, ys = outputs(a, family), outputs(c, family)
    n_hidden = len(xs) - 1 - (family != "vit")  # logits, hidden states, (a cached decoding step)
    # folding keeps logits and every hidden state but the last of causal LMs (after the final norm, whose
    # scale moved into the head)
    keep = [0, *range(1, n_hidden), *([len(xs) - 1] if family != "vit" else [n_hidden])]
    for i in keep:
        torch.testing.assert_close(ys[i], xs[i], atol=1e-6, rtol=1e-6)


def test_independent_models_get_closer_and_never_worse(tmp_path, toy):
    a, b = (
        trained_norms(toy("vit", seed=1), tmp_path / "a", 1),
        trained_norms(toy("vit", seed=2), tmp_path / "b", 2),
    )
    c, report = align(tmp_path, b, a, ORTH)
    res = report["residual"][0]
    distances = [h["distance"] for h in res["history"]]  # the first is at the identity map
    assert res["distance_best"] < 0.99 * distances[0] and not res["identity"]
    torch.testing.assert_close(outputs(c, "vit")[0], outputs(b, "vit")[0], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("family", "why"),
    [
        ("gpt2", "tied to the input embeddings"),
        ("bert", "post-norm"),
        ("gemma", "tied to the input embeddings"),
        ("gemma2", "normalises each block's output"),
        ("olmo2", "normalises each block's output"),
    ],
)
def test_orthogonal_map_refused_where_not_exact(tmp_path, toy, family, why):
    a = toy(family)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{anchor: {a}, model: {a}}}\nanchor: anchor\n"
        f"align: [{{orthogonal: {{residual: true}}}}]\nmerge: {{passthrough: {{source: model}}}}\n",
    )
    proc = cli("run", str(rec), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "align[0].orthogonal" in proc.stderr and why in proc.stderr
    assert not (tmp_path / "out").exists()


def test_group_solvers_are_optimal_and_stay_in_their_groups():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    r = solve(m, "orthogonal").matrix
    torch.testing.assert_close(r @ r.T, torch.eye(12, dtype=torch.float64))
    for _ in range(20):  # no other orthogonal matrix does better
        assert float((random_orthogonal(12, gen) * m).sum()) <= float((r * m).sum()) + 1e-9
    rc = solve(m, "orthogonal_centred").matrix
    ones = torch.ones(12, dtype=torch.float64)
    torch.testing.assert_close(rc @ ones, ones)  # keeps LayerNorm's centring
    torch.testing.assert_close(rc @ rc.T, torch.eye(12, dtype=torch.float64))
    basis = centred_basis(12)
    for _ in range(20):
        other = torch.outer(ones, ones) / 12 + basis @ random_orthogonal(11, gen) @ basis.T
        assert float((other * m).sum()) <= float((rc * m).sum()) + 1e-9
    perm = torch.randperm(12, generator=gen)
    planted = ResidualMap(perm=perm)
    found = solve(planted.as_matrix(12) * 5 + 0.1 * m, "permutation")
    assert torch.equal(found.perm, perm)
    x = torch.randn(3, 12, 4, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(found.undo(found.apply(x, 1), 1), x)
