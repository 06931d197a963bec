"""The real command, end to end: shipped recipes, every family, and one clean line for each bad input."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import ROOT, cli, write

AUTO = {
    "llama": "AutoModelForCausalLM",
    "gpt2": "AutoModelForCausalLM",
    "bert": "AutoModelForSequenceClassification",
    "roberta": "AutoModelForSequenceClassification",
    "vit": "AutoModelForImageClassification",
}


def forward(path, family):
    import transformers

    model = getattr(transformers, AUTO[family]).from_pretrained(str(path), dtype=torch.float32).eval()
    with torch.no_grad():
        if family == "vit":
            x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
            return model(pixel_values=x).logits
        return model(torch.tensor([[2, 5, 6, 7, 8, 9]])).logits


def test_shipped_recipe_end_to_end(demo_tree, tmp_path):
    out = tmp_path / "merged"
    res = cli("run", str(demo_tree / "recipes" / "llama-ties.yml"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "merged 30 tensors" in res.stdout and str(out) in res.stdout
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= files
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    card = (out / "README.md").read_text()
    assert "density: [0.3, 0.7]" in card and "ties" in card
    logits = forward(out, "llama")
    assert torch.isfinite(logits).all()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(out))("abc").input_ids


@pytest.mark.parametrize("family", list(AUTO))
def test_every_family_merges_and_loads(toy, tmp_path, family):
    a, b = toy(family, seed=0), toy(family, seed=1)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: {{linear: {{}}}}\noutput: {{shard_size: 40KB}}\n",
    )
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "-q")
    assert res.returncode == 0, res.stderr
    assert (out / "model.safetensors.index.json").exists()
    merged = {k: v for f in out.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    sa = {k: v for f in a.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    sb = {k: v for f in b.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    assert merged.keys() == sa.keys()
    for k in merged:
        if merged[k].is_floating_point():
            torch.testing.assert_close(merged[k], (sa[k] + sb[k]) / 2)
    assert torch.isfinite(forward(out, family)).all()


def test_copies_of_one_model_merge_to_an_identical_model(toy, tmp_path):
    a = toy("gpt2")
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {a}, c: {a}}}\nbase: a\nmerge: {{ties: {{density: 0.4}}}}\n",
    )
    out = tmp_path / "out"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    torch.testing.assert_close(forward(out, "gpt2"), forward(a, "gpt2"), rtol=0, atol=0)


def test_validate_plan_schema_docs(demo_tree):
    rec = str(demo_tree / "recipes" / "llama-ties.yml")
    res = cli("validate", rec)
    assert res.returncode == 0 and res.stdout.startswith("ok")
    res = cli("plan", rec)
    assert res.returncode == 0
    for frag in ("tensors: 30", "read:", "write:", "largest working set", "memory budget"):
        assert frag in res.stdout
    schema = json.loads(cli("schema").stdout)
    assert "ties" in json.dumps(schema["properties"]["merge"])
    docs = cli("docs").stdout
    assert docs == (ROOT / "docs" / "recipes.md").read_text(), "docs/recipes.md is stale: run `make docs`"
    for cmd in ("run", "validate", "plan", "schema", "docs"):
        assert cli(cmd, "--help").returncode == 0


def test_validate_prints_every_problem_and_exits_2(tmp_path):
    rec = write(tmp_path / "r.yml", "models: {a: nowhere}\nmerge: {blend: {}}\ndtype: f32\n")
    res = cli("validate", str(rec))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") and "r.yml:" in line for line in lines)
    assert "Traceback" not in res.stderr


def _bad_cases(tmp_path, toy):
    a, b = toy("llama"), toy("llama", seed=1)
    cases = {}

    def rec(name, text):
        return write(tmp_path / f"{name}.yml", text)

    cases["unknown operator"] = (
        rec("op", f"models: {{a: {a}, b: {b}}}\nmerge: blend\n"),
        "unknown merge operator",
    )
    cases["wrong parameter type"] = (
        rec("ty", f"models: {{a: {a}, b: {b}}}\nmerge: {{slerp: {{t: high}}}}\n"),
        "merge.slerp.t",
    )
    cases["missing model path"] = (
        rec("mp", f"models: {{a: {a}, b: /no/such/model}}\nmerge: linear\n"),
        "path does not exist",
    )
    other = tmp_path / "other"
    shutil.copytree(b, other)
    shard = sorted(other.glob("model-*.safetensors"))[-1]
    sd = load_file(str(shard))
    gone = sorted(sd)[0]
    save_file({k: v for k, v in sd.items() if k != gone}, str(shard))
    idx = json.loads((other / "model.safetensors.index.json").read_text())
    idx["weight_map"].pop(gone)
    (other / "model.safetensors.index.json").write_text(json.dumps(idx))
    cases["missing tensor"] = (
        rec("mt", f"models: {{a: {a}, b: {other}}}\nmerge: linear\n"),
        f"lacks tensor '{gone}'",
    )
    shp = tmp_path / "shape"
    shutil.copytree(b, shp)
    shard = sorted(shp.glob("model-*.safetensors"))[-1]
    sd = load_file(str(shard))
    key = sorted(sd)[0]
    sd[key] = torch.zeros(3, 3)
    save_file(sd, str(shard))
    cases["shape mismatch"] = (
        rec("sm", f"models: {{a: {a}, b: {shp}}}\nmerge: linear\n"),
        f"tensor '{key}': shape",
    )
    cases["different architectures"] = (
        rec("da", f"models: {{a: {a}, b: {toy('gpt2')}}}\nmerge: linear\n"),
        "different architectures",
    )
    bad = tmp_path / "corrupt"
    shutil.copytree(b, bad)
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    shard.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage garbage}")
    cases["corrupt safetensors"] = (rec("cs", f"models: {{a: {a}, b: {bad}}}\nmerge: linear\n"), "corrupt")
    trunc = tmp_path / "trunc"
    shutil.copytree(b, trunc)
    shard = sorted(trunc.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    cases["truncated safetensors"] = (
        rec("tr", f"models: {{a: {a}, b: {trunc}}}\nmerge: linear\n"),
        "truncated",
    )
    pick = tmp_path / "pickle"
    pick.mkdir()
    torch.save({"w": torch.zeros(2)}, pick / "pytorch_model.bin")
    cases["pickle checkpoint"] = (
        rec("pk", f"models: {{a: {pick}, b: {pick}}}\nmerge: linear\n"),
        "--allow-pickle",
    )
    return cases


def test_bad_inputs_give_one_line_exit_2_and_no_output(tmp_path, toy):
    for what, (recipe, fragment) in _bad_cases(tmp_path, toy).items():
        out = tmp_path / f"out-{recipe.stem}"
        res = cli("run", str(recipe), str(out))
        assert res.returncode == 2, (what, res.stderr)
        assert fragment in res.stderr, (what, res.stderr)
        assert "Traceback" not in res.stderr and res.stderr.startswith("error: "), (what, res.stderr)
        assert not out.exists(), what
        assert not list(tmp_path.glob(f".out-{recipe.stem}*")), what


def test_existing_output_refused_unless_force(tmp_path, toy):
    rec = write(
        tmp_path / "r.yml", f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nmerge: linear\n"
    )
    out = tmp_path / "out"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    first = (out / "model.safetensors").stat().st_ino
    res = cli("run", str(rec), str(out))
    assert res.returncode == 2 and "already exists (written by mergeflow); pass --force" in res.stderr
    assert (out / "model.safetensors").stat().st_ino == first
    res = cli("run", str(rec), str(out), "--force", "-q")
    assert res.returncode == 0 and (out / "model.safetensors").stat().st_ino != first
    (out / "keep.txt").write_text("x")  # a user's file: the folder is no longer mergeflow's to replace
    res = cli("run", str(rec), str(out), "--force", "-q")
    assert res.returncode == 2 and "did not write (keep.txt)" in res.stderr and (out / "keep.txt").exists()
    res = cli("run", str(rec), str(toy("llama")), "--force")
    assert res.returncode == 2 and "overlaps input" in res.stderr


def test_cli_usage_errors_exit_2(tmp_path, demo_tree):
    rec = str(demo_tree / "recipes" / "llama-linear.yml")
    assert cli("run", rec).returncode == 2
    assert cli("run", rec, str(tmp_path / "x"), "--max-memory", "lots").returncode == 2
    res = cli("run", rec, str(tmp_path / "y"), "--device", "cuda")
    assert res.returncode in (0, 2) and (res.returncode == 0 or "CUDA is not available" in res.stderr)


def test_an_accelerator_out_of_memory_is_one_line_and_leaves_nothing(toy, tmp_path, capsys, monkeypatch):
    """torch's OutOfMemoryError (CUDA, MPS) is a resource limit, not a bug: one line with what to lower."""
    from mergeflow.graph import run
    from tests.helpers import clean_failure

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(run, "execute", oom)
    a = toy("llama")
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {a}}}\nmerge: linear\n")
    out = tmp_path / "out"
    err = clean_failure(capsys, ["run", str(rec), str(out), "-q"], out, code=1)
    assert "the device ran out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in err, err
    assert "internal error" not in err
