"""The refine step: trains on data, keeps the source's function exactly, refuses what it cannot do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import cli, write
from tests.helpers import align, outputs, trained_norms, vision_data

PART1 = "{permute: {residual: true, heads: true, ffn: true}}, {orthogonal: {residual: true}}, {rotate: {}}"


def test_refined_vit_keeps_its_function_and_reports_training(tmp_path, toy):
    a = trained_norms(toy("vit", seed=1), tmp_path / "a", 1)
    b = trained_norms(toy("vit", seed=2), tmp_path / "b", 2)
    data = vision_data(tmp_path / "d.npz")
    steps = f"[{PART1}, {{refine: {{data: {data}, steps: 15, lr: 0.01, batch_size: 16}}}}]"
    c, report = align(tmp_path, b, a, steps)
    torch.testing.assert_close(outputs(c, "vit")[0], outputs(b, "vit")[0], atol=1e-6, rtol=1e-6)
    ref = report["refine"][0]
    assert ref["steps"] == 15 and np.isfinite(ref["loss_first"]) and np.isfinite(ref["loss_last"])
    assert ref["loss_last"] < ref["loss_first"], ref  # the refinement lowers the interpolated model's loss
    assert ref["residual_change"] > 0  # the map was trained away from weight matching's
    written = json.loads((c / "alignment.json").read_text())
    assert written["refine"][0]["model"] == "model"
    totals = written["totals"]["model"]
    assert (
        "refine" in totals and totals["refine"]["total"] != list(totals.values())[-2]["total"]
    )  # its own distance


def test_refine_learns_permutations_only_where_the_stream_map_is_a_permutation(tmp_path, toy):
    a, b = toy("gpt2", seed=1), toy("gpt2", seed=2)  # tied head: no orthogonal map
    text = write(tmp_path / "t.txt", "\n".join("hello world, merging models " * 2 for _ in range(20)) + "\n")
    steps = (
        f"[{{permute: {{residual: true, ffn: true}}}}, {{refine: {{data: {text}, steps: 10, perm_lr: 0.5}}}}]"
    )
    c, report = align(tmp_path, b, a, steps)
    torch.testing.assert_close(outputs(c, "gpt2")[0], outputs(b, "gpt2")[0], atol=1e-5, rtol=1e-5)
    assert report["refine"][0]["residual_change"] == 0.0


@pytest.mark.parametrize(
    ("align_steps", "msg"),
    [
        ("[{rotate: {}}, {refine: {data: DATA}}]", "align[1].refine: needs a residual step"),
        (
            "[{permute: {residual: true}}, {refine: {data: DATA}}, {rescale: {}}]",
            "must be the last alignment step",
        ),
        ("[{permute: {residual: true}}, {refine: {steps: 3}}]", "needs 'data: PATH'"),
        ("[{permute: {residual: true}}, {refine: {data: nowhere.npz}}]", "align[1].refine.data: data file"),
        ("[{permute: {residual: true}}, {refine: {data: DATA, lambda_range: [0.7, 0.2]}}]", "lambda_range"),
    ],
)
def test_bad_refine_requests_are_one_line_errors(tmp_path, toy, align_steps, msg):
    a = toy("vit")
    data = vision_data(tmp_path / "d.npz")
    rec = write(
        tmp_path / "r.yml",
        f"models: {{anchor: {a}, model: {a}}}\nanchor: anchor\n"
        f"align: {align_steps.replace('DATA', str(data))}\nmerge: {{passthrough: {{source: model}}}}\n",
    )
    proc = cli("run", str(rec), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert msg in proc.stderr
    assert not (tmp_path / "out").exists()
