"""Recipe validation: every problem at once, each at its YAML location, before any weight is read."""

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from mergeflow.align.catalog import STEPS
from mergeflow.errors import RecipeError
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.jsonschema import build_schema
from mergeflow.recipe.validate import load_recipe
from tests.conftest import ROOT, cli, write


def problems(path: Path) -> list[str]:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, OPERATORS)
    return info.value.problems


def test_shipped_recipes_validate(demo_tree):
    from mergeflow.moe.build import load_config
    from mergeflow.recipe.stages import load_stages

    recipes = sorted((demo_tree / "recipes").glob("*.yml"))
    assert len(recipes) >= 5
    for path in recipes:
        data = yaml.safe_load(path.read_text())
        if "experts" in data:  # a mixture-of-experts config (mergeflow moe)
            assert len(load_config(path)[0].experts) >= 2
            continue
        if "stages" in data:
            stages = load_stages(path, demo_tree / "stages", OPERATORS, STEPS).stages
            models = [e for st in stages for e in st.recipe.models.values() if e.stage is None]
        else:
            models = list(load_recipe(path, OPERATORS, STEPS).models.values())
        assert all(Path(e.path).is_absolute() and Path(e.path).exists() for e in models)


def test_all_problems_reported_at_once_with_locations(tmp_path, toy):
    a = toy("llama")
    rec = write(
        tmp_path / "r.yml",
        f"""\
models:
  a: {a}
  b: {{path: {tmp_path}/missing, params: {{weight: "heavy"}}}}
base: a
merge:
  ties: {{density: 1.5, lamda: 2}}
overrides:
  - regex: "("
    params: {{density: [0.5]}}
  - match: "*.mlp.*"
    merge: {{nosuch: {{}}}}
dtype: float31
colour: blue
""",
    )
    probs = problems(rec)
    text = "\n".join(probs)
    expected = [
        ("r.yml:3:", "models.b: path does not exist"),
        ("r.yml:3:", "models.b.params.weight"),
        ("r.yml:6:", "merge.ties.density"),
        ("r.yml:6:", "merge.ties.lamda: unknown parameter"),
        ("r.yml:8:", "overrides[0].regex: invalid regular expression"),
        ("r.yml:9:", "overrides[0].params.density: a gradient needs at least 2 values"),
        ("r.yml:11:", "unknown merge operator 'nosuch'"),
        ("r.yml:12:", "dtype"),
        ("r.yml:13:", "colour: unknown key"),
    ]
    for where, what in expected:
        assert any(where in p and what in p for p in probs), f"missing {where} {what} in:\n{text}"
    assert len(probs) == len(expected)


def test_gradient_elements_checked_and_only_numbers_take_gradients(tmp_path, toy):
    a = toy("llama")
    rec = write(
        tmp_path / "r.yml",
        f"""\
models: {{a: {a}, b: {a}}}
base: a
merge:
  ties: {{density: [0.2, 1.7], normalize: [true, false]}}
""",
    )
    probs = problems(rec)
    assert any("merge.ties.density: [1]:" in p and "less than or equal to 1" in p for p in probs)
    assert any("merge.ties.normalize: Input should be a valid boolean" in p for p in probs)


def test_cross_references(tmp_path, toy):
    a = toy("llama")
    rec = write(
        tmp_path / "r.yml",
        f"""\
models: {{a: {a}, b: {a}, c: {a}}}
base: z
anchor: y
merge: {{slerp: {{t: 0.3}}}}
output: {{config: q, tokenizer: w}}
overrides:
  - match: "*"
    models: {{nobody: {{weight: 1}}}}
  - match: "lm_head*"
    merge: {{passthrough: {{source: nope}}}}
""",
    )
    text = "\n".join(problems(rec))
    for frag in (
        "base: 'z' is not a key of models",
        "anchor: 'y'",
        "merges at most 2 model(s), got 3",
        "output.config",
        "output.tokenizer",
        "overrides[0].models.nobody",
        "overrides[1].merge.passthrough.source: names no model",
    ):
        assert frag in text, frag


def test_task_operators_need_base(tmp_path, toy):
    a = toy("llama")
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {a}}}\nmerge: task_arithmetic\n")
    assert any("needs a 'base' model" in p for p in problems(rec))


def test_align_is_reserved_and_validated(tmp_path, toy):
    a = toy("llama")
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {a}}}\nalign: [{{rotate: {{}}}}]\nmerge: linear\n")
    probs = problems(rec)
    assert any("alignment steps need an 'anchor'" in p for p in probs)
    assert any("align[0].rotate: unknown alignment step" in p for p in probs)
    ok = write(tmp_path / "ok.yml", f"models: {{a: {a}, b: {a}}}\nanchor: a\nalign: []\nmerge: linear\n")
    assert load_recipe(ok, OPERATORS).anchor == "a"


