"""Per-tensor parameter resolution: precedence, operator switches, gradients across layers."""

import pytest

from mergeflow.arch.layers import layer_index, num_layers, position
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.params import interpolate
from mergeflow.recipe.resolve import Resolver
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import parse_yaml


def recipe(text: str):
    return validate(parse_yaml(text, "r.yml"), OPERATORS, check_paths=False)


def test_interpolate_closed_form():
    assert interpolate([0.0, 1.0], 0.25) == pytest.approx(0.25)
    assert interpolate([0.0, 0.5, 1.0], 0.75) == pytest.approx(0.75)
    assert interpolate([1.0, 3.0, 2.0], 0.5) == pytest.approx(3.0)
    assert interpolate([1.0, 3.0, 2.0], 1.0) == pytest.approx(2.0)
    assert interpolate(0.4, 0.9) == 0.4


def test_layer_positions():
    assert layer_index("model.layers.7.mlp.up_proj.weight") == 7
    assert layer_index("vit.encoder.layer.2.attention.attention.query.weight") == 2
    assert layer_index("transformer.h.11.attn.c_attn.weight") == 11
    assert layer_index("model.norm.weight") is None
    assert num_layers([], {"num_hidden_layers": 5}) == 5
    assert num_layers(["transformer.h.0.x", "transformer.h.3.x"], None) == 4
    assert position("model.layers.0.x", 5) == 0.0 and position("model.layers.4.x", 5) == 1.0
    assert position("model.embed_tokens.weight", 5) == 0.0
    assert position("lm_head.weight", 5) == 1.0


def test_precedence_and_gradients():
    r = recipe("""\
models:
  a: /x/a
  b: {path: /x/b, params: {weight: 2.0}}
  c: /x/c
base: a
merge: {ties: {density: 0.5, weight: 1.0, lambda: [0.0, 1.0]}}
overrides:
  - match: "*.mlp.*"
    params: {density: 0.9}
    models: {c: {density: [0.1, 0.3]}}
  - regex: "lm_head"
    merge: {passthrough: {source: b}}
""")
    res = Resolver(r, OPERATORS)
    s = res("model.layers.1.self_attn.q_proj.weight", 0.5)
    assert s.op == "ties" and s.params == {"lambda": pytest.approx(0.5)}
    assert s.model_params["b"] == {"weight": 2.0, "density": 0.5}
    assert s.model_params["c"] == {"weight": 1.0, "density": 0.5}
    s = res("model.layers.2.mlp.up_proj.weight", 1.0)
    assert s.model_params["a"]["density"] == 0.9
    assert s.model_params["b"] == {
        "weight": 2.0,
        "density": 0.9,
    }  # override beats models.b.params? only density
    assert s.model_params["c"]["density"] == pytest.approx(0.3)
    s = res("lm_head.weight", 1.0)
    assert s.op == "passthrough" and s.params == {"source": "b"}


def test_glob_matches_whole_name_regex_searches():
    r = recipe("""\
models: {a: /x/a, b: /x/b}
merge: {linear: {}}
overrides:
  - match: "mlp*"
    params: {normalize: false}
  - regex: "mlp"
    models: {a: {weight: 5}}
""")
    res = Resolver(r, OPERATORS)
    assert res.matching("model.layers.0.mlp.up.weight") == [1]
    assert res.matching("mlp.up.weight") == [0, 1]
