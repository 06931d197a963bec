"""Statistics files and the data-aware operators (fisher, regmean)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

from mergeflow.io.stats_file import write_stats
from mergeflow.merge.base import MergeContext
from mergeflow.merge.catalog import OPERATORS
from tests.conftest import cli, linked, write


def call(name, tensors, stats, params=None, model_params=None, transposed=False, scale=()):
    op = OPERATORS[name]
    mp = [
        op.model_params.model_validate((model_params or [{}] * len(tensors))[i]) for i in range(len(tensors))
    ]
    ctx = MergeContext(
        "t", 0, tuple(f"m{i}" for i in range(len(tensors))), 0, tuple(stats), scale, transposed
    )
    return op.fn([t.clone() for t in tensors], None, op.params.model_validate(params or {}), mp, ctx)


def regression(seed, n=200, d_in=6, d_out=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = x @ torch.randn(d_in, d_out, generator=g, dtype=torch.float64) + 0.3 * torch.randn(
        n, d_out, generator=g, dtype=torch.float64
    )
    w = torch.linalg.lstsq(x, y).solution.T  # [out, in], as nn.Linear stores it
    return x, y, w


def test_regmean_recovers_the_joint_least_squares_solution():
    (x1, y1, w1), (x2, y2, w2) = regression(0), regression(1)
    joint = torch.linalg.lstsq(torch.cat([x1, x2]), torch.cat([y1, y2])).solution.T
    g1, g2 = x1.T @ x1 / len(x1), x2.T @ x2 / len(x2)  # averaged Grams; equal counts
    got = call("regmean", [w1, w2], [g1, g2], {"alpha": 1.0, "ridge": 0.0})
    assert_close(got, joint, rtol=1e-9, atol=1e-9)
    got_t = call(
        "regmean",
        [w1.T.contiguous(), w2.T.contiguous()],
        [g1, g2],
        {"alpha": 1.0, "ridge": 0.0},
        transposed=True,
    )  # GPT-2 Conv1D layout
    assert_close(got_t, joint.T, rtol=1e-9, atol=1e-9)
    # alpha 0: each output row is a per-input-feature weighted mean by the Grams' diagonals
    d1, d2 = torch.diagonal(g1), torch.diagonal(g2)
    assert_close(
        call("regmean", [w1, w2], [g1, g2], {"alpha": 0.0, "ridge": 0.0}), (w1 * d1 + w2 * d2) / (d1 + d2)
    )


def test_fisher_closed_forms():
    a, b = torch.tensor([1.0, 2.0, -3.0]), torch.tensor([3.0, 0.0, 1.0])
    same = torch.tensor([0.5, 2.0, 1.0])
    assert_close(call("fisher", [a, b], [same, same]), (a + b) / 2)
    fa, fb = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([1.0, 2.0, 1.0])
    got = call("fisher", [a, b], [fa, fb], {"epsilon": 0.0}, [{"weight": 1.0}, {"weight": 2.0}])
    assert_close(got, (fa * a + 2 * fb * b) / (fa + 2 * fb))
    # all Fishers 0: the epsilon floor gives the weighted average
    zero = torch.zeros(3)
    assert_close(
        call("fisher", [a, b], [zero, zero], {}, [{"weight": 1.0}, {"weight": 3.0}]), (a + 3 * b) / 4
    )
    # normalize: each Fisher divided by its model's mean first
    got = call("fisher", [a, b], [fa, 10 * fb], {"epsilon": 0.0, "normalize": True}, scale=(1.0, 10.0))
    assert_close(got, (fa * a + fb * b) / (fa + fb))


def test_regmean_end_to_end_with_fallback(tmp_path):
    (x1, y1, w1), (x2, y2, w2) = regression(0), regression(1)
    joint = torch.linalg.lstsq(torch.cat([x1, x2]), torch.cat([y1, y2])).solution.T
    for name, w, x, bias in (("a", w1, x1, 1.0), ("b", w2, x2, 3.0)):
        save_file(
            {"fc.weight": w.float(), "fc.bias": torch.full((3,), bias)}, str(tmp_path / f"{name}.safetensors")
        )
        write_stats(
            tmp_path / f"{name}.gram.safetensors",
            {"fc.weight": (x.T @ x / len(x)).float()},
            "gram",
            len(x),
            name,
        )
    recipe = write(
        tmp_path / "r.yml",
        "models: {a: a.safetensors, b: b.safetensors}\n"
        "merge: {regmean: {alpha: 1.0, ridge: 0.0}}\n"
        "stats: {a: a.gram.safetensors, b: b.gram.safetensors}\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert_close(out["fc.weight"].double(), joint, rtol=2e-5, atol=2e-5)
    assert_close(out["fc.bias"], torch.full((3,), 2.0))  # no statistics: the fallback (linear)


@pytest.fixture(scope="module")
def digits_pair(tmp_path_factory, digits_finetunes):
    """The shared fine-tunes of a digits ViT on digits 0-4 (a) and 5-9 (b); data files for each."""
    from mergeflow.testing import train as tt

    root = linked(digits_finetunes, tmp_path_factory.mktemp("digits"))
    x, y = tt.digits("train")
    lo = y < 5
    tt.save_npz(root / "a.npz", x[lo][:120], y[lo][:120])
    tt.save_npz(root / "b.npz", x[~lo][:120], y[~lo][:120])
    return root, root / "a", root / "b"


@pytest.mark.slow
def test_stats_and_data_aware_merges_on_trained_digits_models(digits_pair):
    from mergeflow.testing import train as tt

    root, a, b = digits_pair
    for m in ("a", "b"):
        for kind in ("fisher", "gram"):
            res = cli(
                "stats",
                str(root / m),
                "--data",
                str(root / f"{m}.npz"),
                "--kind",
                kind,
                "-o",
                str(root / f"{m}.{kind}.safetensors"),
                "-q",
                "--device",
                "cpu",
            )
            assert res.returncode == 0, res.stderr
    fisher = load_file(str(root / "a.fisher.safetensors"))
    assert all((t >= 0).all() for t in fisher.values()) and sum(float(t.sum()) for t in fisher.values()) > 0
    gram = load_file(str(root / "a.gram.safetensors"))
    q = gram["vit.encoder.layer.0.attention.attention.query.weight"]
    assert q.shape == (32, 32) and torch.allclose(q, q.T) and torch.linalg.eigvalsh(q.double()).min() > -1e-4
    xt, yt = tt.digits("test")
    acc = {}
    for op, kind in (("linear", None), ("fisher", "fisher"), ("regmean", "gram")):
        stats = f"stats: {{a: a.{kind}.safetensors, b: b.{kind}.safetensors}}\n" if kind else ""
        recipe = write(root / f"{op}.yml", f"models: {{a: a, b: b}}\nmerge: {{{op}: {{}}}}\n{stats}")
        res = cli("run", str(recipe), str(root / f"out_{op}"), "--force")
        assert res.returncode == 0, res.stderr
        assert ("fisher statistics: mean a " in res.stdout) == (op == "fisher")
        acc[op] = tt.accuracy(root / f"out_{op}", xt, yt)
        if op == "fisher":  # plan tells how far apart the models' Fisher scales are
            plan = cli("plan", str(recipe))
            assert "statistics: mean a " in plan.stdout and "x apart; fisher's normalize" in plan.stdout
    worst_source = min(tt.accuracy(a, xt, yt), tt.accuracy(b, xt, yt))
    # each fine-tune knows half the classes (<= ~65% test accuracy); the merges recover most of both
    assert min(acc.values()) > worst_source + 0.15, (acc, worst_source)


def test_gram_of_a_permuted_model_is_the_permuted_gram(tmp_path, toy):
    """FFN neurons permuted by P: down_proj's inputs are P x, so its Gram becomes P G P^T; the residual
    stream is untouched, so q/k/v/up/gate Grams stay the same."""
    from mergeflow.testing.scramble import scramble_model

    src = toy("llama")
    dst = scramble_model(src, tmp_path / "perm", seed=3, rotate=False, permute=True, scale=False)
    data = write(tmp_path / "d.txt", "hello world\nthe quick brown fox\njumps over the lazy dog\nmerge me\n")
    grams = {}
    for name, m in (("src", src), ("dst", dst)):
        res = cli(
            "stats",
            str(m),
            "--data",
            str(data),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / f"{name}.safetensors"),
            "-q",
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
        grams[name] = load_file(str(tmp_path / f"{name}.safetensors"))
    from mergeflow.io.reader import ModelReader

    up_s = ModelReader("s", src).read("model.layers.0.mlp.up_proj.weight")
    up_d = ModelReader("d", dst).read("model.layers.0.mlp.up_proj.weight")
    perm = torch.cdist(up_d, up_s).argmin(dim=1)  # row i of dst is row perm[i] of src
    assert torch.equal(up_d, up_s[perm])
    g_s = grams["src"]["model.layers.0.mlp.down_proj.weight"]
    g_d = grams["dst"]["model.layers.0.mlp.down_proj.weight"]
    assert_close(g_d, g_s[perm][:, perm], rtol=1e-4, atol=1e-5)
    for t in ("self_attn.q_proj", "mlp.up_proj"):
        assert_close(
            grams["dst"][f"model.layers.0.{t}.weight"],
            grams["src"][f"model.layers.0.{t}.weight"],
            rtol=1e-4,
            atol=1e-5,
        )


def test_bad_statistics_and_data_get_one_line_errors(tmp_path, toy):
    a, b = toy("llama"), toy("llama", seed=1)
    vit = toy("vit")
    good = write(tmp_path / "d.txt", "hello\nworld\n")
    cases = {
        "empty": (
            ["stats", str(a), "--data", str(write(tmp_path / "e.txt", "\n\n")), "--kind", "gram"],
            "no examples",
        ),
        "jsonl": (
            [
                "stats",
                str(a),
                "--data",
                str(write(tmp_path / "m.jsonl", '{"text": "a"}\n{oops\n')),
                "--kind",
                "gram",
            ],
            "m.jsonl:2: invalid JSON",
        ),
        "labels": (
            ["stats", str(vit), "--data", str(tmp_path / "l.npz"), "--kind", "fisher"],
            "out of range",
        ),
    }
    np.savez(tmp_path / "l.npz", x=np.zeros((2, 3, 16, 16), np.float32), y=np.array([1, 12]))
    for name, (args, frag) in cases.items():
        res = cli(*args, "-o", str(tmp_path / f"{name}.safetensors"), "-q", "--device", "cpu")
        assert res.returncode == 2 and frag in res.stderr and "Traceback" not in res.stderr, (
            name,
            res.stderr,
        )
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    res = cli(
        "stats",
        str(a),
        "--data",
        str(good),
        "--kind",
        "fisher",
        "-o",
        str(tmp_path / "a.fisher.safetensors"),
        "-q",
    )
    assert res.returncode == 0, res.stderr
    save_file(
        {"nothing.weight": torch.zeros(2)},
        str(tmp_path / "other.safetensors"),
        metadata={"mergeflow_stats": "fisher", "examples": "1"},
    )
    recipes = {
        "missing": ("stats: {a: a.fisher.safetensors}\n", "needs fisher statistics for model(s) b"),
        "nofile": (
            "stats: {a: a.fisher.safetensors, b: nope.safetensors}\n",
            "stats.b: statistics file does not exist",
        ),
        "other": ("stats: {a: a.fisher.safetensors, b: other.safetensors}\n", "statistics of another model?"),
        "kind": (
            "stats: {a: a.fisher.safetensors, b: a.fisher.safetensors}\nmerge: {regmean: {}}\n",
            "holds fisher statistics",
        ),
        "aligned": (
            "stats: {a: a.fisher.safetensors, b: a.fisher.safetensors}\nanchor: a\nalign: [{rotate: {}}]\n",
            "are aligned",
        ),
    }
    for name, (extra, frag) in recipes.items():
        merge = "" if "merge:" in extra else "merge: {fisher: {}}\n"
        r = write(tmp_path / f"{name}.yml", f"models: {{a: {a}, b: {b}}}\n{merge}{extra}")
        res = cli("run", str(r), str(tmp_path / f"out_{name}"), "-q")
        assert res.returncode == 2 and frag in res.stderr and "Traceback" not in res.stderr, (
            name,
            res.stderr,
        )
        assert not (tmp_path / f"out_{name}").exists()


def test_gpt2_conv1d_grams_are_marked_transposed_and_regmean_runs(tmp_path, toy):
    a, b = toy("gpt2"), toy("gpt2", seed=1, perturb_from=toy("gpt2"))
    data = write(tmp_path / "d.jsonl", '{"text": "hello world"}\n{"text": "merge the models, please"}\n')
    for name, m in (("a", a), ("b", b)):
        res = cli(
            "stats",
            str(m),
            "--data",
            str(data),
            "--kind",
            "gram",
            "-o",
            str(tmp_path / f"{name}.safetensors"),
            "-q",
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
    from safetensors import safe_open

    with safe_open(str(tmp_path / "a.safetensors"), "pt") as h:
        meta = h.metadata()
        assert h.get_slice("transformer.h.0.mlp.c_proj.weight").get_shape() == [128, 128]  # input: 4 x n_embd
    assert "transformer.h.0.attn.c_attn.weight" in json.loads(meta["transposed"])
    recipe = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: {{regmean: {{}}}}\n"
        "stats: {a: a.safetensors, b: b.safetensors}\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
