"""slices: layer stacks rebuilt from layer ranges (frankenmerges), renumbered, loadable."""

import json

import torch
from safetensors.torch import load_file

from tests.conftest import cli, write


def state(path):
    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_frankenmerge_stacks_and_renumbers_layers(tmp_path, toy):
    a, b = toy("llama", seed=0), toy("llama", seed=1)
    rec = write(
        tmp_path / "r.yml",
        f"""\
models: {{a: {a}, b: {b}}}
slices:
  - sources: [{{model: a, layers: [0, 2]}}]
  - sources: [{{model: b, layers: [1, 3]}}]
merge: {{passthrough: {{}}}}
""",
    )
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "-q")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 4
    so, sa, sb = state(out), state(a), state(b)
    name = "model.layers.{}.self_attn.q_proj.weight"
    assert torch.equal(so[name.format(0)], sa[name.format(0)])
    assert torch.equal(so[name.format(2)], sb[name.format(1)])
    assert torch.equal(so[name.format(3)], sb[name.format(2)])
    assert "model.layers.4.self_attn.q_proj.weight" not in so
    from transformers import AutoModelForCausalLM

    logits = AutoModelForCausalLM.from_pretrained(str(out)).eval()(torch.tensor([[2, 5, 6]])).logits
    assert torch.isfinite(logits).all()


def test_multi_source_slice_merges_matching_layers(tmp_path, toy):
    a, b = toy("llama", seed=0), toy("llama", seed=1)
    rec = write(
        tmp_path / "r.yml",
        f"""\
models: {{a: {a}, b: {b}}}
slices:
  - sources: [{{model: a, layers: [0, 1]}}, {{model: b, layers: [2, 3]}}]
merge: linear
""",
    )
    out = tmp_path / "out"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    so, sa, sb = state(out), state(a), state(b)
    n = "model.layers.{}.mlp.up_proj.weight"
    torch.testing.assert_close(so[n.format(0)], (sa[n.format(0)] + sb[n.format(2)]) / 2)
    bad = write(
        tmp_path / "bad.yml",
        f"models: {{a: {a}}}\nslices: [{{sources: [{{model: z, layers: [2, 1]}}]}}]\nmerge: linear\n",
    )
    res = cli("validate", str(bad))
    assert res.returncode == 2 and "slices[0].sources[0]" in res.stderr
