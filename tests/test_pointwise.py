"""Pointwise operators (linear, task arithmetic) read their inputs as stored and convert them piece by piece
while merging: the output must be the same bits as the whole-tensor path, whatever the piece boundaries."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

import mergeflow.graph.plan as plan_mod
import mergeflow.graph.tasks as tasks_mod
from tests.conftest import cli, write


def _model(path, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (37, 11), "b.bias": (5,), "c.scale": (), "d.empty": (0, 4), "e.big": (3, 1000)}
    state = {k: (torch.randn(s, generator=g) * (seed + 1)).to(dtype) for k, s in shapes.items()}
    path.mkdir()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize(
    "merge", ["{linear: {}}", "{linear: {normalize: false}}", "{task_arithmetic: {lambda: 0.7}}"]
)
def test_pieces_give_the_same_bits_as_whole_tensors(tmp_path, monkeypatch, dtype, merge):
    models = [_model(tmp_path / f"m{i}", i, dtype) for i in range(3)]
    recipe = write(
        tmp_path / "r.yml",
        "models:\n"
        + "".join(
            f"  m{i}: {{path: {p}, params: {{weight: {0.2 + 0.3 * i}}}}}\n" for i, p in enumerate(models)
        )
        + f"base: m0\nmerge: {merge}\n",
    )
    monkeypatch.setattr(tasks_mod, "POINTWISE_PIECE", 7)  # many pieces, none aligned to a row
    outs = {}
    for on in (True, False):
        monkeypatch.setattr(plan_mod, "POINTWISE", on)
        res = cli("run", str(recipe), str(tmp_path / f"out-{on}"), "-q")
        assert res.returncode == 0, res.stderr
        outs[on] = load_file(str(tmp_path / f"out-{on}" / "model.safetensors"))
    assert outs[True].keys() == outs[False].keys()
    for k, v in outs[False].items():
        assert outs[True][k].dtype == v.dtype == dtype and torch.equal(outs[True][k], v), k
    # and the pieces path is the one that ran: a plan of this recipe reads the inputs as stored
    from mergeflow.api import plan

    monkeypatch.setattr(plan_mod, "POINTWISE", True)
    p = plan(str(recipe))
    merges = [w.source for w in p.plan.writes]
    assert merges and all(m.stored_out is not None and not any(i.float for i in m.inputs) for m in merges)
