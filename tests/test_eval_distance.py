"""mergeflow eval distance: totals, modules, agreement with the alignment report."""

import json

import pytest

from mergeflow.eval.distance import model_distance
from mergeflow.io.reader import ModelReader
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert"])
def test_distance_modules_and_symmetry(tmp_path, toy, family):
    a = toy(family)
    same = model_distance(ModelReader("a", a), ModelReader("b", a))
    assert same.total == 0.0 and {"qk", "vo", "ffn", "norms", "embeddings"} <= set(same.by_module)
    b = scramble_model(a, tmp_path / "b", seed=2)
    d = model_distance(ModelReader("a", a), ModelReader("b", b))
    assert d.by_module["qk"] > 0 and d.by_module["vo"] > 0 and d.by_module["ffn"] > 0
    assert d.by_module["norms"] == 0.0 and d.by_module["embeddings"] == 0.0  # a symmetry leaves them alone
    rows = dict((m, (s, r)) for m, s, r in d.rows())
    assert rows["total"][0] == pytest.approx(sum(s for m, (s, _r) in rows.items() if m != "total"))


def test_cli_matches_the_alignment_report(tmp_path, toy):
    a = toy("llama")
    b = scramble_model(a, tmp_path / "b", seed=4)
    res = cli("align", str(b), "--anchor", str(a), "-o", str(tmp_path / "c"), "-q")
    assert res.returncode == 0, res.stderr
    before = json.loads((tmp_path / "c" / "alignment.json").read_text())["totals"]["b"][
        "before"
    ]  # named after its folder
    out = json.loads(cli("eval", "distance", str(a), str(b), "--json").stdout)
    for m in ("qk", "vo", "ffn"):
        assert out[m]["squared"] == pytest.approx(before[m], rel=1e-6)
    after = json.loads(cli("eval", "distance", str(a), str(tmp_path / "c"), "--json", "--by", "total").stdout)
    assert list(after) == ["total"] and after["total"]["squared"] < 1e-8
    res = cli("eval", "distance", str(a), str(toy("gpt2")))
    assert res.returncode == 2 and "Traceback" not in res.stderr
