"""Activation matching: planted symmetries are recovered from data alone, the function is kept, tied heads
included; statistics in passes equal one pass; bad requests are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import CAUSAL, align, exact_steps, outputs, state, text_data, trained_norms, vision_data


def data_for(tmp_path, family):
    return vision_data(tmp_path / "d.npz") if family == "vit" else text_data(tmp_path / "d.jsonl")


def steps(data, qk="true", method="activations", first="permute: {residual: true, heads: true, ffn: true"):
    return (
        f"[{{{first}, method: {method}, data: {data}, batches: 3}}}}, {{rotate: {{qk: {qk}, vo: true}}}}, "
        "{rescale: {}}]"
    )


# qwen2's toy and GPT-2 have heads tied to their embeddings
@pytest.mark.parametrize(
    "family",
    [
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "gpt2",
        "bert",
        "roberta",
        "distilbert",
        "vit",
        "gemma2",
        "phi3",
        "olmo2",
    ],
)
def test_planted_permutations_are_recovered_from_activations(tmp_path, toy, family):
    a = trained_norms(toy(family), tmp_path / "a")
    b = scramble_model(a, tmp_path / "b", seed=7, heads_perm=True, residual="permutation")
    c, report = align(tmp_path, b, a, exact_steps(family, steps(data_for(tmp_path, family))))
    ob, oc = outputs(b, family), outputs(c, family)
    torch.testing.assert_close(oc[0], ob[0], atol=1e-5, rtol=1e-5)  # the function is kept (logits) ...
    n = len(ob) - (family in CAUSAL)
    if family in CAUSAL:
        torch.testing.assert_close(oc[-1], ob[-1], atol=1e-5, rtol=1e-5)  # a decoding step
    for hb, hc in zip(ob[1:n], oc[1:n], strict=True):  # ... and the hidden states, in the anchor's order
        torch.testing.assert_close(hc.sort(dim=-1).values, hb.sort(dim=-1).values, atol=1e-5, rtol=1e-5)
    sa, sc = state(a), state(c)
    worst = max((sa[k] - sc[k]).abs().max().item() for k in sa)
    assert worst < 1e-5, f"not recovered: max weight difference {worst}"
    act = report["activations"][0]
    assert act["examples"] == 48 and act["rows"] > 48 and act["passes"] == 1
    assert act["ffn_correlation_matched"] > 0.999 > act["ffn_correlation_identity"]
    assert act["stream_correlation_matched"] > 0.999 > act["stream_correlation_identity"]


def test_deberta_units_are_matched_by_activations_without_a_stream_map(tmp_path, toy):
    a = toy("deberta-v2")  # its relative-position embeddings are not described: no residual map
    b = scramble_model(a, tmp_path / "b", seed=7, heads_perm=True)
    c, _report = align(
        tmp_path, b, a, steps(data_for(tmp_path, "deberta-v2"), first="permute: {heads: true, ffn: true")
    )
    torch.testing.assert_close(outputs(c, "deberta-v2")[0], outputs(b, "deberta-v2")[0], atol=1e-5, rtol=1e-5)
    sa, sc = state(a), state(c)
    assert max((sa[k] - sc[k]).abs().max().item() for k in sa) < 1e-5


@pytest.mark.parametrize("family", ["llama", "vit"])
def test_planted_orthogonal_stream_map_is_recovered_from_activations(tmp_path, toy, family):
    untied = {"config": {"tie_word_embeddings": False}} if family != "vit" else {}
    a = trained_norms(toy(family, **untied), tmp_path / "a")
    b = scramble_model(a, tmp_path / "b", seed=8, heads_perm=True, residual="orthogonal")
    data = data_for(tmp_path, family)
    recipe = steps(data, first="permute: {heads: true, ffn: true").replace(
        "[", f"[{{orthogonal: {{method: activations, data: {data}, batches: 3}}}}, ", 1
    )
    c, report = align(tmp_path, b, a, recipe)
    torch.testing.assert_close(outputs(c, family)[0], outputs(b, family)[0], atol=1e-5, rtol=1e-5)
    res = report["residual"][0]
    assert res["history"][0]["group"] == "activations"
    # the map from data alone (one solve, float32 activations) lands within float32 precision of the anchor
    before = report["totals"]["model"]["before"]["total"]
    assert res["distance_best"] < 1e-8 * before, res


def test_weights_refine_a_map_found_from_activations(tmp_path, toy):
    a = trained_norms(toy("vit", seed=1), tmp_path / "a", 1)
    b = trained_norms(toy("vit", seed=2), tmp_path / "b", 2)
    data = vision_data(tmp_path / "d.npz")
    recipe = steps(data).replace("{rotate", "{orthogonal: {residual: true}}, {rotate")
    c, report = align(tmp_path, b, a, recipe)
    torch.testing.assert_close(outputs(c, "vit")[0], outputs(b, "vit")[0], atol=1e-5, rtol=1e-5)
    hist = report["residual"][0]["history"]
    assert {h["group"] for h in hist} == {"orthogonal_centred"}  # started from the permutation the data gave


def test_statistics_in_several_passes_equal_one_pass(tmp_path, toy):
    from mergeflow.align.matching import Want
    from mergeflow.arch.spec import arch_spec
    from mergeflow.io.reader import ModelReader
    from mergeflow.learn.activations import match_activations
    from mergeflow.stats.data import load_data
    from mergeflow.stats.model import load_model

    a, b = toy("llama", seed=1), toy("llama", seed=2)
    ra, rb = ModelReader("a", a), ModelReader("b", b)
    spec = arch_spec(ra.config, ra.tensors, {n: t.shape for n, t in ra.tensors.items()})
    sa, sb = ({n: r.read(n) for n in r.tensors} for r in (ra, rb))
    loaded = load_model(a, torch.device("cpu"))
    data = load_data(text_data(tmp_path / "d.jsonl"))
    want = Want(True, True, "permutation", 2, 8, None)
    one, r1 = match_activations(loaded, spec, sa, sb, data, want, "b", torch.device("cpu"))
    many, r3 = match_activations(loaded, spec, sa, sb, data, want, "b", torch.device("cpu"), budget=1)
    assert (r1.passes, r3.passes) == (1, 3)
    assert torch.equal(one.stream.perm, many.stream.perm)
    for i in one.layers:
        for k in ("ffn", "heads"):
            assert torch.equal(one.layers[i][k], many.layers[i][k])
    assert r1.agreement == pytest.approx(r3.agreement, rel=1e-12)


@pytest.mark.parametrize(
    "params,msg",
    [
        ("{method: activations}", "method: activations needs 'data: PATH'"),
        ("{data: d.jsonl}", "'data' is only read with method: activations"),
    ],
)
def test_bad_activation_requests_are_one_line_errors(tmp_path, toy, params, msg):
    a = toy("llama")
    text_data(tmp_path / "d.jsonl")
    rec = write(
        tmp_path / "r.yml",
        f"models: {{anchor: {a}, model: {a}}}\nanchor: anchor\n"
        f"align: [{{permute: {params}}}]\nmerge: {{linear: {{}}}}\n",
    )
    r = cli("validate", "--recipe-only", str(rec))
    assert (
        r.returncode != 0
        and msg in r.stderr
        and "align[0].permute" in r.stderr
        and "Traceback" not in r.stderr
    )


def test_activation_permute_must_come_first(tmp_path, toy):
    a = toy("llama")
    text_data(tmp_path / "d.jsonl")
    rec = write(
        tmp_path / "r.yml",
        f"models: {{anchor: {a}, model: {a}}}\nanchor: anchor\n"
        "align: [{permute: {}}, {permute: {method: activations, data: d.jsonl}}]\nmerge: {linear: {}}\n",
    )
    r = cli("validate", "--recipe-only", str(rec))
    assert r.returncode != 0 and "align[1].permute" in r.stderr and "first permute step" in r.stderr


def untied_copy(src, dst):
    """The same tied model saved untied (its head a tensor of its own): the same function."""
    import shutil

    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (dst / "config.json").write_text(json.dumps(cfg))
    sd = state(dst)
    embed = next(k for k in sd if k.endswith(("wte.weight", "embed_tokens.weight")))
    for f in dst.glob("model*.safetensors*"):
        f.unlink()
    save_file(
        {**sd, "lm_head.weight": sd[embed].clone()}, str(dst / "model.safetensors"), metadata={"format": "pt"}
    )
    return dst


@pytest.mark.parametrize("family", ["gpt2", "qwen2"])
def test_tied_models_get_an_orthogonal_stream_map_with_untie(tmp_path, toy, family):
    a = trained_norms(toy(family), tmp_path / "a")  # tied
    assert "lm_head.weight" not in state(a)
    b = scramble_model(
        untied_copy(a, tmp_path / "a-untied"), tmp_path / "b", seed=9, heads_perm=True, residual="orthogonal"
    )
    recipe = "[{orthogonal: {residual: true, untie: true}}, {permute: {heads: true, ffn: true}}, {rotate: {}}, {rescale: {}}]"
    c, report = align(tmp_path, b, a, recipe)
    ob, oc = outputs(b, family), outputs(c, family)
    torch.testing.assert_close(oc[0], ob[0], atol=1e-5, rtol=1e-5)  # the function is kept
    torch.testing.assert_close(oc[-1], ob[-1], atol=1e-5, rtol=1e-5)
    assert json.loads((c / "config.json").read_text())["tie_word_embeddings"] is False
    assert "lm_head.weight" in state(c)
    res = report["residual"][0]
    assert res["distance_best"] < 1e-9 * res["distance_start"], res  # the planted map is found


def test_tied_model_without_untie_is_refused_with_the_way_out(tmp_path, toy):
    a = toy("gpt2")
    r = cli(
        "validate",
        str(
            write(
                tmp_path / "r.yml",
                f"models: {{anchor: {a}, model: {a}}}\nanchor: anchor\n"
                "align: [{orthogonal: {}}]\nmerge: {linear: {}}\n",
            )
        ),
    )
    assert r.returncode != 0 and "untie: true" in r.stderr and "Traceback" not in r.stderr


def test_refine_after_activation_matching_learns_the_stream_map_of_a_tied_model(tmp_path, toy):
    a, b = (
        trained_norms(toy("gpt2", seed=1), tmp_path / "a", 1),
        trained_norms(toy("gpt2", seed=2), tmp_path / "b", 2),
    )
    data = text_data(tmp_path / "d.jsonl")
    act = f"method: activations, data: {data}, batches: 2"
    recipe = (
        f"[{{permute: {{residual: true, heads: true, ffn: true, {act}}}}}, "
        f"{{orthogonal: {{untie: true, {act}}}}}, {{rotate: {{}}}}, {{refine: {{data: {data}, steps: 5}}}}]"
    )
    c, report = align(tmp_path, b, a, recipe)
    ob, oc = outputs(b, "gpt2"), outputs(c, "gpt2")
    torch.testing.assert_close(oc[0], ob[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(oc[-1], ob[-1], atol=1e-5, rtol=1e-5)
    assert report["refine"][0]["residual_change"] > 0.0  # the orthogonal map from the data is trained further
