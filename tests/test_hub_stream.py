"""Hub models streamed during the merge (tests/hub_server.py stands in for the Hub): shards fetched in the
order the plan reads them and only those it reads, a disk budget that holds fewer shards than the models
have, downloads interrupted and resumed, the long form {hub, revision, subfolder}, pickle-only repos,
and validate's pre-flight."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli, write
from tests.helpers import clean_failure


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _weights_served(hub) -> dict[str, int]:
    """Bytes of shards downloaded (header reads by range requests not counted)."""
    return {k: n for k, n in hub.downloaded.items() if k.endswith(".safetensors")}


def test_a_slice_fetches_only_the_shards_it_reads(online, toy):
    root, hub, _commits, _server = online
    base = toy("llama")
    index = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    rec = write(
        root / "s.yml",
        "models: {a: org/base, b: org/tuned}\nmerge: linear\n"
        "slices:\n  - sources: [{model: a, layers: [0, 1]}]\n",
    )
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    import re

    # layer 0 and the embeddings, final norm and head: the shards holding them, and none other
    read = {f for name, f in index.items() if int((re.search(r"\.layers\.(\d+)\.", name) or [0, 0])[1]) == 0}
    assert read != set(index.values())
    got = {k.split("/")[-1] for k, n in _weights_served(hub).items() if k.startswith("org/base/")}
    assert got == read, (got, read)
    # the slice reads layer 0 and the embeddings/norm/head of a only: no shard of b is needed at all
    assert not any(k.startswith("org/tuned/") for k in _weights_served(hub))
    local = cli(
        "run",
        str(
            write(
                root / "l.yml",
                f"models: {{a: {base}}}\nmerge: linear\n"
                "slices:\n  - sources: [{model: a, layers: [0, 1]}]\n",
            )
        ),
        str(root / "ref"),
        "-q",
    )
    assert local.returncode == 0, local.stderr
    ref, out = _tensors(root / "ref"), _tensors(root / "out")
    assert ref.keys() == out.keys() and all(torch.equal(ref[k], out[k]) for k in ref)


def test_disk_budget_holds_fewer_shards_than_the_models_have(online, toy):
    root, hub, _commits, _server = online
    rec = write(root / "r.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    shard = max(p.stat().st_size for p in toy("llama").glob("*.safetensors"))
    total = sum(p.stat().st_size for m in ("llama",) for p in toy(m).glob("*.safetensors")) * 2
    budget = 2 * shard + 4096  # one shard of each model at a time
    assert budget < total
    res = cli("run", str(rec), str(root / "out"), "--disk-budget", str(budget))
    assert res.returncode == 0, res.stderr
    assert "downloaded " in res.stdout and "held at once" in res.stdout, res.stdout
    number, unit = res.stdout.split("at most ")[1].split(" held")[0].split()
    assert float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20}[unit] <= budget, res.stdout
    # nothing went to the shared cache but the small files, and the private folder is gone
    cached = [p for p in (root / "cache").rglob("*.safetensors")]
    assert not cached, cached
    assert not list(root.glob(".out.mergeflow-partial*"))
    assert sorted(p.name for p in (root / "out").iterdir() if p.name.startswith("downloads")) == []
    # the same tensors as a run through the cache
    hub.served.clear()
    res = cli("run", str(rec), str(root / "cached"), "-q")
    assert res.returncode == 0, res.stderr
    a, b = _tensors(root / "out"), _tensors(root / "cached")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_disk_budget_below_what_the_merge_holds_at_once_fails_before_any_weight_byte(online, toy, capsys):
    root, hub, _commits, _server = online
    rec = write(root / "r.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec), str(root / "out"), "--disk-budget", "40KB"], root / "out")
    assert "--disk-budget 0.00 GiB is below the" in err and "raise it" in err, err
    assert not _weights_served(hub), hub.downloaded  # headers only
    res = cli("plan", str(rec), "--disk-budget", "200KB")
    assert (
        res.returncode == 0 and "at most" in res.stdout and "deleted as the merge passes them" in res.stdout
    )
    auto = write(
        root / "a.yml",
        "models: {a: org/base, b: org/tuned}\nanchor: auto\nalign: [{rescale: {}}]\nmerge: linear\n",
    )
    err = clean_failure(capsys, ["run", str(auto), str(root / "out"), "--disk-budget", "10MB"], root / "out")
    assert "anchor: auto compares whole models" in err, err


def test_a_dropped_connection_resumes_where_it_stopped(online, toy, monkeypatch):
    """The connection drops in the middle of a shard; huggingface_hub asks for the rest (a Range request
    from the bytes it has), the merge goes on."""
    import huggingface_hub.constants

    root, hub, _commits, _server = online
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 8192)  # written in 8 KiB pieces
    shard = sorted(f for f in hub.repos["org/tuned"].files if f.endswith(".safetensors"))[0]
    assert shard.endswith(".safetensors")
    size = len(hub.repos["org/tuned"].files[shard])
    hub.cut[f"org/tuned/{shard}"] = size // 2
    rec = write(root / "r.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    starts = [start for key, start in hub.ranges if key == f"org/tuned/{shard}"]
    assert len(starts) >= 2 and starts[-1] > 0, starts  # the second request starts where the first stopped
    assert hub.downloaded[f"org/tuned/{shard}"] < size + 8192, (hub.downloaded, size)
    hub.served.clear()
    res = cli("run", str(rec), str(root / "again"), "-q")
    assert res.returncode == 0, res.stderr
    a, b = _tensors(root / "out"), _tensors(root / "again")
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_long_form_with_revision_and_subfolder(online, toy):
    root, hub, commits, _server = online
    import shutil

    nested = root / "nested"
    shutil.copytree(toy("llama", seed=1), nested / "weights")
    (nested / "README.md").write_text("a repository whose model sits in a folder\n")
    hub.add("org/nested", nested)
    rec = write(
        root / "r.yml",
        f"models:\n  a: {{hub: org/base, revision: {commits['org/base']}}}\n"
        "  b: {hub: org/nested, subfolder: weights}\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    card = (root / "out" / "README.md").read_text()
    assert f"org/base@{commits['org/base']}" in card and "(weights)" in card
    plain = write(root / "p.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    assert cli("run", str(plain), str(root / "plain"), "-q").returncode == 0
    a, b = _tensors(root / "out"), _tensors(root / "plain")
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_pickle_only_repo_needs_allow_pickle(online, toy, capsys, tmp_path):
    import shutil

    root, hub, _commits, _server = online
    (tmp_path / "bin").mkdir()
    shutil.copy(toy("llama", seed=1) / "config.json", tmp_path / "bin")
    torch.save(_tensors(toy("llama", seed=1)), tmp_path / "bin" / "pytorch_model.bin")
    hub.add("org/pickled", tmp_path / "bin")
    rec = write(root / "r.yml", "models: {a: org/base, b: org/pickled}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec), str(root / "out")], root / "out")
    assert "org/pickled@" in err and "--allow-pickle" in err, err
    res = cli("run", str(rec), str(root / "out"), "-q", "--allow-pickle")
    assert res.returncode == 0, res.stderr


def test_validate_checks_hub_models_from_their_headers(online, toy, capsys):
    root, hub, _commits, _server = online
    from mergeflow.testing.models import build

    hub.add("org/deeper", build("llama", root / "deeper", seed=2, config={"intermediate_size": 96}))
    hub.served.clear()
    ok = write(root / "ok.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    res = cli("validate", str(ok))
    assert res.returncode == 0 and "models checked from their headers" in res.stdout, res.stderr
    bad = write(root / "bad.yml", "models: {a: org/base, b: org/deeper}\nmerge: linear\n")
    err = clean_failure(capsys, ["validate", str(bad)])
    assert "model 'b'" in err and "shape" in err, err
    assert not _weights_served(hub), hub.downloaded
    assert cli("validate", str(bad), "--recipe-only").returncode == 0


def test_an_adapter_on_a_hub_base_is_preflighted_and_its_base_streamed(online, toy, capsys):
    """Base and adapter by repo id: the adapter (small) is fetched for the pre-flight, the base's shards
    stream into a disk budget; the result is peft's merge_and_unload. An adapter of another model fails on
    the headers, before any weight byte of the base."""
    pytest.importorskip("peft")
    from tests.helpers import make_adapter

    root, hub, _commits, _server = online
    merged = make_adapter(
        toy("llama"), root / "adapter", "llama", r=2, lora_alpha=4, target_modules=["q_proj"]
    )
    hub.add("org/chat-lora", root / "adapter")
    rec = write(
        root / "r.yml",
        "models:\n  a: {path: org/base, lora: org/chat-lora}\n  b: org/base\n"
        "base: b\nmerge: {task_arithmetic: {lambda: 1.0}}\n",
    )
    res = cli("run", str(rec), str(root / "out"), "--disk-budget", "200KB")
    assert res.returncode == 0, res.stderr
    assert "held at once" in res.stdout, res.stdout
    out = _tensors(root / "out")
    assert all(torch.allclose(out[k], merged[k], atol=1e-5) for k in out)
    assert "with LoRA adapter org/chat-lora@" in (root / "out" / "README.md").read_text()
    from mergeflow.testing.models import build

    hub.add("org/other", build("gpt2", root / "other", seed=1))
    hub.downloaded.clear()
    bad = write(
        root / "bad.yml",
        "models:\n  a: {path: org/other, lora: org/chat-lora}\n  b: org/other\nmerge: linear\n",
    )
    err = clean_failure(capsys, ["run", str(bad), str(root / "bad")], root / "bad")
    assert "an adapter of another model?" in err, err
    assert not _weights_served(hub), hub.downloaded


def test_shards_an_interrupted_attempt_left_in_the_private_folder_are_dropped(tmp_path):
    from mergeflow.io.fetcher import Fetcher

    stale = tmp_path / "downloads" / "model-0" / "model-00001-of-00002.safetensors"
    meta = tmp_path / "downloads" / "model-0" / ".cache" / "huggingface" / "download" / "x.safetensors"
    for p in (stale, meta):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"0" * 10)
    fetcher = Fetcher([], tmp_path / "downloads", budget=100)
    fetcher.close()
    assert not stale.exists() and meta.exists()


def test_stale_shard_cleanup_never_follows_a_planted_link(tmp_path):
    from mergeflow.io.fetcher import Fetcher

    users = tmp_path / "users" / "model.safetensors"
    users.parent.mkdir()
    users.write_bytes(b"mine")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "linked").symlink_to(users.parent, target_is_directory=True)
    Fetcher([], tmp_path / "downloads", budget=100).close()
    assert users.read_bytes() == b"mine"
