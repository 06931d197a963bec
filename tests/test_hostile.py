"""Hostile and broken input: every case of the corpus gives one clean error line, exit 2, no traceback,
and no output; fuzzing the header parser, index loader and recipe loader finds no other exception."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from mergeflow.errors import ModelError, RecipeError
from mergeflow.io.header import read_header
from mergeflow.io.reader import ModelReader
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import parse_yaml
from tests.helpers import clean_failure

CORPUS = Path(__file__).parent / "corpus" / "recipes"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("case", sorted(p.name for p in CORPUS.glob("*.yml")))
def test_recipe_corpus(tmp_path, toy, capsys, case):
    text = (CORPUS / case).read_text().replace("MODEL", str(toy("llama")))
    rec = tmp_path / case
    rec.write_text(text)
    clean_failure(capsys, ["run", str(rec), str(tmp_path / "out")], tmp_path / "out")


def _model_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _first_shard(d: Path) -> Path:
    return sorted(d.glob("model-*.safetensors"))[0]


def _raw_header(path: Path, header: bytes, data: bytes = b"", declared: int | None = None) -> None:
    path.write_bytes(struct.pack("<Q", len(header) if declared is None else declared) + header + data)


def _index(d: Path, weight_map: object) -> None:
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def _break(kind: str, good: Path, root: Path) -> tuple[list[str], str]:
    """Make a broken model of ``kind``; returns (extra CLI args, expected message fragment)."""
    bad = _model_copy(good, root / "bad")
    shard = _first_shard(bad)
    tensors = json.loads((bad / "model.safetensors.index.json").read_text())["weight_map"]
    one = next(n for n, f in tensors.items() if f == shard.name)
    if kind == "header-length-past-end":
        _raw_header(shard, b"{}", declared=1 << 40)
    elif kind == "header-not-json":
        _raw_header(shard, b"{this is not json")
    elif kind == "unknown-dtype":
        _raw_header(
            shard,
            json.dumps({one: {"dtype": "F128", "shape": [2], "data_offsets": [0, 32]}}).encode(),
            b"\0" * 32,
        )
    elif kind == "offsets-past-end":
        _raw_header(
            shard,
            json.dumps({one: {"dtype": "F32", "shape": [1 << 20], "data_offsets": [0, 4 << 20]}}).encode(),
            b"\0" * 64,
        )
    elif kind == "huge-declared-shape":
        _raw_header(
            shard,
            json.dumps({one: {"dtype": "F32", "shape": [1 << 31, 1 << 31], "data_offsets": [0, 8]}}).encode(),
            b"\0" * 8,
        )
    elif kind == "overlapping-ranges":
        h = {
            one: {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "x": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
        }
        _raw_header(shard, json.dumps(h).encode(), b"\0" * 12)
    elif kind == "truncated-shard":
        shard.write_bytes(shard.read_bytes()[:-7])
    elif kind == "index-escapes-directory":
        _index(bad, {one: "../outside.safetensors"})
        save_file({one: torch.zeros(1)}, str(root / "outside.safetensors"))
    elif kind == "index-absolute-path":
        _index(bad, {one: str(shard.resolve())})
    elif kind == "index-missing-file":
        _index(bad, {one: "model-99999-of-99999.safetensors"})
    elif kind == "index-not-json":
        (bad / "model.safetensors.index.json").write_text("{weight_map: nope")
    elif kind == "index-wrong-type":
        _index(bad, ["not", "a", "map"])
    elif kind == "symlink-escapes":
        outside = root / "elsewhere.safetensors"
        shutil.copyfile(shard, outside)
        shard.unlink()
        shard.symlink_to(outside)
    elif kind == "config-not-json":
        (bad / "config.json").write_text("{not json")
    elif kind == "pickle-only":
        shutil.rmtree(bad)
        bad.mkdir()
        torch.save({"w": torch.zeros(2)}, bad / "pytorch_model.bin")
    elif kind == "missing-tensor":
        h = json.loads(shard.read_bytes()[8 : 8 + struct.unpack("<Q", shard.read_bytes()[:8])[0]])
        from safetensors.torch import load_file

        sd = load_file(str(shard))
        sd.pop(one)
        save_file(sd, str(shard))
        _index(bad, {n: f for n, f in tensors.items() if n != one})
        del h
    elif kind == "shape-mismatch":
        from safetensors.torch import load_file

        sd = load_file(str(shard))
        sd[one] = torch.zeros(3, 5)
        save_file(sd, str(shard))
    else:
        raise AssertionError(kind)
    return [], ""


MODEL_CASES = [
    "header-length-past-end",
    "header-not-json",
    "unknown-dtype",
    "offsets-past-end",
    "huge-declared-shape",
    "overlapping-ranges",
    "truncated-shard",
    "index-escapes-directory",
    "index-absolute-path",
    "index-missing-file",
    "index-not-json",
    "index-wrong-type",
    "symlink-escapes",
    "config-not-json",
    "pickle-only",
    "missing-tensor",
    "shape-mismatch",
]


@pytest.mark.parametrize("kind", MODEL_CASES)
def test_model_corpus(tmp_path, toy, capsys, kind):
    good = toy("llama")
    _break(kind, good, tmp_path)
    rec = tmp_path / "r.yml"
    rec.write_text(f"models: {{a: {good}, b: {tmp_path / 'bad'}}}\nmerge: linear\n")
    clean_failure(capsys, ["run", str(rec), str(tmp_path / "out")], tmp_path / "out")


def test_output_over_an_input_and_existing_output_are_refused(tmp_path, toy, capsys):
    good = toy("llama")
    rec = tmp_path / "r.yml"
    rec.write_text(f"models: {{a: {good}, b: {good}}}\nmerge: linear\n")
    assert "overlaps input" in clean_failure(capsys, ["run", str(rec), str(good), "--force"])
    assert "overlaps input" in clean_failure(capsys, ["run", str(rec), str(good.parent), "--force"])
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "x").write_text("")
    assert "not written by mergeflow" in clean_failure(capsys, ["run", str(rec), str(tmp_path / "exists")])


# ---------------------------------------------------------------------------------------------- fuzzing
JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=12),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)
ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "dtype": st.sampled_from(["F32", "F16", "BF16", "I64", "BOOL", "F99", "", 3]),
        "shape": st.lists(st.integers(-3, 2**33), max_size=4) | JSONISH,
        "data_offsets": st.lists(st.integers(-10, 2**40), min_size=0, max_size=3) | JSONISH,
    },
)


@FUZZ
@given(
    entries=st.dictionaries(st.text(max_size=6), ENTRY | JSONISH, max_size=4),
    data=st.binary(max_size=64),
    lie=st.none() | st.integers(0, 2**64 - 1),
)
def test_fuzz_safetensors_header(tmp_path, entries, data, lie):
    p = tmp_path / "f.safetensors"
    raw = json.dumps(entries).encode()
    p.write_bytes(struct.pack("<Q", len(raw) if lie is None else lie) + raw + data)
    with contextlib.suppress(ModelError):
        read_header(p)


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_safetensors_bytes(tmp_path, raw):
    p = tmp_path / "f.safetensors"
    p.write_bytes(raw)
    with contextlib.suppress(ModelError):
        read_header(p)


@FUZZ
@given(weight_map=JSONISH)
def test_fuzz_index(tmp_path, weight_map):
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(d / "a.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with contextlib.suppress(ModelError):
        ModelReader("m", d)


@FUZZ
@given(
    data=st.dictionaries(
        st.sampled_from(
            [
                "models",
                "merge",
                "base",
                "anchor",
                "align",
                "overrides",
                "dtype",
                "out_dtype",
                "seed",
                "output",
                "junk",
            ]
        ),
        JSONISH,
        max_size=6,
    )
)
def test_fuzz_recipe_structure(data):
    with contextlib.suppress(RecipeError):
        validate(parse_yaml(yaml.safe_dump(data), "r.yml"), OPERATORS, check_paths=False)


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_recipe_text(text):
    with contextlib.suppress(RecipeError):
        validate(parse_yaml(text, "r.yml"), OPERATORS, check_paths=False)
