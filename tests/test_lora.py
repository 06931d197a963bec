"""LoRA adapters applied while reading equal peft's merge_and_unload(); bad adapters are refused by name."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mergeflow.io.lora import LoraReader
from tests.conftest import cli, write
from tests.helpers import clean_failure, make_adapter

peft = pytest.importorskip("peft")


def assert_reads_like(reader: LoraReader, merged: dict[str, torch.Tensor]) -> None:
    changed = 0
    for name in reader.tensors:
        if name not in merged:
            continue
        got = reader.read(name, dtype=torch.float32)
        torch.testing.assert_close(got, merged[name].float(), rtol=1e-5, atol=1e-5, msg=name)
        if got.dim() == 2:  # a block of rows reads the same rows
            torch.testing.assert_close(reader.read(name, dtype=torch.float32, rows=(1, 3)), got[1:3])
        changed += name in reader.updates or name in reader.replaced
    assert changed >= 3


def test_llama_adapter_with_rslora_patterns_embeddings_and_modules_to_save(tmp_path, toy):
    base = toy("llama")
    merged = make_adapter(
        base,
        tmp_path / "ad",
        "llama",
        r=4,
        lora_alpha=8,
        use_rslora=True,
        target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"down_proj": 3},
        modules_to_save=["lm_head"],
    )
    reader = LoraReader("m", base, tmp_path / "ad")
    assert reader.updates["model.layers.0.self_attn.v_proj.weight"].scale == pytest.approx(8 / 2**0.5)
    assert reader.updates["model.layers.1.mlp.down_proj.weight"].scale == pytest.approx(3 / 2)
    assert_reads_like(reader, merged)


def test_gpt2_conv1d_adapter_with_fan_in_fan_out(tmp_path, toy):
    base = toy("gpt2")
    merged = make_adapter(
        base,
        tmp_path / "ad",
        "gpt2",
        r=3,
        lora_alpha=6,
        target_modules=["c_attn", "c_fc"],
        fan_in_fan_out=True,
    )
    assert_reads_like(LoraReader("m", base, tmp_path / "ad"), merged)


def test_recipe_and_mergekit_config_merge_adapted_models(tmp_path, toy, monkeypatch):
    base = toy("llama")
    merged = make_adapter(
        base, tmp_path / "ad", "llama", r=4, lora_alpha=4, target_modules=["q_proj", "o_proj"]
    )
    rec = write(
        tmp_path / "r.yml",
        f"models:\n  a: {{path: {base}, lora: ad}}\n  b: {base}\nbase: b\n"
        "merge: {task_arithmetic: {lambda: 1.0}}\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = {}
    for f in (tmp_path / "out").glob("model*.safetensors"):
        out.update(load_file(str(f)))
    for name, t in out.items():  # base + (adapted - base): the adapted model
        torch.testing.assert_close(t, merged[name], rtol=1e-5, atol=1e-5, msg=name)
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"with LoRA adapter {tmp_path / 'ad'}" in card
    monkeypatch.chdir(tmp_path)
    mk = write(
        tmp_path / "mk.yml",
        f"merge_method: task_arithmetic\nbase_model: {base}\n"
        f"models:\n  - model: {base}+ad\n    parameters: {{weight: 1.0}}\n",
    )
    res = cli("run", str(mk), str(tmp_path / "out-mk"), "-q")
    assert res.returncode == 0, res.stderr
    for f in (tmp_path / "out").glob("model*.safetensors"):
        a, b = load_file(str(f)), load_file(str(tmp_path / "out-mk" / f.name))
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "case,message",
    [
        ("dora", "uses DoRA"),
        ("ia3", "is a IA3 adapter"),
        ("missing", "adapter folder does not exist"),
        ("not-adapter", "not a PEFT adapter"),
        ("other-model", "which the base model"),
        ("bias", "LoRA with biases"),
    ],
)
def test_adapters_that_cannot_be_applied_exactly_are_refused(tmp_path, toy, capsys, case, message):
    base = toy("llama")
    ad = tmp_path / "ad"
    if case in ("dora", "bias", "ia3"):
        make_adapter(base, ad, "llama", r=2, target_modules=["q_proj"])
        cfg = json.loads((ad / "adapter_config.json").read_text())
        cfg.update(
            {"dora": {"use_dora": True}, "bias": {"lora_bias": True}, "ia3": {"peft_type": "IA3"}}[case]
        )
        (ad / "adapter_config.json").write_text(json.dumps(cfg))
    elif case == "not-adapter":
        shutil.copytree(base, ad)
    elif case == "other-model":
        make_adapter(toy("gpt2"), ad, "gpt2", r=2, target_modules=["c_attn"], fan_in_fan_out=True)
    rec = write(tmp_path / "r.yml", f"models:\n  a: {{path: {base}, lora: ad}}\n  b: {base}\nmerge: linear\n")
    assert message in clean_failure(capsys, ["run", str(rec), str(tmp_path / "o")], tmp_path / "o")
