"""Fine-tunes with their own heads: the backbone merged, names matched with and without the base-model
prefix, buffers never merged, tensors only some models have handled as the recipe says, one full
model per task."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from tests.conftest import cli, write
from tests.helpers import body, tensor


def test_partial_tensors_are_an_error_listing_them(tmp_path, trio):
    rec = write(tmp_path / "r.yml", body(*trio, "merge_only: backbone\n"))
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and "pooler.dense.weight (base, sent only)" in res.stderr, res.stderr
    assert "partial: drop" in res.stderr and not (tmp_path / "out").exists()


def test_backbone_merged_heads_kept_per_task(tmp_path, trio):
    base, sent, ner = trio
    rec = write(
        tmp_path / "r.yml",
        body(*trio, "merge_only: backbone\npartial: {keep: sent}\noutput: {task_models: true}\n"),
    )
    plan = cli("plan", str(rec))
    assert "merged part: backbone; left out: embeddings.position_ids" in plan.stdout, plan.stderr
    assert "task models: sent, ner" in plan.stdout
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out))
    assert res.returncode == 0, res.stderr
    assert "left out: embeddings.position_ids" in res.stdout
    name = "encoder.layer.1.attention.self.query.weight"
    want = tensor(sent, "bert." + name) + tensor(ner, "bert." + name) - tensor(base, name)
    torch.testing.assert_close(
        tensor(out, name), want
    )  # base + both task vectors: names matched across prefixes
    torch.testing.assert_close(tensor(out, "pooler.dense.weight"), tensor(sent, "bert.pooler.dense.weight"))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoModelForTokenClassification

    merged = AutoModel.from_pretrained(str(out))
    ids = torch.tensor([[2, 5, 9, 11]])
    tasks = tmp_path / "out.tasks"
    s = AutoModelForSequenceClassification.from_pretrained(str(tasks / "sent"))
    n = AutoModelForTokenClassification.from_pretrained(str(tasks / "ner"))
    assert (
        type(s).__name__ == "BertForSequenceClassification"
        and type(n).__name__ == "BertForTokenClassification"
    )
    assert torch.equal(tensor(tasks / "sent", "classifier.weight"), tensor(sent, "classifier.weight"))
    assert torch.equal(tensor(tasks / "ner", "classifier.weight"), tensor(ner, "classifier.weight"))
    assert torch.equal(tensor(tasks / "ner", "bert." + name), tensor(out, name))
    with torch.no_grad():  # each task model runs the merged backbone
        torch.testing.assert_close(n.bert(ids).last_hidden_state, merged(ids).last_hidden_state)
        assert s(ids).logits.shape == (1, 3) and n(ids).logits.shape == (1, 4, 5)
    assert "wrote task model" in res.stdout


def test_backbone_of_fine_tunes_alone_is_a_headless_model(tmp_path, trio):
    base, sent, ner = trio
    rec = write(
        tmp_path / "r.yml",
        f"models: {{sent: {sent}, ner: {ner}}}\nmerge: linear\nmerge_only: backbone\npartial: drop\n",
    )
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "-q")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    name = "encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(
        tensor(out, name), (tensor(sent, "bert." + name) + tensor(ner, "bert." + name)) / 2
    )
    from transformers import AutoModel

    assert AutoModel.from_pretrained(str(out))(torch.tensor([[1, 2]])).last_hidden_state.shape == (1, 2, 32)


def test_drop_and_patterns(tmp_path, trio):
    base, sent, ner = trio
    rec = write(
        tmp_path / "r.yml",
        body(*trio, "merge_only: {include: ['encoder.*'], exclude: ['*.LayerNorm.*']}\npartial: drop\n"),
    )
    out = tmp_path / "out"
    res = cli("run", str(rec), str(out), "-q")
    assert res.returncode == 0, res.stderr
    names = set()
    for f in out.glob("*.safetensors"):
        names |= set(load_file(str(f)))
    assert names and all(n.startswith("encoder.") and "LayerNorm" not in n for n in names)


def test_missing_tensors_say_how_to_merge_the_rest(tmp_path, trio):
    base, sent, ner = trio
    rec = write(tmp_path / "r.yml", f"models: {{sent: {sent}, ner: {ner}}}\nmerge: linear\n")
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert (
        res.returncode == 2
        and "bert.pooler.dense.bias" in res.stderr
        and "merge_only: backbone" in res.stderr
    )
    # the bare encoder beside a fine-tune with a head: names matched across the prefix, the head listed
    rec = write(
        tmp_path / "r2.yml", f"models: {{base: {base}, sent: {sent}}}\nbase: base\nmerge: task_arithmetic\n"
    )
    res = cli("run", str(rec), str(tmp_path / "out"))
    assert res.returncode == 2 and "classifier.weight (sent only)" in res.stderr, res.stderr
    assert "encoder" not in res.stderr and "Traceback" not in res.stderr


def test_task_models_need_merge_only(tmp_path, trio):
    rec = write(tmp_path / "r.yml", body(*trio, "output: {task_models: true}\npartial: {keep: nobody}\n"))
    res = cli("validate", str(rec), "--recipe-only")
    assert res.returncode == 2 and "task_models: needs merge_only" in res.stderr
    assert "partial.keep: 'nobody' is not a key of models" in res.stderr


def test_known_prefixes_are_transformers_own():
    """The built-in table of base-model prefixes says what transformers' classes say."""
    import transformers

    from mergeflow.graph.parts import KNOWN

    for model_type, (cls, prefix) in KNOWN.items():
        assert getattr(transformers, cls).base_model_prefix + "." == prefix, model_type
