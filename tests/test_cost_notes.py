"""A one-line note before an exact FFN matching of large models on a CPU (minutes per model at 7B size), and
none where it would not help: small FFNs, the sketch solver, a GPU, -q."""

from __future__ import annotations

import pytest

from mergeflow.graph import cost_notes
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write


@pytest.fixture
def pair(toy, tmp_path):
    a = toy("llama")
    return a, scramble_model(a, tmp_path / "b", seed=2)


def test_a_note_names_the_size_and_the_faster_choices(pair, tmp_path, monkeypatch):
    a, b = pair
    monkeypatch.setattr(cost_notes, "NOTE_FROM", 1)  # the toy's FFN counts as large
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "o1"), "--device", "cpu")
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("note: permute")]
    assert len(lines) == 1 and "solver sparse" in lines[0] and "solver: sketch" in lines[0], res.stderr
    assert "--device cuda" in lines[0] and "multiply-adds" in lines[0]
    recipe = write(
        tmp_path / "r.yml",
        f"models:\n  a: {a}\n  b: {b}\nanchor: a\nalign:\n  - permute: {{solver: dense}}\nmerge: linear\n",
    )
    res = cli("run", str(recipe), str(tmp_path / "o2"), "--device", "cpu")
    assert res.returncode == 0 and "note: permute (solver dense)" in res.stderr, res.stderr
    quiet = cli("run", str(recipe), str(tmp_path / "o3"), "--device", "cpu", "-q")
    assert quiet.returncode == 0 and "note:" not in quiet.stderr
    sketch = write(tmp_path / "s.yml", "align:\n  - permute: {solver: sketch}\n")
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "o4"), "--steps", str(sketch))
    assert res.returncode == 0 and "note:" not in res.stderr


def test_no_note_for_small_ffns(pair, tmp_path):
    a, b = pair
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "o"), "--device", "cpu")
    assert res.returncode == 0 and "note:" not in res.stderr, res.stderr