def test_relative_paths_resolve_against_recipe_folder(tmp_path, toy):
    a = toy("llama")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a").symlink_to(a)
    rec = write(tmp_path / "sub" / "r.yml", "models: {a: ../models/a}\nmerge: linear\n")
    assert load_recipe(rec, OPERATORS).models["a"].path == str(a.resolve())


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("models: [a\n", "invalid YAML"),
        ("", "empty"),
        ("- 1\n- 2\n", "a recipe is a mapping"),
        ("a: !!python/object/apply:os.system ['true']\n", "invalid YAML"),
        (
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"
            "e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n",
            "YAML nodes",
        ),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nesting"),
    ],
)
def test_hostile_or_broken_yaml(tmp_path, text, fragment):
    rec = write(tmp_path / "r.yml", text)
    assert any(fragment in p for p in problems(rec))


@pytest.mark.slow
def test_schema_accepts_shipped_recipes_and_rejects_bad_ones():
    schema = build_schema(OPERATORS)
    jsonschema.Draft202012Validator.check_schema(schema)
    for path in sorted((ROOT / "recipes").glob("*.yml")):
        data = yaml.safe_load(path.read_text())
        if "stages" not in data and "experts" not in data:  # the schema is a single recipe's
            jsonschema.validate(data, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"models": {"a": "x"}, "merge": {"ties": {"densty": 0.5}}}, schema)
    json.dumps(schema)


def test_recipe_package_imports_no_torch():
    code = (
        "import sys, mergeflow.recipe.validate, mergeflow.recipe.resolve, mergeflow.recipe.jsonschema; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rules_across_parameters_are_checked_by_validate(tmp_path, toy):
    """della's density +/- epsilon must lie in (0, 1]: a rule over two fields, checked before any model is
    opened, at every knot of a gradient, with the YAML location."""
    a, b = toy("llama"), toy("llama", seed=1)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nbase: a\nmerge: {{della: {{density: 0.9, epsilon: 0.2}}}}\n",
    )
    res = cli("validate", str(rec), "--recipe-only")
    assert res.returncode == 2 and "r.yml:3:" in res.stderr and "merge.della: density - epsilon" in res.stderr
    rec = write(
        tmp_path / "g.yml",
        f"models: {{a: {a}, b: {{path: {b}, params: {{density: [0.5, 0.9]}}}}}}\n"
        "base: a\nmerge: {della: {epsilon: 0.15}}\n",
    )
    res = cli("validate", str(rec), "--recipe-only")
    assert res.returncode == 2 and "models.b.params:" in res.stderr and "(at layer position 1)" in res.stderr
    ok = write(
        tmp_path / "ok.yml",
        f"models: {{a: {a}, b: {{path: {b}, params: {{density: [0.5, 0.8]}}}}}}\n"
        "base: a\nmerge: {della: {epsilon: 0.15}}\n",
    )
    assert cli("validate", str(ok), "--recipe-only").returncode == 0


@pytest.mark.parametrize(
    ("align", "msg"),
    [
        ("[{refine: {steps: 3}}]", "align[0].refine: needs 'data: PATH'"),
        ("[{refine: {data: d.txt}}]", "align[0].refine: needs a residual step before it"),
        (
            "[{rotate: {}}, {permute: {heads: true}}]",
            "align[1].permute: heads are paired before they are rotated",
        ),
        (
            "[{permute: {residual: true}}, {refine: {data: d.txt}}, {rescale: {}}]",
            "align[1].refine: must be the last",
        ),
    ],
)
def test_step_order_rules_are_checked_without_models(tmp_path, toy, align, msg):
    write(tmp_path / "d.txt", "some text\n")
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nanchor: a\n"
        f"align: {align}\nmerge: linear\n",
    )
    res = cli("validate", str(rec), "--recipe-only")
    assert res.returncode == 2 and msg in res.stderr and "r.yml:3:" in res.stderr, res.stderr


def test_problems_found_while_planning_point_at_the_recipe_key(tmp_path, toy):
    """Errors from the models' headers (found after the recipe validated) carry the file:line:col of the
    key at fault, like validation errors."""
    from tests.conftest import cli, write

    rec = write(
        tmp_path / "mix.yml", f"models:\n  a: {toy('llama')}\n  v: {toy('vit')}\nmerge: {{linear: {{}}}}\n"
    )
    r = cli("validate", str(rec))
    assert r.returncode == 2 and "mix.yml:3:6: models.v: models have different architectures" in r.stderr, (
        r.stderr
    )
    g = toy("gpt2")  # tied head
    rec = write(
        tmp_path / "tied.yml",
        f"models: {{a: {g}, b: {g}}}\nanchor: a\nalign:\n  - orthogonal: {{}}\nmerge: {{linear: {{}}}}\n",
    )
    r = cli("validate", str(rec))
    assert r.returncode == 2 and "tied.yml:4:17: align[0].orthogonal: not valid for this model" in r.stderr, (
        r.stderr
    )
