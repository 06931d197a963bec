"""Community configs in the style of mergekit's examples (written here: repo ids, per-model parameters,
filters, gradients, slices, a passthrough that stacks more layers than its sources have) run unchanged
against the stand-in Hub from an empty cache, then again offline from the cache with the server gone,
giving the same tensors, and the same as with local folders."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import cli, write

LAYERS = 6

CONFIGS = {
    "gradient-slerp": """
slices:
  - sources:
      - model: org/chat
        layer_range: [0, 6]
      - model: org/code
        layer_range: [0, 6]
merge_method: slerp
base_model: org/chat
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
    "ties": """
models:
  - model: org/chat
    parameters:
      density: [1, 0.7, 0.1]
      weight: 1.0
  - model: org/code
    parameters:
      density: 0.5
      weight: [0, 0.3, 0.7, 1]
  - model: org/base
merge_method: ties
base_model: org/base
parameters:
  normalize: true
  int8_mask: true
dtype: float32
""",
    "stacked-passthrough": """
slices:
  - sources:
      - model: org/chat
        layer_range: [0, 4]
  - sources:
      - model: org/code
        layer_range: [1, 6]
  - sources:
      - model: org/chat
        layer_range: [3, 6]
merge_method: passthrough
dtype: float32
""",
    "filtered-linear": """
models:
  - model: org/chat
    parameters:
      weight:
        - filter: embed_tokens
          value: 1.0
        - value: 0.4
  - model: org/code@main
    parameters:
      weight:
        - filter: embed_tokens
          value: 0.0
        - value: 0.6
merge_method: linear
dtype: float32
""",
}


def _tensors(folder):
    out = {}
    for f in sorted(folder.glob("model*.safetensors")):
        out.update(load_file(str(f)))
    return out


@pytest.fixture
def zoo(online, tmp_path):
    from mergeflow.testing.models import build

    root, hub, _commits, server = online
    deep = {"num_hidden_layers": LAYERS}
    base = build("llama", tmp_path / "src-base", seed=0, config=deep)
    folders = {
        "org/base": base,
        "org/chat": build("llama", tmp_path / "src-chat", seed=1, perturb_from=base, config=deep),
        "org/code": build("llama", tmp_path / "src-code", seed=2, perturb_from=base, config=deep),
    }
    for repo, folder in folders.items():
        hub.add(repo, folder)
    return root, hub, server, folders


def test_example_configs_run_online_then_offline_with_the_same_tensors(zoo, monkeypatch):
    root, hub, server, folders = zoo
    for name, text in CONFIGS.items():
        res = cli(
            "run", str(write(root / f"{name}.yml", text)), str(root / "online" / name), "-q", "--parents"
        )
        assert res.returncode == 0, (name, res.stderr)
    stacked = _tensors(root / "online" / "stacked-passthrough")
    assert {int(k.split(".")[2]) for k in stacked if k.startswith("model.layers.")} == set(range(4 + 5 + 3))
    server.shutdown()
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    for name, text in CONFIGS.items():
        res = cli("run", str(root / f"{name}.yml"), str(root / "offline" / name), "-q", "--parents")
        assert res.returncode == 0, (name, res.stderr)
        a, b = _tensors(root / "online" / name), _tensors(root / "offline" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        local = text
        for repo, folder in folders.items():
            local = local.replace(f"{repo}@main", str(folder)).replace(repo, str(folder))
        res = cli(
            "run",
            str(write(root / f"{name}-local.yml", local)),
            str(root / "local" / name),
            "-q",
            "--parents",
        )
        assert res.returncode == 0, (name, res.stderr)
        c = _tensors(root / "local" / name)
        assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a), name
