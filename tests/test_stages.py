"""Multi-stage files: mergekit-multi's documents and the native stages: list, planned as a graph before
anything runs, intermediate outputs reused while up to date."""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import cli, write
from tests.helpers import tensor

NAMES = ("model.embed_tokens.weight", "model.layers.0.mlp.up_proj.weight", "lm_head.weight")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from mergeflow.testing.models import build

    root = tmp_path_factory.mktemp("stages")
    a = build("llama", root / "a", seed=0)
    return {
        "a": a,
        **{k: build("llama", root / k, seed=s, perturb_from=a) for k, s in (("b", 1), ("c", 2), ("d", 3))},
    }


def multi(m):
    return f"""\
name: first-merge
merge_method: linear
models:
  - model: {m["a"]}
  - model: {m["b"]}
parameters: {{weight: 0.5}}
dtype: float32
---
name: second-merge
merge_method: slerp
base_model: first-merge
models:
  - model: first-merge
  - model: {m["c"]}
parameters: {{t: 0.3}}
dtype: float32
---
merge_method: ties
base_model: {m["a"]}
models:
  - model: second-merge
    parameters: {{density: 0.6, weight: 0.5}}
  - model: {m["d"]}
    parameters: {{density: 0.8, weight: 0.5}}
dtype: float32
"""


def native(m):
    return f"""\
stages:
  - name: first-merge
    models: {{a: {m["a"]}, b: {m["b"]}}}
    merge: linear
  - name: second-merge
    models: {{first: {{stage: first-merge}}, c: {m["c"]}}}
    base: first
    merge: {{slerp: {{t: 0.3}}}}
  - models:
      a: {m["a"]}
      second: {{stage: second-merge, params: {{density: 0.6, weight: 0.5}}}}
      d: {{path: {m["d"]}, params: {{density: 0.8, weight: 0.5}}}}
    base: a
    merge: ties
"""


def by_hand(tmp_path, m):
    """The same three merges as three single recipes, run one after the other."""
    one = write(tmp_path / "1.yml", f"models: {{a: {m['a']}, b: {m['b']}}}\nmerge: linear\n")
    assert cli("run", str(one), str(tmp_path / "h1"), "-q").returncode == 0
    two = write(
        tmp_path / "2.yml",
        f"models: {{f: {tmp_path / 'h1'}, c: {m['c']}}}\nbase: f\nmerge: {{slerp: {{t: 0.3}}}}\n",
    )
    assert cli("run", str(two), str(tmp_path / "h2"), "-q").returncode == 0
    three = write(
        tmp_path / "3.yml",
        f"models: {{a: {m['a']}, s: {{path: {tmp_path / 'h2'}, params: {{density: 0.6, "
        f"weight: 0.5}}}}, d: {{path: {m['d']}, params: {{density: 0.8, weight: 0.5}}}}}}"
        "\nbase: a\nmerge: ties\n",
    )
    assert cli("run", str(three), str(tmp_path / "h3"), "-q").returncode == 0
    return tmp_path / "h3"


@pytest.mark.parametrize("form", ["mergekit", "native"])
def test_stages_equal_the_merges_run_by_hand(tmp_path, models, form):
    rec = write(tmp_path / "multi.yml", (multi if form == "mergekit" else native)(models))
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "-q")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "out.stages").iterdir() if not p.name.startswith(".")) == [
        "first-merge",
        "second-merge",
    ]
    ref = by_hand(tmp_path / "hand", models)
    for name in NAMES:
        torch.testing.assert_close(tensor(out, name), tensor(ref, name), rtol=0, atol=1e-6)


def test_up_to_date_stages_are_reused_and_stale_ones_rerun(tmp_path, models):
    rec = write(tmp_path / "multi.yml", multi(models))
    out, inter = tmp_path / "out", tmp_path / "mid"
    assert cli("run", str(rec), str(out), "--intermediate-dir", str(inter), "-q").returncode == 0
    first = (inter / "first-merge" / "model.safetensors").stat().st_mtime_ns
    res = cli("run", str(rec), str(out), "--intermediate-dir", str(inter), "--force")
    assert res.returncode == 0, res.stderr
    assert "stage first-merge: up to date" in res.stdout and "stage second-merge: up to date" in res.stdout
    assert "ran 1 of 3 stage(s)" in res.stdout
    assert (inter / "first-merge" / "model.safetensors").stat().st_mtime_ns == first
    plan = cli("plan", str(rec), "--intermediate-dir", str(inter))
    assert plan.returncode == 0, plan.stderr
    assert "first-merge" in plan.stdout and "second-merge <- first-merge" in plan.stdout
    assert plan.stdout.count("[up to date]") == 2 and "final <- second-merge" in plan.stdout
    # the recipe of the second stage changes: it and what follows run again, the first is kept
    write(rec, multi(models).replace("t: 0.3", "t: 0.4"))
    res = cli("run", str(rec), str(out), "--intermediate-dir", str(inter), "--force")
    assert res.returncode == 0, res.stderr
    assert "stage first-merge: up to date" in res.stdout and "ran 2 of 3" in res.stdout


