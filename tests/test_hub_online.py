"""The real huggingface_hub client against a local stand-in for the Hub (tests/hub_server.py, on
127.0.0.1, HF_ENDPOINT pointed at it): cold downloads of only the needed files, the warm cache offline
with the server gone, revision pinning, gated and missing repos as one-line errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli, write
from tests.helpers import clean_failure


def test_cold_download_then_warm_cache_offline_without_the_server(online, monkeypatch):
    root, hub, commits, server = online
    hub.repos["org/tuned"].files["pytorch_model.bin"] = b"x" * 1000  # never fetched: not needed
    rec = write(
        root / "r.yml", f"models:\n  a: org/base\n  b: org/tuned@{commits['org/tuned']}\nmerge: linear\n"
    )
    res = cli("run", str(rec), str(root / "out"), "-q")
    assert res.returncode == 0, res.stderr
    assert not any(k.endswith(".bin") for k in hub.served)
    shards = sum(n for k, n in hub.served.items() if k.endswith(".safetensors"))
    assert shards > 0
    card = (root / "out" / "README.md").read_text()
    assert f"org/base@{commits['org/base']}" in card
    first = load_file(str(next((root / "out").glob("model*.safetensors"))))
    server.shutdown()
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    res = cli("run", str(rec), str(root / "out2"), "-q")
    assert res.returncode == 0, res.stderr
    again = load_file(str(next((root / "out2").glob("model*.safetensors"))))
    assert all(torch.equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize(
    "ref,message",
    [
        ("org/base@v9", "org/base has no revision 'v9'"),
        ("org/nothing", "org/nothing: no such repository"),
        ("org/gated", "org/gated is gated"),
    ],
)
def test_hub_errors_are_one_line(online, capsys, ref, message):
    root, _hub, _commits, _server = online
    rec = write(root / "r.yml", f"models: {{a: org/base, b: {ref}}}\nmerge: linear\n")
    err = clean_failure(capsys, ["run", str(rec), str(root / "out")], root / "out")
    assert message in err, err


def _big(root, name: str, shape: tuple[int, ...], toy_cfg):
    """A model of one 2 MiB-class tensor (larger than a header request) with a Llama config."""
    from safetensors.torch import save_file

    d = root / "src" / name
    d.mkdir(parents=True)
    (d / "config.json").write_bytes(toy_cfg.read_bytes())
    save_file({"w": torch.zeros(shape)}, str(d / "model.safetensors"))
    return d


def test_plan_and_preflight_read_headers_only(online, toy):
    root, hub, _commits, _server = online
    cfg = toy("llama") / "config.json"
    hub.add("org/big", _big(root, "big", (512, 1024), cfg))
    hub.add("org/big2", _big(root, "big2", (512, 1024), cfg))
    hub.add("org/odd", _big(root, "odd", (1024, 512), cfg))
    weights = 512 * 1024 * 4
    rec = write(root / "r.yml", "models: {a: org/big, b: org/big2}\nmerge: linear\n")
    res = cli("plan", str(rec))
    assert res.returncode == 0, res.stderr
    assert "download from the Hub: 4.00 MiB of weights" in res.stdout
    served = {k: n for k, n in hub.served.items() if k.endswith(".safetensors")}
    assert served and all(n < weights / 4 for n in served.values()), served  # headers, not weights
    hub.served.clear()
    bad = write(root / "bad.yml", "models: {a: org/big, b: org/odd}\nmerge: linear\n")
    err = cli("run", str(bad), str(root / "out"), "-q")
    assert err.returncode == 2 and "shape [1024, 512] in model 'b'" in err.stderr, err.stderr
    assert all(n < weights / 4 for k, n in hub.served.items() if k.endswith(".safetensors")), hub.served
    assert not (root / "out").exists()


def test_preflight_plans_auto_anchors_and_vocabularies_of_different_sizes(online, toy, tmp_path):
    from mergeflow.testing.models import build

    root, hub, _commits, _server = online
    hub.add("org/wide-vocab", build("llama", tmp_path / "wide", seed=3, config={"vocab_size": 70}))
    rec = write(
        root / "v.yml",
        "models: {a: org/base, b: org/wide-vocab}\nmerge: linear\noutput: {tokenizer: b, config: b}\n",
    )
    res = cli(
        "run", str(rec), str(root / "vocab"), "-q"
    )  # rows 64..69 from b's tokenizer, as for local models
    assert res.returncode == 0, res.stderr
    rec = write(
        root / "a.yml",
        "models: {a: org/base, b: org/tuned}\nanchor: auto\nalign: [{rescale: {}}]\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(root / "aligned"), "-q")
    assert res.returncode == 0, res.stderr


def test_plan_counts_only_what_the_cache_lacks(online):
    root, _hub, _commits, _server = online
    rec = write(root / "r.yml", "models: {a: org/base, b: org/tuned}\nmerge: linear\n")
    first = cli("plan", str(rec))
    assert first.returncode == 0 and "download from the Hub:" in first.stdout, first.stderr
    assert cli("run", str(rec), str(root / "out"), "-q").returncode == 0
    again = cli("plan", str(rec))
    assert again.returncode == 0 and "download from the Hub" not in again.stdout


def test_the_python_api_takes_repo_ids_as_the_cli_does(online):
    """api.align downloads models named org/name into the cache, as `mergeflow align org/name` does."""
    from mergeflow import api

    root, _hub, _commits, _server = online
    res = api.align(
        "org/tuned", "org/base", root / "aligned", [{"permute": {"ffn": True}}], api.Options(device="cpu")
    )
    assert (res.out / "config.json").exists() and res.alignment is not None
    assert list(res.alignment["totals"]) == ["tuned"]
