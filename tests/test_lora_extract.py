"""extract-lora: a planted low-rank difference is recovered exactly; the adapter loads with peft."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeflow.io.reader import ModelReader
from tests.conftest import cli, write
from tests.helpers import clean_failure

peft = pytest.importorskip("peft")


def planted(base, dst, rank: int = 2, norms: bool = False, embeddings: bool = False):
    """A copy of ``base`` whose 2-D layer weights moved by a random rank-``rank`` matrix each."""
    shutil.copytree(base, dst, ignore=shutil.ignore_patterns("model*.safetensors*"))
    r = ModelReader("b", base)
    gen = torch.Generator().manual_seed(3)
    out = {}
    for name in r.tensors:
        t = r.read(name)
        layer_weight = t.dim() == 2 and ".h." in name or ".layers." in name and t.dim() == 2
        if layer_weight:
            t = t + 0.05 * torch.randn(t.shape[0], rank, generator=gen) @ torch.randn(
                rank, t.shape[1], generator=gen
            )
        elif norms and t.dim() == 1 or embeddings and ("embed_tokens" in name or "wte" in name):
            t = t + 0.01
        out[name] = t.contiguous()
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst, out


def peft_merged(base, adapter) -> dict[str, torch.Tensor]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return {k: v.detach() for k, v in merged.state_dict().items()}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_planted_low_rank_difference_is_recovered_and_loads_with_peft(tmp_path, toy, family):
    base = toy(family)
    tuned, want = planted(base, tmp_path / "tuned")
    res = cli(
        "extract-lora", str(base), str(tuned), "-o", str(tmp_path / "ad"), "--rank", "2", "--device", "cpu"
    )
    assert res.returncode == 0, res.stderr
    assert "overall relative error" in res.stdout
    overall = float(res.stdout.split("overall relative error ")[1].split()[0])
    assert overall < 1e-5
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["fan_in_fan_out"] == (family == "gpt2") and set(cfg["rank_pattern"].values()) == {2}
    got = peft_merged(base, tmp_path / "ad")
    for name, t in want.items():
        if name in got:
            torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-5, msg=name)
    # and read back through mergeflow's own adapter reader
    rec = write(tmp_path / "r.yml", f"models:\n  a: {{path: {base}, lora: ad}}\nmerge: passthrough\n")
    assert cli("run", str(rec), str(tmp_path / "out"), "-q").returncode == 0
    out = load_file(str(tmp_path / "out" / "model.safetensors"))
    for name, t in want.items():
        torch.testing.assert_close(out[name], t, rtol=1e-4, atol=1e-5, msg=name)


def test_energy_picks_the_planted_rank_and_other_changes_are_reported(tmp_path, toy):
    base = toy("llama")
    tuned, _want = planted(base, tmp_path / "tuned", rank=2, norms=True, embeddings=True)
    res = cli(
        "extract-lora",
        str(base),
        str(tuned),
        "-o",
        str(tmp_path / "ad"),
        "--rank",
        "8",
        "--energy",
        "0.9999999",
    )
    assert res.returncode == 0, res.stderr
    ranks = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())["rank_pattern"]
    assert ranks and set(ranks.values()) == {2}
    assert "left out" in res.stderr and "--embeddings" in res.stderr
    res = cli(
        "extract-lora", str(base), str(tuned), "-o", str(tmp_path / "ad2"), "--rank", "2", "--embeddings"
    )
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "ad2" / "adapter_config.json").read_text())["modules_to_save"] == [
        "model.embed_tokens"
    ]


def test_extract_lora_refuses_identical_models_and_user_folders(tmp_path, toy, capsys):
    base = toy("llama")
    assert "do not differ" in clean_failure(
        capsys, ["extract-lora", str(base), str(base), "-o", str(tmp_path / "a"), "-q"]
    )
    assert not (tmp_path / "a").exists()
    write(tmp_path / "mine" / "notes.txt", "x")
    tuned, _ = planted(base, tmp_path / "tuned")
    err = clean_failure(
        capsys, ["extract-lora", str(base), str(tuned), "-o", str(tmp_path / "mine"), "--force"]
    )
    assert "not written by mergeflow" in err and (tmp_path / "mine" / "notes.txt").exists()
