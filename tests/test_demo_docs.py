"""The demo's numbers in README.md and docs/results.md are the rendering of docs/demo-results.json."""

from __future__ import annotations

import json

from mergeflow.demo.docs import END, JSON, START, render, replace_block, stale_targets
from tests.conftest import ROOT


def test_readme_and_results_blocks_match_the_committed_demo_results():
    assert stale_targets(ROOT) == [], "run `make demo-docs` and commit the result"


def test_the_block_says_every_number_of_the_results():
    res = json.loads((ROOT / JSON).read_text())
    block = render(res)
    assert block.startswith(START) and block.endswith(END)
    for row in res["llama"]:
        assert f"| {row['recipe']} | {row['operator']} | {row['loss']} | {row['gap']} |" in block
    for row in res["barrier"]["rows"]:
        assert f"| {row['variant']} | {row['barrier']} | {row['ratio']} |" in block
    assert replace_block(f"a\n{START}\nold\n{END}\nb", block, "x") == f"a\n{block}\nb"