def test_an_unusable_out_is_refused_before_any_stage_runs(tmp_path, models):
    rec = write(tmp_path / "multi.yml", multi(models))
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("user data")
    res = cli("run", str(rec), str(out))
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out.stages").exists() and (out / "mine.txt").read_text() == "user data"


def test_stage_option_runs_up_to_one_stage(tmp_path, models):
    rec = write(tmp_path / "multi.yml", multi(models))
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "--stage", "first-merge", "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "out.stages" / "first-merge" / "config.json").is_file()
    assert not (tmp_path / "out.stages" / "second-merge").exists() and not out.exists()
    assert "no such stage" in cli("run", str(rec), str(out), "--stage", "nope").stderr


@pytest.mark.parametrize(
    ("text", "frag"),
    [
        (
            "stages:\n  - name: x\n    models: {{a: {a}, y: {{stage: y}}}}\n    merge: linear\n"
            "  - name: y\n    models: {{a: {a}, x: {{stage: x}}}}\n    merge: linear\n",
            "cycle: x -> y -> x",
        ),
        (
            "stages:\n  - models: {{a: {a}, y: {{stage: nobody}}}}\n    merge: linear\n",
            "'nobody' is not another stage of this file",
        ),
        (
            "stages:\n  - {{models: {{a: {a}}}, merge: linear}}\n  - {{models: {{a: {a}}}, merge: linear}}\n",
            "only the final stage may be unnamed",
        ),
        (
            "name: one\nmodels: {{a: {a}}}\nmerge: linear\n---\nmodels: {{b: {a}}}\nmerge: slerpy\n",
            "unknown merge operator",
        ),
    ],
)
def test_bad_stage_graphs_are_refused_before_anything_runs(tmp_path, models, text, frag):
    rec = write(tmp_path / "multi.yml", text.format(a=models["a"]))
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and frag in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out.stages").exists() and not (tmp_path / "out").exists()


def test_later_stage_shapes_checked_before_the_first_runs(tmp_path, models, toy):
    other = toy("llama", config={"hidden_size": 48})
    rec = write(
        tmp_path / "multi.yml",
        f"""\
name: one
merge_method: linear
models: [{{model: {models["a"]}}}, {{model: {models["b"]}}}]
parameters: {{weight: 1.0}}
---
merge_method: linear
models: [{{model: one}}, {{model: {other}}}]
parameters: {{weight: 1.0}}
""",
    )
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and "shape" in res.stderr, res.stderr
    assert not (tmp_path / "out.stages").exists()
    assert cli("validate", str(rec)).returncode == 2


def test_validate_and_convert_multi(tmp_path, models):
    rec = write(tmp_path / "multi.yml", multi(models))
    res = cli("validate", str(rec))
    assert res.returncode == 0 and "ok: 3 stages (first-merge, second-merge, final)" in res.stdout, res.stderr
    conv = cli("convert", str(rec))
    assert conv.returncode == 0, conv.stderr
    native_file = write(tmp_path / "native.yml", conv.stdout)
    assert "stages:" in conv.stdout and "stage: first-merge" in conv.stdout
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    cwd = os.getcwd()
    assert cli("run", str(rec), str(out1), "-q").returncode == 0
    os.chdir(tmp_path)
    try:
        res = cli("run", str(native_file), str(out2), "-q")
    finally:
        os.chdir(cwd)
    assert res.returncode == 0, res.stderr
    for name in NAMES:
        assert torch.equal(tensor(out1, name), tensor(out2, name))


def test_a_file_named_like_a_stamp_is_never_replaced(tmp_path, models):
    rec = write(tmp_path / "multi.yml", multi(models))
    inter = tmp_path / "mid"
    inter.mkdir()
    (inter / ".first-merge.mergeflow-stage.json").write_text("the user's notes\n")
    res = cli("run", str(rec), str(tmp_path / "out"), "--intermediate-dir", str(inter))
    assert res.returncode == 2 and "not written by mergeflow" in res.stderr, res.stderr
    assert (inter / ".first-merge.mergeflow-stage.json").read_text() == "the user's notes\n"
    assert not (inter / "first-merge").exists()
