"""What a new user tripped on: default alignment steps, headless encoders in `eval equivalence`,
names in the align report, sentence-transformers files, output parents, the barrier plot."""

from __future__ import annotations

import json

import pytest

from mergeflow.io.ownership import MARKER
from mergeflow.io.reader import ModelReader
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import clean_failure


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_default_steps_undo_a_head_permutation_with_rotations_and_scales(tmp_path, toy, family):
    a = toy(family)
    scrambled = scramble_model(a, tmp_path / "scrambled", seed=5, heads_perm=True)
    res = cli("align", str(scrambled), "--anchor", str(a), "-o", str(tmp_path / "aligned"), "-q")
    assert res.returncode == 0, res.stderr
    ra, rb = ModelReader("a", a), ModelReader("b", tmp_path / "aligned")
    worst = max(
        float((ra.read(n) - rb.read(n)).abs().max()) for n in ra.tensors if ra.info(n).dtype in ("F32",)
    )
    assert worst < 1e-4, worst


def test_a_head_permutation_after_rotate_is_refused(tmp_path, toy, capsys):
    steps = write(tmp_path / "s.yml", "align:\n  - rotate: {}\n  - permute: {heads: true}\n")
    err = clean_failure(
        capsys,
        [
            "align",
            str(toy("llama", seed=1)),
            "--anchor",
            str(toy("llama")),
            "--steps",
            str(steps),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert (
        "align[1].permute: heads are paired before they are rotated" in err
        and "before align[0].rotate" in err
    )


def test_align_report_and_progress_use_the_models_names(tmp_path, toy):
    res = cli("align", str(toy("llama", seed=1)), "--anchor", str(toy("llama")), "-o", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    assert "aligning" in res.stderr and "merging" not in res.stderr
    assert "alignment to anchor 'llama-0-" in res.stdout and "llama-1-" in res.stdout
    summary = json.loads((tmp_path / "o" / "alignment.json").read_text())
    assert any(k.startswith("llama-1-") for k in summary["totals"])


def test_equivalence_compares_headless_encoders_by_their_last_hidden_state(tmp_path, toy):
    from safetensors.torch import load_file, save_file

    src = toy("bert")
    enc = tmp_path / "enc"
    enc.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    cfg["architectures"] = ["BertModel"]
    (enc / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("vocab.txt", "special_tokens_map.json"):
            (enc / f.name).write_bytes(f.read_bytes())
    tensors = {}
    for shard in sorted(src.glob("model*.safetensors")):
        tensors.update(
            {k.removeprefix("bert."): v for k, v in load_file(str(shard)).items() if k.startswith("bert.")}
        )
    save_file(tensors, str(enc / "model.safetensors"))
    data = write(tmp_path / "d.txt", "hello world\nthe quick brown fox\n")
    res = cli("eval", "equivalence", str(enc), str(enc), "--data", str(data), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "max |last hidden state difference|: 0" in res.stdout and "equivalent" in res.stdout
    # a classifier whose head is not in the checkpoint is newly initialised: said, not hidden
    cls = tmp_path / "cls"
    cls.mkdir()
    for f in enc.iterdir():
        (cls / f.name).write_bytes(f.read_bytes())
    cfg["architectures"] = ["BertForSequenceClassification"]
    (cls / "config.json").write_text(json.dumps(cfg))
    res = cli("eval", "equivalence", str(cls), str(cls), "--data", str(data), "--device", "cpu")
    assert "newly initialised" in res.stderr and "classifier.weight" in res.stderr


def test_sentence_transformers_files_are_copied_and_can_be_left_out(tmp_path, toy):
    src = tmp_path / "st"
    import shutil

    shutil.copytree(toy("bert"), src)
    write(
        src / "modules.json",
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                {
                    "idx": 2,
                    "name": "2",
                    "path": "2_Normalize",
                    "type": "sentence_transformers.models.Normalize",
                },
                {"idx": 3, "name": "3", "path": "../escape", "type": "x"},
            ]
        ),
    )
    write(src / "sentence_bert_config.json", '{"max_seq_length": 128}')
    write(src / "1_Pooling" / "config.json", '{"pooling_mode_mean_tokens": true}')
    (src / "2_Normalize").mkdir()
    rec = write(tmp_path / "r.yml", f"models: {{a: {src}, b: {toy('bert', seed=1)}}}\nmerge: linear\n")
    res = cli("run", str(rec), str(tmp_path / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out"
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    assert (out / "2_Normalize").is_dir() and not (tmp_path / "escape").exists()
    listed = set(json.loads((out / MARKER).read_text())["files"])
    assert {"1_Pooling/config.json", "2_Normalize/"} <= listed
    assert cli("run", str(rec), str(out), "--force", "-q").returncode == 0  # its own folders: replaceable
    rec2 = write(tmp_path / "r2.yml", rec.read_text() + "output: {module_files: false}\n")
    assert cli("run", str(rec2), str(tmp_path / "bare"), "-q").returncode == 0
    assert not (tmp_path / "bare" / "modules.json").exists()


def test_run_creates_only_the_last_folder_unless_parents(tmp_path, toy, capsys):
    rec = write(
        tmp_path / "r.yml", f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nmerge: linear\n"
    )
    deep = tmp_path / "unset" / "models" / "base"
    err = clean_failure(capsys, ["run", str(rec), str(deep)])
    assert "does not exist; create it or pass --parents" in err and not (tmp_path / "unset").exists()
    assert cli("run", str(rec), str(deep), "--parents", "-q").returncode == 0
    err = clean_failure(
        capsys, ["run", str(rec), str(tmp_path), "--report", str(tmp_path / "a" / "b" / "r.json")]
    )
    assert "does not exist; create it first" in err


def test_barrier_plot_names_a_b_and_the_loss(tmp_path, toy):
    from mergeflow.eval.barrier_plot import plot

    rep = {
        "a": "/m/vit-seed11",
        "b": "/m/vit-seed12",
        "data": "/d/digits-test.npz",
        "examples": 360,
        "variants": {
            "naive": {"barrier": 2.0, "points": [{"lambda": 0.0, "loss": 0.1}, {"lambda": 1.0, "loss": 0.2}]}
        },
    }
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen = {}
    real = plt.Figure.savefig

    def capture(fig, *a, **k):
        ax = fig.axes[0]
        seen.update(x=ax.get_xlabel(), y=ax.get_ylabel(), title=ax.get_title(), legend=ax.get_legend())
        return real(fig, *a, **k)

    plt.Figure.savefig = capture
    try:
        plot(rep, tmp_path / "b.png")
    finally:
        plt.Figure.savefig = real
    assert "vit-seed11" in seen["title"] and "vit-seed12" in seen["title"]
    assert seen["y"] == "cross-entropy on digits-test.npz (360 ex.)"
    assert seen["legend"].get_bbox_to_anchor().x0 > seen["legend"].axes.get_window_extent().x1 - 1  # outside
