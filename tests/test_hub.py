"""Models named by Hugging Face repo id, from the local cache with HF_HUB_OFFLINE=1: no network call at all
(conftest refuses every connection), exact commits in the model card, one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli, write
from tests.helpers import clean_failure


def cache_repo(cache, repo: str, model, commit_seed: str = "1") -> str:
    """Lay ``model`` out as huggingface_hub's cache does (blobs, snapshots/COMMIT links, refs/main)."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    commit = hashlib.sha1(commit_seed.encode()).hexdigest()
    snap = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(model.rglob("*")):
        if f.is_file():
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            (folder / "blobs" / digest).write_bytes(f.read_bytes())
            rel = f.relative_to(model)
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            (snap / rel).symlink_to(os.path.relpath(folder / "blobs" / digest, (snap / rel).parent))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return commit


@pytest.fixture
def hub(tmp_path, toy, monkeypatch, no_network):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    commits = {
        "org/base": cache_repo(cache, "org/base", toy("llama")),
        "org/tuned": cache_repo(cache, "org/tuned", toy("llama", seed=1), "2"),
    }
    return tmp_path, commits


def tensors(d):
    out = {}
    for f in sorted(d.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def test_repo_ids_resolve_from_the_cache_offline_and_the_card_records_commits(hub, toy):
    root, commits = hub
    rec = write(
        root / "r.yml",
        f"models:\n  base: org/base\n  tuned: org/tuned@{commits['org/tuned']}\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    local = write(
        root / "l.yml", f"models: {{base: {toy('llama')}, tuned: {toy('llama', seed=1)}}}\nmerge: linear\n"
    )
    assert cli("run", str(local), str(root / "out-local"), "-q").returncode == 0
    a, b = tensors(root / "out"), tensors(root / "out-local")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (root / "out" / "README.md").read_text()
    assert f"org/base@{commits['org/base']}" in card and f"org/tuned@{commits['org/tuned']}" in card
    assert (root / "out" / "config.json").is_file() and (root / "out" / "tokenizer.json").is_file()


def test_mergekit_config_with_repo_ids_runs_unchanged_offline(hub):
    root, _commits = hub
    mk = write(
        root / "mk.yml",
        "merge_method: ties\nbase_model: org/base\nmodels:\n"
        "  - model: org/tuned\n    parameters: {weight: 1.0, density: 0.5}\n"
        "  - model: org/base\n",
    )
    res = cli("run", str(mk), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr


def test_a_local_folder_of_the_same_name_wins(hub, toy):
    root, _commits = hub
    shutil.copytree(toy("llama", seed=2), root / "org" / "tuned")
    rec = write(root / "r.yml", "models: {base: org/base, tuned: org/tuned}\nmerge: linear\n")
    assert cli("run", str(rec), str(root / "out"), "-q").returncode == 0
    card = (root / "out" / "README.md").read_text()
    assert str(root / "org" / "tuned") in card


@pytest.mark.parametrize(
    "ref,message",
    [
        ("org/missing", "org/missing is not in the Hugging Face cache"),
        ("org/base@v9", "org/base@v9 is not in the Hugging Face cache"),
    ],
)
def test_offline_without_the_files_is_one_line_naming_the_repo(hub, capsys, ref, message):
    root, _commits = hub
    rec = write(root / "r.yml", f"models: {{a: org/base, b: {ref}}}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec), str(root / "out")], root / "out")
    assert message in err and "HF_HUB_OFFLINE" in err


def test_lora_adapter_by_repo_id(hub, toy):
    pytest.importorskip("peft")
    from tests.helpers import make_adapter

    root, _commits = hub
    merged = make_adapter(
        toy("llama"), root / "adapter", "llama", r=2, lora_alpha=2, target_modules=["q_proj"]
    )
    cache_repo(root / "hf-cache", "org/chat-lora", root / "adapter", "3")
    shutil.rmtree(root / "adapter")
    rec = write(
        root / "r.yml",
        "models:\n  a: {path: org/base, lora: org/chat-lora}\n  b: org/base\n"
        "base: b\nmerge: {task_arithmetic: {lambda: 1.0}}\n",
    )
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    out = tensors(root / "out")
    assert all(torch.allclose(out[k], merged[k], atol=1e-5) for k in out)


def test_commands_taking_model_arguments_accept_repo_ids(hub):
    root, _commits = hub
    res = cli("eval", "distance", "org/base", "org/tuned", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["total"]["squared"] > 0
    res = cli("align", "org/tuned", "--anchor", "org/base", "-o", str(root / "aligned"), "-q")
    assert res.returncode == 0, res.stderr
    data = write(root / "d.txt", "hello world\n")
    res = cli(
        "stats",
        "org/base",
        "--data",
        str(data),
        "--kind",
        "gram",
        "-o",
        str(root / "g.safetensors"),
        "-q",
        "--device",
        "cpu",
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads((root / "aligned" / "alignment.json").read_text())
    assert list(summary["totals"]) == ["tuned"]  # named after the repo, not the snapshot's commit
    res = cli("eval", "tasks", str(root / "aligned"), "--task", f"lm=org/base:{data}", "--device", "cpu")
    assert res.returncode == 0, res.stderr  # the task's model by repo id too
    assert "lm " in res.stdout and "loss" in res.stdout
    res = cli("eval", "tasks", "org/base", "--task", f"lm=org/missing:{data}", "--device", "cpu")
    assert res.returncode == 2 and "--task lm" in res.stderr and "org/missing" in res.stderr, res.stderr
