"""eval barrier / eval equivalence."""

from __future__ import annotations

import json

import pytest

from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write

TEXT = "the quick brown fox\njumps over the lazy dog\nhello world, merge me!\nalign then merge\n" * 3


@pytest.fixture(scope="module")
def pair(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("barrier")
    a = toy("llama")
    scrambled = scramble_model(a, root / "scrambled", seed=4)
    other = toy("llama", seed=7)
    return root, a, scrambled, other, write(root / "d.txt", TEXT)


def barrier(root, a, b, data, *extra, out="bar"):
    res = cli(
        "eval",
        "barrier",
        str(a),
        str(b),
        "--data",
        str(data),
        "--points",
        "5",
        "-o",
        str(root / out),
        "--device",
        "cpu",
        *extra,
    )
    assert res.returncode == 0, res.stderr
    return json.loads((root / f"{out}.json").read_text()), res


def test_barrier_of_a_model_with_itself_is_zero(pair):
    root, a, _s, _o, data = pair
    rep, _ = barrier(root, a, a, data, out="self")
    v = rep["variants"]["naive"]
    assert abs(v["barrier"]) < 1e-6 and len(v["points"]) == 5
    assert (root / "self.png").stat().st_size > 1000


def test_alignment_removes_the_barrier_of_an_exact_reparameterisation(pair):
    root, a, scrambled, _o, data = pair
    rep, res = barrier(root, a, scrambled, data, "--align", "default", out="scr")
    v = rep["variants"]
    assert set(v) == {"naive", "+rotate", "+permute", "+rescale"}
    assert v["naive"]["barrier"] > 0.01
    assert abs(v["+rescale"]["barrier"]) < 1e-3, v["+rescale"]["barrier"]
    assert "+rescale" in res.stdout
    again, _ = barrier(root, a, scrambled, data, "--align", "default", out="scr2")

    def curves(r):  # everything but the (measured) alignment time
        return {k: {f: x for f, x in d.items() if f != "align_seconds"} for k, d in r["variants"].items()}

    assert curves(again) == curves(rep)  # deterministic


def test_equivalence(pair):
    root, a, scrambled, other, data = pair
    res = cli("eval", "equivalence", str(a), str(scrambled), "--data", str(data), "--device", "cpu")
    assert res.returncode == 0 and "equivalent" in res.stdout, res.stderr
    res = cli("eval", "equivalence", str(a), str(other), "--data", str(data), "--device", "cpu")
    assert res.returncode == 1 and "not equivalent" in res.stderr


def test_barrier_bad_input(pair, tmp_path):
    root, a, _s, _o, data = pair
    steps = write(tmp_path / "steps.yml", "models: {}\n")  # no align: list
    res = cli(
        "eval",
        "barrier",
        str(a),
        str(a),
        "--data",
        str(data),
        "--align",
        str(steps),
        "-o",
        str(tmp_path / "b"),
    )
    assert res.returncode == 2 and "align:" in res.stderr and "Traceback" not in res.stderr
    res = cli(
        "eval", "barrier", str(a), str(a), "--data", str(tmp_path / "none.txt"), "-o", str(tmp_path / "b")
    )
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_a_refused_step_stops_before_any_curve(toy, tmp_path):
    """A tied head refuses the orthogonal stream map: said at once, not after the earlier steps' curves."""
    a, b = toy("qwen2"), toy("qwen2", seed=1)
    data = write(tmp_path / "d.txt", TEXT)
    steps = write(
        tmp_path / "steps.yml",
        "align:\n  - permute: {heads: true, ffn: true}\n  - orthogonal: {residual: true}\n",
    )
    import time

    start = time.perf_counter()
    res = cli(
        "eval",
        "barrier",
        str(a),
        str(b),
        "--data",
        str(data),
        "--align",
        str(steps),
        "-o",
        str(tmp_path / "b"),
        "--points",
        "3",
        "-q",
    )
    assert res.returncode == 2 and "tied" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "b.json").exists()
    assert time.perf_counter() - start < 60


def test_relative_data_of_a_steps_file(pair, tmp_path, monkeypatch):
    """refine's data named relative to the steps file is found by eval barrier too (the steps are copied)."""
    from mergeflow.cli.eval_cmds import _steps

    root, a, _s, _o, data = pair
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "d.txt", TEXT)
    steps = write(tmp_path / "sub" / "steps.yml", "align:\n  - refine: {data: d.txt, steps: 2}\n")
    monkeypatch.chdir(tmp_path)
    got = _steps(str(steps), str(a))
    assert got == [{"refine": {"data": str((tmp_path / "sub" / "d.txt").resolve()), "steps": 2}}]


def test_barrier_midpoint_is_the_merge_when_the_stream_map_folds_the_anchor(tmp_path, toy):
    """With an orthogonal stream map the anchor is folded too: the path must run between the endpoints a merge
    averages, so its midpoint is the merged model (measured against the unfolded anchor it was not)."""
    import torch

    from mergeflow.eval.loss import evaluate
    from mergeflow.graph import run as runner
    from mergeflow.stats.data import load_data
    from mergeflow.stats.model import load_model
    from tests.helpers import trained_norms

    a = trained_norms(toy("llama", seed=1), tmp_path / "a", 1)
    b = trained_norms(toy("llama", seed=2), tmp_path / "b", 2)
    data = write(tmp_path / "d.txt", TEXT)
    steps = "[{orthogonal: {residual: true}}]"
    write(tmp_path / "steps.yml", f"align: {steps}\n")
    rep, _ = barrier(tmp_path, a, b, data, "--align", str(tmp_path / "steps.yml"), out="fold")
    mid = rep["variants"]["+orthogonal"]["midpoint_loss"]
    rec = write(
        tmp_path / "merge.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: a\nalign: {steps}\nmerge: {{linear: {{weight: 0.5}}}}\n",
    )
    opts = runner.Options(device="cpu")
    out = runner.run(runner.prepare(rec, opts), tmp_path / "merged", opts).out
    merged = evaluate(load_model(out, torch.device("cpu")), load_data(data))["loss"]
    assert mid == pytest.approx(merged, rel=1e-5, abs=1e-6)
