"""The shipped recipes of issue 15 (tokenizer section, stages, mixture of experts) on the demo's models."""

from __future__ import annotations

import json

import torch

from tests.conftest import cli
from tests.helpers import tensor


def test_shipped_tokenizer_recipe(demo_tree, tmp_path):
    out = tmp_path / "out"
    res = cli("run", str(demo_tree / "recipes" / "llama-tokenizer-union.yml"), str(out), "-q")
    assert res.returncode == 0, res.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    vocab = tok.get_vocab()
    assert "<|im_start|>" in vocab and "<|im_end|>" in vocab
    emb = tensor(out, "model.embed_tokens.weight")
    base = demo_tree / "demo_out" / "models" / "base"
    eos = AutoTokenizer.from_pretrained(str(base)).get_vocab()["</s>"]
    torch.testing.assert_close(emb[vocab["<|im_start|>"]], tensor(base, "model.embed_tokens.weight")[eos])
    assert (
        emb.shape[0] % 8 == 0 and json.loads((out / "config.json").read_text())["vocab_size"] == emb.shape[0]
    )
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text.startswith("<|im_start|>user\nhi<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model(**tok(text, return_tensors="pt")).logits.shape[-1] == emb.shape[0]


def test_shipped_multistage_recipe(demo_tree, tmp_path):
    rec = str(demo_tree / "recipes" / "llama-multistage.yml")
    out = tmp_path / "out"
    res = cli("run", rec, str(out))
    assert res.returncode == 0, res.stderr
    assert "ran 3 of 3 stage(s)" in res.stdout
    assert {p.name for p in (tmp_path / "out.stages").iterdir() if p.is_dir()} == {"average", "smoothed"}
    plan = cli("plan", rec, "--intermediate-dir", str(tmp_path / "out.stages"))
    assert plan.returncode == 0 and plan.stdout.count("[up to date]") == 2, plan.stdout + plan.stderr


def test_shipped_moe_recipe(demo_tree, tmp_path):
    out = tmp_path / "out"
    res = cli("moe", str(demo_tree / "recipes" / "llama-moe.yml"), str(out))
    assert res.returncode == 0, res.stderr
    assert "MixtralForCausalLM with 3 experts (2 per token)" in res.stdout
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert (
        model.generate(**tok("two plus two", return_tensors="pt"), max_new_tokens=4, do_sample=False).shape[1]
        > 4
    )
