"""Vocabularies of different sizes: shared rows merged, extra rows from the tokenizer's model."""

from __future__ import annotations

import json

import pytest
import torch

from mergeflow.testing.models import build
from tests.conftest import cli, write
from tests.helpers import tensor


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    a = build("llama", root / "a", seed=0)
    b = build("llama", root / "b", seed=1, config={"vocab_size": 70})
    return a, b


@pytest.mark.parametrize("tok", ["a", "b"])
def test_shared_rows_merged_extra_rows_from_the_tokenizer_model(tmp_path, pair, tok):
    a, b = pair
    recipe = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: {{linear: {{}}}}\noutput: {{tokenizer: {tok}, config: {tok}}}\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        ta, tb, got = tensor(a, name), tensor(b, name), tensor(out, name)
        assert got.shape[0] == (64 if tok == "a" else 70)
        torch.testing.assert_close(got[:64], (ta + tb[:64]) / 2)
        if tok == "b":
            assert torch.equal(got[64:], tb[64:])
    assert json.loads((out / "config.json").read_text())["vocab_size"] == (64 if tok == "a" else 70)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model(torch.tensor([[1, 2, 3]])).logits.shape[-1] == (64 if tok == "a" else 70)


def test_tokenizers_that_disagree_on_shared_ids_are_refused(tmp_path, pair):
    a, b = pair
    import shutil

    c = tmp_path / "c"
    shutil.copytree(b, c)
    data = json.loads((c / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    (c / "tokenizer.json").write_text(json.dumps(data))
    recipe = write(tmp_path / "r.yml", f"models: {{a: {a}, c: {c}}}\nmerge: {{linear: {{}}}}\n")
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "tokenizers of models 'a' and 'c' differ at token id" in res.stderr
    assert not (tmp_path / "out").exists()


def test_other_shape_differences_are_still_errors(tmp_path, pair):
    a, _ = pair
    wide = build("llama", tmp_path / "wide", seed=2, config={"intermediate_size": 96})
    recipe = write(tmp_path / "r.yml", f"models: {{a: {a}, w: {wide}}}\nmerge: {{linear: {{}}}}\n")
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 2 and "shape" in res.stderr


def test_classifier_heads_with_different_label_sets_are_taken_from_one_model(tmp_path):
    a = build("bert", tmp_path / "a", seed=0)
    b = build("bert", tmp_path / "b", seed=1, config={"num_labels": 5})
    recipe = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nmerge: {{linear: {{}}}}\n"
        "overrides: [{match: 'classifier.*', merge: {passthrough: {source: b}}}]\noutput: {config: b}\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    assert torch.equal(tensor(out, "classifier.weight"), tensor(b, "classifier.weight"))
    emb = "bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(tensor(out, emb), (tensor(a, emb) + tensor(b, emb)) / 2)
    from transformers import AutoModelForSequenceClassification

    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_labels == 5
    plain = write(tmp_path / "p.yml", f"models: {{a: {a}, b: {b}}}\nmerge: {{linear: {{}}}}\n")
    res = cli("run", str(plain), str(tmp_path / "out2"), "-q")
    assert res.returncode == 2 and "classifier" in res.stderr
