"""Statistics and evaluation for the heads users have: token classification with pre-split words and
per-word tags, headless encoders for Gram statistics, and every task scored with its own head on a
merged backbone."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergeflow.errors import InputError
from mergeflow.eval.tokens import entity_f1, is_bio, spans
from tests.conftest import cli, write
from tests.helpers import NER, body

WORDS = [
    ["ann", "lives", "in", "paris"],
    ["bob", "and", "carl", "went", "to", "rome", "today"],
    ["nice", "weather"],
    ["dana", "smith", "visited", "new", "york"],
]
TAGS = [[1, 0, 0, 3], [1, 0, 1, 0, 0, 3, 0], [0, 0], [1, 2, 0, 3, 4]]


@pytest.fixture
def data(tmp_path):
    ner = write(
        tmp_path / "ner.jsonl",
        "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in zip(WORDS, TAGS, strict=True)),
    )
    sent = write(
        tmp_path / "sent.jsonl",
        "".join(json.dumps({"text": " ".join(w), "label": i % 3}) + "\n" for i, w in enumerate(WORDS)),
    )
    return ner, sent


def test_spans_and_entity_f1():
    names = dict(enumerate(NER))
    assert is_bio(names) and not is_bio({0: "LABEL_0", 1: "LABEL_1"})
    assert spans(["B-PER", "I-PER", "O", "B-LOC", "I-PER", "I-PER"]) == {
        (0, 1, "PER"),
        (3, 3, "LOC"),
        (4, 5, "PER"),
    }
    assert spans(["I-LOC", "O", "S-PER", "B-LOC", "E-LOC"]) == {(0, 0, "LOC"), (2, 2, "PER"), (3, 4, "LOC")}
    got = entity_f1([[1, 2, 0, 3]], [[1, 0, 0, 3]], names)  # PER span cut short: 1 of 2 entities right
    assert got["entity_precision"] == 0.5 and got["entity_recall"] == 0.5 and got["entity_f1"] == 0.5


def test_stats_of_a_token_classifier_and_a_headless_encoder(tmp_path, trio, data):  # noqa: F811
    base, sent, ner = trio
    ner_data, _sent_data = data
    for kind in ("fisher", "gram"):
        res = cli(
            "stats",
            str(ner),
            "--data",
            str(ner_data),
            "--kind",
            kind,
            "-o",
            str(tmp_path / f"{kind}.safetensors"),
            "--device",
            "cpu",
        )
        assert res.returncode == 0, res.stderr
        assert (
            "token-classifier" in res.stdout and "up to 25 tokens" in res.stdout
        )  # the longest example: 25 characters
    fisher = load_file(str(tmp_path / "fisher.safetensors"))
    assert (
        float(fisher["classifier.weight"].sum()) > 0
        and float(fisher["bert.encoder.layer.0.output.dense.weight"].sum()) > 0
    )
    res = cli(
        "stats",
        str(base),
        "--data",
        str(ner_data),
        "--kind",
        "gram",
        "-o",
        str(tmp_path / "base.gram.safetensors"),
    )
    assert res.returncode == 0, res.stderr  # a bare encoder: Grams need no head
    assert "encoder.layer.1.attention.self.query.weight" in load_file(str(tmp_path / "base.gram.safetensors"))
    res = cli(
        "stats", str(base), "--data", str(ner_data), "--kind", "fisher", "-o", str(tmp_path / "x.safetensors")
    )
    assert res.returncode == 2 and "BertModel has none of the heads" in res.stderr


def test_eval_tasks_attaches_each_head(tmp_path, trio, data):  # noqa: F811
    base, sent, ner = trio
    ner_data, sent_data = data
    rec = write(tmp_path / "r.yml", body(*trio, "merge_only: backbone\npartial: {keep: sent}\n"))
    out = tmp_path / "out"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    res = cli(
        "eval",
        "tasks",
        str(out),
        "--task",
        f"sent={sent}:{sent_data}",
        "--task",
        f"ner={ner}:{ner_data}",
        "--json",
        str(tmp_path / "tasks.json"),
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "tasks.json").read_text())
    assert report["tasks"]["sent"]["metric"] == "accuracy" and report["tasks"]["ner"]["metric"] == "entity_f1"
    assert report["tasks"]["ner"]["tensors_attached"] > 30 and "mean normalized score" in res.stdout
    # the merged backbone of a model with itself is the model: scores unchanged
    same = cli(
        "eval", "tasks", str(ner), "--task", f"ner={ner}:{ner_data}", "--json", str(tmp_path / "same.json")
    )
    assert same.returncode == 0, same.stderr
    r = json.loads((tmp_path / "same.json").read_text())["tasks"]["ner"]
    assert r["merged"] == r["fine_tuned"]
    bad = cli("eval", "tasks", str(out), "--task", f"ner={ner}:{sent_data}")
    assert bad.returncode == 2 and "per-word tags" in bad.stderr


def test_eval_tasks_under_a_weights_budget_gives_the_in_memory_scores(
    tmp_path,
    trio,  # noqa: F811
    data,
    monkeypatch,
):
    """Task models larger than --max-memory are placed by accelerate and the merged backbone goes into a
    streamed copy on disk (no swap in memory, under --scratch): the same scores as the in-memory path, nothing
    left behind; a scratch disk without room is refused before anything is written."""
    import tempfile

    from mergeflow.eval.tasks import eval_tasks
    from mergeflow.io import scratch as scratch_mod
    from mergeflow.stats.model import weight_bytes

    base, sent, ner = trio
    ner_data, sent_data = data
    rec = write(tmp_path / "r.yml", body(*trio, "merge_only: backbone\npartial: {keep: sent}\n"))
    out = tmp_path / "out"
    assert cli("run", str(rec), str(out), "-q").returncode == 0
    tasks = [("sent", str(sent), str(sent_data)), ("ner", str(ner), str(ner_data))]
    reports = {}
    scratch = tmp_path / "scratch"
    write(scratch / "mine.txt", "a user's file")
    made = []
    real = scratch_mod.scratch_folder

    def spy(*args):
        with real(*args) as folder:
            made.append(folder)
            yield folder

    monkeypatch.setattr("mergeflow.eval.tasks.scratch_folder", contextmanager(spy))
    for label, budget in (("memory", None), ("placed", weight_bytes(ner) // 3)):
        before = set(Path(tempfile.gettempdir()).glob("mergeflow-tasks-*"))
        reports[label] = eval_tasks(out, tasks, torch.device("cpu"), max_memory=budget, scratch=scratch)[
            "tasks"
        ]
        assert set(Path(tempfile.gettempdir()).glob("mergeflow-tasks-*")) == before
    assert len(made) == 2 and all(m.parent == scratch for m in made)  # one grafted copy per placed task
    assert [p.name for p in scratch.iterdir()] == ["mine.txt"]
    monkeypatch.setattr(scratch_mod, "nearest_free", lambda path: 1000)
    with pytest.raises(
        InputError, match=r"eval tasks \(sent\) needs .* GiB of temporary disk .* --scratch DIR"
    ):
        eval_tasks(out, tasks, torch.device("cpu"), max_memory=weight_bytes(ner) // 3, scratch=scratch)
    assert [p.name for p in scratch.iterdir()] == ["mine.txt"]
    res = cli(  # the option reaches it (1 MiB holds these tiny models: loaded whole)
        "eval", "tasks", str(out), "--task", f"ner={ner}:{ner_data}", "--json", str(tmp_path / "t.json"),
        "--device", "cpu", "--max-memory", "1MiB",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (
        json.loads((tmp_path / "t.json").read_text())["tasks"]["ner"]["merged"]
        == reports["memory"]["ner"]["merged"]
    )
    for task in ("sent", "ner"):
        mem, placed = reports["memory"][task], reports["placed"][task]
        assert placed["placed"] and not mem["placed"]
        assert placed["tensors_attached"] == mem["tensors_attached"] > 0
        for key in ("fine_tuned", "merged"):
            for metric, value in mem[key].items():
                assert placed[key][metric] == pytest.approx(value, rel=1e-5, abs=1e-6), (task, key, metric)
    assert reports["memory"]["ner"]["merged"] != reports["memory"]["ner"]["fine_tuned"]  # a real merge


def test_masked_lm_stats_and_eval(tmp_path, data):
    import transformers

    from mergeflow.testing.models import save_tokenizer
    from tests.helpers import CFG

    torch.manual_seed(0)
    mlm = tmp_path / "mlm"
    transformers.BertForMaskedLM(transformers.BertConfig(**CFG)).save_pretrained(str(mlm))
    save_tokenizer(mlm)
    tok = transformers.AutoTokenizer.from_pretrained(str(mlm))
    tok.add_special_tokens({"mask_token": "<unk>"})  # the char tokenizer has no mask token: use <unk>'s id
    tok.save_pretrained(str(mlm))
    _ner, sent = data
    res = cli(
        "stats", str(mlm), "--data", str(sent), "--kind", "fisher", "-o", str(tmp_path / "f.safetensors")
    )
    assert res.returncode == 0 and "masked-lm" in res.stdout, res.stderr
    from mergeflow.eval.loss import evaluate
    from mergeflow.stats.data import load_data
    from mergeflow.stats.model import load_model

    scores = evaluate(load_model(mlm, torch.device("cpu")), load_data(sent))
    assert 0 <= scores["accuracy"] <= 1 and scores["loss"] > 0
    assert scores == evaluate(load_model(mlm, torch.device("cpu")), load_data(sent))  # same tokens masked
    one_by_one = evaluate(load_model(mlm, torch.device("cpu")), load_data(sent), batch_size=1)
    assert one_by_one == pytest.approx(scores, rel=1e-6)  # each example masked by its own seed, in any batch


def test_char_vocab_json_and_token_id_npz(tmp_path):
    """A character-level GPT-2 with only a vocab.json char map (no merges, no tokenizer config) reads text,
    and integer .npz data is token ids for it."""
    import numpy as np
    import transformers

    from mergeflow.eval.loss import evaluate
    from mergeflow.stats.data import load_data
    from mergeflow.stats.model import load_model

    gpt = tmp_path / "gpt"
    transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32)
    ).save_pretrained(str(gpt))
    chars = list("abcdefghijklmnopqrstuvwxyz .,!?'\n")
    (gpt / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    text = write(tmp_path / "t.txt", "hello world\nthe cat sat on the mat\n")
    loaded = load_model(gpt, torch.device("cpu"))
    assert loaded.tokenizer.decode(loaded.tokenizer("abc")["input_ids"]) == "abc"
    assert evaluate(loaded, load_data(text))["loss"] > 0
    ids = tmp_path / "ids.npz"
    np.savez(ids, x=np.array([[1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.int64))
    assert evaluate(loaded, load_data(ids))["loss"] > 0
    res = cli("stats", str(gpt), "--data", str(ids), "--kind", "gram", "-o", str(tmp_path / "g.safetensors"))
    assert res.returncode == 0, res.stderr
    (gpt / "vocab.json").write_text(json.dumps({"not a char": 0, **{f"tok{i}": i + 1 for i in range(20)}}))
    res = cli("stats", str(gpt), "--data", str(text), "--kind", "gram", "-o", str(tmp_path / "h.safetensors"))
    assert (
        res.returncode == 2 and "tokenizer files do not load" in res.stderr and "internal" not in res.stderr
    )
