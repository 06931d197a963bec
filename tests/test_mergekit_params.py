"""Converted mergekit configs resolve every parameter as mergekit would.

``mk_value`` restates mergekit's documented resolution: scopes from the most specific (a model's
own parameters) to the least (top-level ``parameters``); in a scope, a plain value or gradient
applies, a list of ``{filter, value}`` gives the first condition whose filter is absent, ``*`` or a
substring of the tensor name, and a scope whose conditions all miss falls through to the next.
Gradients are evaluated at t = layer / (n - 1) in the stack and at t = 0 outside it.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mergeflow.arch.layers import layer_index, position
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.mergekit import convert
from mergeflow.recipe.resolve import Resolver
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import YamlSource

N_LAYERS = 4
TENSORS = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.1.mlp.up_proj.weight",
    "model.layers.3.self_attn.o_proj.weight",
    "model.layers.2.input_layernorm.weight",
    "model.norm.weight",
    "lm_head.weight",
]
FILTERS = ["self_attn", "mlp", "q_proj", "layers.1.", "norm", "lm_head", "*"]


def interp(values, t):
    x = t * (len(values) - 1)
    i0 = int(x)
    i1 = min(len(values) - 1, i0 + 1)
    return (1 - (x - i0)) * values[i0] + (x - i0) * values[i1]


def evaluate(setting, name, t):
    if isinstance(setting, (int, float)):
        return float(setting)
    if all(isinstance(v, (int, float)) for v in setting):
        return interp(setting, t)
    for cond in setting:
        if cond.get("filter") in (None, "*") or cond["filter"] in name:
            return evaluate(cond["value"], name, t)
    return None


def mk_value(cfg, model, key, name):
    i = layer_index(name)
    t = 0.0 if i is None else i / (N_LAYERS - 1)
    scopes = [e.get("parameters") or {} for e in cfg["models"] if e["model"] == model] if model else []
    for scope in [*scopes, cfg.get("parameters") or {}]:
        if key in scope:
            v = evaluate(scope[key], name, t)
            if v is not None:
                return v
    return None


numbers = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])
plain = st.one_of(numbers, st.lists(numbers, min_size=2, max_size=4))
conds = st.lists(
    st.fixed_dictionaries({"value": plain}, optional={"filter": st.sampled_from(FILTERS)}),
    min_size=1,
    max_size=4,
)
setting = st.one_of(plain, conds)
scope = st.dictionaries(st.sampled_from(["weight", "density", "lambda"]), setting, max_size=3)


def mk_config(glob, pa, pb):
    return {
        "models": [{"model": "/m/a", "parameters": pa}, {"model": "/m/b", "parameters": pb}],
        "base_model": "/m/base",
        "merge_method": "ties",
        "parameters": glob,
        "dtype": "float32",
    }


@settings(max_examples=300, deadline=None)
@given(
    scope,
    scope.map(lambda d: {k: v for k, v in d.items() if k != "lambda"}),
    scope.map(lambda d: {k: v for k, v in d.items() if k != "lambda"}),
)
def test_converted_parameters_resolve_as_in_mergekit(glob, pa, pb):
    cfg = mk_config(glob, pa, pb)
    native = convert(YamlSource(cfg, "mk.yml"))
    recipe = validate(YamlSource(native, "native.yml"), OPERATORS, check_paths=False)
    resolve = Resolver(recipe, OPERATORS)
    for name in TENSORS:
        got = resolve(name, position(name, N_LAYERS, recipe.outside_position))
        want = mk_value(cfg, None, "lambda", name)
        if want is not None:
            assert abs(float(got.params["lambda"]) - want) < 1e-12, (name, "lambda", native)
        for path, model in (("/m/a", "a"), ("/m/b", "b")):
            for key in ("weight", "density"):
                want = mk_value(cfg, path, key, name)
                if want is not None:
                    assert abs(float(got.model_params[model][key]) - want) < 1e-12, (name, model, key, native)


def test_first_matching_filter_wins_and_model_values_beat_global_filters():
    cfg = mk_config(
        {
            "weight": [
                {"filter": "mlp", "value": 0.3},
                {"filter": "up_proj", "value": 0.9},
                {"value": 1.0},
                {"filter": "q_proj", "value": 0.7},
            ]
        },
        {"weight": 0.5},
        {},
    )
    recipe = validate(YamlSource(convert(YamlSource(cfg, "mk.yml")), "n.yml"), OPERATORS, check_paths=False)
    resolve = Resolver(recipe, OPERATORS)
    up = resolve("model.layers.1.mlp.up_proj.weight", 0.0).model_params
    q = resolve("model.layers.1.self_attn.q_proj.weight", 0.0).model_params
    assert up["b"]["weight"] == 0.3 and up["a"]["weight"] == 0.5  # the first filter; a's own value wins
    assert q["b"]["weight"] == 1.0  # the condition after the unfiltered one is never reached
