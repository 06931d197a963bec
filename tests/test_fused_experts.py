"""Mixtures whose experts transformers 5 fuses into one parameter per layer (``experts.gate_up_proj``) while
checkpoints store them apart: the fused parameters are rebuilt from the stored tensors (exactly as loading
makes them), so activation matching and refine run on them."""

from __future__ import annotations

import pytest
import torch

from mergeflow.learn.fused import Fused
from mergeflow.learn.refine import module_names
from mergeflow.stats.model import load_model
from mergeflow.testing.scramble import scramble_model
from tests.conftest import write
from tests.helpers import align, outputs, state, text_data

MOE = ["mixtral", "qwen2_moe", "qwen3_moe"]


@pytest.mark.parametrize("family", MOE)
def test_fused_parameters_are_rebuilt_as_loading_makes_them(toy, family):
    path = toy(family)
    loaded = load_model(path, torch.device("cpu"))
    stored = state(path)
    names = module_names(loaded, stored)
    fused = {m: f for m, f in names.items() if isinstance(f, Fused)}
    transformers_fuses = any(n.endswith("experts.gate_up_proj") for n in loaded.model.state_dict())
    assert bool(fused) == transformers_fuses
    params = loaded.model.state_dict()
    for m, f in fused.items():
        assert torch.equal(f.build(stored.__getitem__), params[m]), m
    assert all(n in stored for f in fused.values() for n in f.names)


@pytest.mark.parametrize("family", MOE)
def test_activation_matching_recovers_a_planted_stream_permutation_of_a_mixture(tmp_path, toy, family):
    a = toy(family)
    b = scramble_model(
        a, tmp_path / "b", seed=5, residual="permutation", rotate=False, permute=False, scale=False
    )
    data = text_data(tmp_path / "d.jsonl")
    steps = f"[{{permute: {{residual: true, heads: false, ffn: false, method: activations, data: {data}}}}}]"
    c, report = align(tmp_path, b, a, steps)
    torch.testing.assert_close(outputs(c, family)[0], outputs(b, family)[0], atol=1e-5, rtol=1e-5)
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5  # the anchor's order again
    assert report["activations"][0]["examples"] > 0


@pytest.mark.parametrize("family", MOE)
def test_refine_of_a_mixture_keeps_its_function_and_both_modes_agree(tmp_path, toy, family):
    a, b = toy(family, seed=1), toy(family, seed=2)
    data = write(tmp_path / "t.txt", "\n".join("hello world, merging models " * 2 for _ in range(20)) + "\n")
    got = {}
    for mode in ("whole", "layered"):
        refine = f"{{data: {data}, steps: 6, lr: 0.01, batch_size: 8, permutations: false, mode: {mode}}}"
        out, report = align(
            tmp_path, b, a, f"[{{orthogonal: {{residual: true}}}}, {{refine: {refine}}}]", name=mode
        )
        torch.testing.assert_close(outputs(out, family)[0], outputs(b, family)[0], atol=1e-5, rtol=1e-5)
        got[mode] = (state(out), report["refine"][0])
    (whole, w_rep), (layered, l_rep) = got["whole"], got["layered"]
    assert w_rep["residual_change"] > 0  # the experts' weights were part of what the map was trained on
    assert l_rep["loss_first"] == pytest.approx(w_rep["loss_first"], rel=1e-5)
    assert l_rep["loss_last"] == pytest.approx(w_rep["loss_last"], rel=1e-5)
    for name, t in whole.items():
        torch.testing.assert_close(layered[name], t, atol=2e-5, rtol=1e-4)
