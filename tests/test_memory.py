"""The memory bound: peak resident memory follows the tensors in flight, not the model size."""

import json

import pytest

from tests.conftest import run_cli, write
from tests.helpers import make_model


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
    big = [make_model(tmp_path / f"big{i}", 30, numel, i) for i in range(3)]  # 3 x 120 MiB
    small = [make_model(tmp_path / f"small{i}", 30, 16, i) for i in range(3)]
    total = sum(f.stat().st_size for m in big for f in m.glob("*.safetensors"))
    assert total > 5 * budget
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
