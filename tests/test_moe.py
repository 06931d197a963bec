"""Mixtures of experts from dense models: tensors in place, transformers' MoE classes load and generate,
routing follows the experts' prompts."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.bench_moe_routing import PROMPTS, shares
from tests.conftest import cli, write
from tests.helpers import tensor


def config(base, experts, mode="hidden", extra=""):
    lines = [f"base_model: {base}", f"gate_mode: {mode}", "dtype: float32", "experts:"]
    for i, e in enumerate(experts):
        lines.append(f"  - source_model: {e}")
        lines.append(f"    positive_prompts: {json.dumps(PROMPTS[i])}")
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    from mergeflow.testing.models import build

    root = tmp_path_factory.mktemp("moe")
    base = build("llama", root / "base", seed=0)
    return base, [
        build("llama", root / f"e{i}", seed=i + 1, perturb_from=base, perturb_scale=0.05) for i in range(4)
    ]


def run_moe(tmp_path, text, *args):
    cfg = write(tmp_path / "moe.yml", text)
    out = tmp_path / "out"
    res = cli("moe", str(cfg), str(out), "-q", *args)
    assert res.returncode == 0, res.stderr
    return out


def test_mixtral_tensors_config_and_generation(tmp_path, dense):
    base, experts = dense
    out = run_moe(tmp_path, config(base, experts, extra="experts_per_token: 2\n"))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["MixtralForCausalLM"] and cfg["num_local_experts"] == 4
    assert cfg["num_experts_per_tok"] == 2
    for e, src in enumerate(experts):
        for proj, w in (("gate_proj", "w1"), ("down_proj", "w2"), ("up_proj", "w3")):
            got = tensor(out, f"model.layers.1.block_sparse_moe.experts.{e}.{w}.weight")
            assert torch.equal(got, tensor(src, f"model.layers.1.mlp.{proj}.weight"))
    for name in (
        "model.embed_tokens.weight",
        "model.layers.2.self_attn.q_proj.weight",
        "lm_head.weight",
        "model.layers.0.post_attention_layernorm.weight",
    ):
        assert torch.equal(tensor(out, name), tensor(base, name))
    gate = tensor(out, "model.layers.0.block_sparse_moe.gate.weight")
    assert gate.shape == (4, 32)
    torch.testing.assert_close(gate.norm(dim=1), torch.ones(4))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert type(model).__name__ == "MixtralForCausalLM"
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = model.generate(**tok("hello", return_tensors="pt"), max_new_tokens=5, do_sample=False)
    assert ids.shape[1] > 1


@pytest.mark.parametrize("mode", ["hidden", "cheap_embed"])
def test_prompts_route_to_their_expert(tmp_path, dense, mode):
    base, experts = dense
    out = run_moe(tmp_path, config(base, experts, mode))
    for k, text in ((0, "aaa aaaa aaa aaaa"), (1, "zzz zzzz zz zzzz"), (3, "hello hell hello")):
        share = torch.tensor(shares(out, text))
        assert int(share.argmax()) == k and share[k] > 0.5, (k, share)


def test_identical_experts_compute_the_dense_model(tmp_path, dense):
    """Every expert a copy of the base: any routing gives the base's MLP (top-k weights sum to one)."""
    base, _ = dense
    out = run_moe(tmp_path, config(base, [base] * 4, "random"))
    from transformers import AutoModelForCausalLM

    moe = AutoModelForCausalLM.from_pretrained(str(out))
    dense_model = AutoModelForCausalLM.from_pretrained(str(base))
    ids = torch.tensor([[2, 5, 9, 11, 4, 7]])
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense_model(ids).logits, rtol=1e-4, atol=1e-5)


def test_qwen_moe_families(tmp_path, toy):
    q2 = toy("qwen2")
    q2e = [toy("qwen2", seed=s, perturb_from=q2) for s in (1, 2)]
    out = run_moe(
        tmp_path / "q2",
        config(
            q2,
            q2e,
            "cheap_embed",
            f"shared_experts:\n  - source_model: {q2}\n"
            f"    positive_prompts: ['hello']\n    residual_scale: 0.1\n",
        ),
    )
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2MoeForCausalLM"] and cfg["num_experts"] == 2
    torch.testing.assert_close(
        tensor(out, "model.layers.0.mlp.shared_expert.down_proj.weight"),
        0.1 * tensor(q2, "model.layers.0.mlp.down_proj.weight"),
    )
    assert tensor(out, "model.layers.0.mlp.shared_expert_gate.weight").shape == (1, 32)
    q3 = toy("qwen3")
    out3 = run_moe(
        tmp_path / "q3", config(q3, [toy("qwen3", seed=s, perturb_from=q3) for s in (1, 2)], "random")
    )
    assert json.loads((out3 / "config.json").read_text())["architectures"] == ["Qwen3MoeForCausalLM"]
    from transformers import AutoModelForCausalLM

    for o in (out, out3):
        model = AutoModelForCausalLM.from_pretrained(str(o))
        assert model(torch.tensor([[2, 5, 9]])).logits.shape[-1] == 64


@pytest.mark.parametrize(
    ("extra", "frag"),
    [
        ("experts_per_token: 3\n", "experts_per_token: 3 is more than the 2 expert(s)"),
        ("architecture: qwen\n", "qwen2_moe needs one shared expert"),
        ("gate_mode: hiddenish\n", "gate_mode"),
    ],
)
def test_bad_moe_configs(tmp_path, dense, extra, frag):
    base, experts = dense
    text = config(base, experts[:2]) + extra
    if "gate_mode: hiddenish" in extra:
        text = text.replace("gate_mode: hidden\n", "")
    cfg = write(tmp_path / "moe.yml", text)
    res = cli("moe", str(cfg), str(tmp_path / "out"))
    assert res.returncode == 2 and frag in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "out").exists()
