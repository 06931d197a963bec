"""The memory bound: peak resident memory follows the tensors in flight, not the model size."""

import json

import pytest
import torch
from safetensors.torch import save_file

from tests.conftest import run_cli, write


def make_model(path, n_tensors, numel, seed, shards=2):
    path.mkdir(parents=True)
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    per = -(-n_tensors // shards)
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        names = [f"model.layers.{i}.w" for i in range(s * per, min((s + 1) * per, n_tensors))]
        save_file(
            {n: torch.randn(numel, generator=gen) for n in names},
            str(path / fname),
            metadata={"format": "pt"},
        )
        weight_map.update({n: fname for n in names})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def peak_rss_of_cli(tmp_path, *args):
    """Peak RSS in bytes of one CLI run, as the CLI reports it (VmHWM of its own process)."""
    report = tmp_path / "report.json"
    res = run_cli(*args, "--report", str(report))
    assert res.returncode == 0, res.stderr
    return json.loads(report.read_text())["peak_rss_bytes"]


@pytest.mark.slow
@pytest.mark.parametrize("operator", ["linear", "ties"])
def test_peak_rss_stays_within_budget_for_models_larger_than_it(tmp_path, operator):
    budget = 64 * 2**20
    numel = 2**20  # 4 MiB per float32 tensor
    big = [make_model(tmp_path / f"big{i}", 50, numel, i) for i in range(3)]  # 3 x 200 MiB
    small = [make_model(tmp_path / f"small{i}", 50, 16, i) for i in range(3)]
    total = sum(f.stat().st_size for m in big for f in m.glob("*.safetensors"))
    assert total > 8 * budget
    merge = "{ties: {density: 0.5}}" if operator == "ties" else "linear"
    rss = {}
    for kind, models in (("small", small), ("big", big)):
        rec = write(
            tmp_path / f"{kind}.yml",
            "models:\n"
            + "".join(f"  m{i}: {p}\n" for i, p in enumerate(models))
            + f"base: m0\nmerge: {merge}\noutput: {{shard_size: 100MB}}\n",
        )
        rss[kind] = peak_rss_of_cli(
            tmp_path, "run", str(rec), str(tmp_path / f"out-{kind}"), "--max-memory", str(budget), "-q"
        )
    grown = rss["big"] - rss["small"]
    print(
        f"{operator}: inputs {total / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB, "
        f"baseline RSS {rss['small'] / 2**20:.0f} MiB, growth {grown / 2**20:.0f} MiB"
    )
    assert grown < budget, f"peak RSS grew by {grown / 2**20:.0f} MiB, budget {budget / 2**20:.0f} MiB"
