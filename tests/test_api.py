"""The Python API: the CLI's work as functions that print nothing and report progress to a callback."""

from __future__ import annotations

import pytest
import torch

from mergeflow import api
from mergeflow.progress import callback
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import outputs, state


def test_merge_reports_through_the_callback_and_prints_nothing(tmp_path, toy, capsys):
    a, b = toy("llama", seed=0), toy("llama", seed=1)
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {b}}}\nmerge: {{linear: {{}}}}\n")
    events = []
    result = api.merge(rec, tmp_path / "out", api.Options(device="cpu"), progress=callback(events.append))
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # the library draws no bar and prints no line
    kinds = [e.kind for e in events]
    assert kinds[0] == "open" and kinds[-1] == "close" and "update" in kinds
    last = [e for e in events if e.kind == "update"][-1]
    assert last.unit == "B" and last.done == last.total == result.plan.bytes_written
    n = result.plan.n_tensors
    assert any(e.kind == "postfix" and e.text == f"{n}/{n} tensors" for e in events)
    # the same bytes as the command line writes
    assert cli("run", str(rec), "-o", str(tmp_path / "cli"), "-q").returncode == 0
    sa, sb = state(tmp_path / "out"), state(tmp_path / "cli")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_align_returns_the_report_and_an_equivalent_model(tmp_path, toy, capsys):
    a = toy("gpt2")
    b = scramble_model(a, tmp_path / "b", seed=2)
    assert api.align_steps(a)[0] == {"permute": {"heads": True, "ffn": True}}
    res = api.align(b, a, tmp_path / "c", options=api.Options(device="cpu"))
    assert capsys.readouterr().err == ""
    assert res.alignment is not None and res.alignment["totals"]
    torch.testing.assert_close(outputs(res.out, "gpt2")[0], outputs(b, "gpt2")[0], atol=1e-4, rtol=1e-4)
    steps = [{"permute": {"ffn": True}}]
    res = api.align(b, a, tmp_path / "d", steps, api.Options(device="cpu"))
    assert list(res.alignment["totals"]["b"]) == ["before", "permute"]


def test_bad_recipes_raise_one_error_listing_every_problem(tmp_path):
    rec = write(tmp_path / "r.yml", "models: {a: /nowhere/a}\nmerge: {linear: {}, ties: {}}\nfoo: 1\n")
    with pytest.raises(api.RecipeError) as info:
        api.load_recipe(rec)
    text = str(info.value)
    assert "foo" in text and "r.yml" in text and "Traceback" not in text
