"""mergekit configs run unchanged and give the same bytes as the equivalent native recipe."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import cli, write

CASES = {
    "linear": (
        """\
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: [0.2, 0.8]}}
merge_method: linear
dtype: float32
""",
        "models: {{a: {a}, b: {{path: {b}, params: {{weight: [0.2, 0.8]}}}}}}\nmerge: {{linear: {{}}}}\n"
        "models_params_a: 1\noutside_position: 0.0\ndtype: float32\nout_dtype: float32\n",
    ),
    "ties": (
        """\
models:
  - model: {a}
  - model: {b}
    parameters:
      density: [1.0, 0.7, 0.1]
      weight:
        - filter: mlp
          value: 0.5
        - value: 1.0
base_model: {a}
merge_method: ties
parameters: {{normalize: true, int8_mask: true}}
dtype: float32
out_dtype: bfloat16
tokenizer_source: base
""",
        "models: {{a: {a}, b: {{path: {b}, params: {{density: [1.0, 0.7, 0.1], weight: 1.0}}}}}}\nbase: a\n"
        "merge: {{ties: {{normalize: true}}}}\noverrides: [{{regex: mlp, models: {{b: {{weight: 0.5}}}}}}]\n"
        "outside_position: 0.0\ndtype: float32\nout_dtype: bfloat16\ntokenizer: {{source: base}}\n",
    ),
    "slerp": (
        """\
models:
  - model: {a}
  - model: {b}
merge_method: slerp
base_model: {a}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: float32
""",
        "models: {{a: {a}, b: {b}}}\nbase: a\nmerge: {{slerp: {{t: 0.5}}}}\noverrides:\n"
        "  - {{regex: self_attn, params: {{t: [0, 0.5, 0.3, 0.7, 1]}}}}\n"
        "  - {{regex: mlp, params: {{t: [1, 0.5, 0.7, 0.3, 0]}}}}\noutside_position: 0.0\ndtype: float32\n"
        "out_dtype: float32\n",
    ),
    "dare_ties": (
        """\
models:
  - model: {a}
  - model: {b}
    parameters: {{density: 0.5, weight: 0.7}}
base_model: {a}
merge_method: dare_ties
dtype: float32
""",
        "models: {{a: {a}, b: {{path: {b}, params: {{density: 0.5, weight: 0.7}}}}}}\nbase: a\n"
        "merge: {{dare_ties: {{normalize: false, rescale: l1}}}}\ndtype: float32\nout_dtype: float32\n",
    ),
    "nuslerp": (
        """\
models:
  - model: {a}
    parameters: {{weight: 1.0}}
  - model: {b}
    parameters: {{weight: 2.0}}
merge_method: nuslerp
parameters: {{nuslerp_flatten: false}}
dtype: float32
""",
        "models: {{a: {{path: {a}, params: {{weight: 1.0}}}}, b: {{path: {b}, params: {{weight: 2.0}}}}}}\n"
        "merge: {{nuslerp: {{flatten: false}}}}\ndtype: float32\nout_dtype: float32\n",
    ),
    "frankenmerge": (
        """\
slices:
  - sources:
      - model: {a}
        layer_range: [0, 2]
  - sources:
      - model: {b}
        layer_range: [1, 2]
merge_method: passthrough
dtype: bfloat16
""",
        "models: {{a: {a}, b: {b}}}\nslices:\n  - sources: [{{model: a, layers: [0, 2]}}]\n"
        "  - sources: [{{model: b, layers: [1, 2]}}]\nmerge: {{passthrough: {{}}}}\ndtype: bfloat16\n"
        "out_dtype: bfloat16\n",
    ),
    "slerp_one_slice": (
        """\
slices:
  - sources:
      - model: {a}
        layer_range: [0, 2]
      - model: {b}
        layer_range: [0, 2]
merge_method: slerp
base_model: {a}
parameters:
  t: [0, 1]
dtype: float32
""",
        "models: {{a: {a}, b: {b}}}\nslices:\n  - sources: [{{model: a, layers: [0, 2]}}, {{model: b, layers: [0, 2]}}]\n"
        "base: a\nmerge: {{slerp: {{t: [0, 1]}}}}\noutside_position: 0.0\ndtype: float32\nout_dtype: float32\n",
    ),
}


def shards(path):
    return {f.name: f.read_bytes() for f in sorted(path.glob("*.safetensors"))}


@pytest.mark.parametrize("case", list(CASES))
def test_mergekit_config_equals_native_recipe(tmp_path, toy, case):
    a = toy("llama")
    b = toy("llama", seed=1, perturb_from=a)
    mk_text, native_text = CASES[case]
    mk = write(tmp_path / "mk.yml", mk_text.format(a=a, b=b))
    native = yaml.safe_load(native_text.format(a=a, b=b))
    native.pop("models_params_a", None)
    nat = write(tmp_path / "native.yml", yaml.safe_dump(native))
    assert cli("run", str(mk), str(tmp_path / "o_mk"), "-q").returncode == 0
    res = cli("run", str(nat), str(tmp_path / "o_native"), "-q")
    assert res.returncode == 0, res.stderr
    assert shards(tmp_path / "o_mk") == shards(tmp_path / "o_native")
    converted = cli("convert", str(mk))
    assert converted.returncode == 0
    again = write(tmp_path / "converted.yml", converted.stdout)
    assert cli("run", str(again), str(tmp_path / "o_conv"), "-q").returncode == 0
    assert shards(tmp_path / "o_conv") == shards(tmp_path / "o_native")


def test_unsupported_mergekit_parts_are_named(tmp_path, toy):
    a = toy("llama")
    mk = write(
        tmp_path / "mk.yml",
        f"""\
slices:
  - sources:
      - model: {a}
        layer_range: [0, 2]
merge_method: arcee_fusion
tokenizer: 12
models:
  - model: {a}+some/lora
""",
    )
    res = cli("validate", str(mk))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for frag in (
        "models: give exactly one of models: or slices:",
        "merge_method: 'arcee_fusion' is not supported",
        "tokenizer: expected {source, tokens, pad_to_multiple_of}",
    ):
        assert frag in res.stderr, frag
    assert (
        "lora" not in res.stderr.lower()
    )  # model+adapter is accepted (the adapter a repo id, resolved at run)


def test_errors_in_a_converted_config_point_at_its_lines(tmp_path, toy):
    a, b = toy("llama"), toy("llama", seed=1)
    mk = write(
        tmp_path / "mk.yml",
        f"""\
merge_method: ties
base_model: {a}
models:
  - model: {a}
  - model: {b}
    parameters:
      density: 1.7
parameters:
  lambda: fast
""",
    )
    res = cli("validate", str(mk), "--recipe-only")
    assert res.returncode == 2, res.stderr
    assert f"{mk}:9:" in res.stderr and "lambda" in res.stderr  # the mergekit file's own lines
    assert f"{mk}:7:" in res.stderr and "density" in res.stderr
