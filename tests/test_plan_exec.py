"""Planning checks and execution: ordering, freeing, prefetch, determinism."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from mergeflow.errors import MemoryBudgetError, MissingTensor, ShapeMismatch, UnsupportedArchitecture
from mergeflow.graph import run as runner
from mergeflow.graph.executor import schedule
from mergeflow.graph.plan import build_plan
from mergeflow.graph.tasks import Load, Merge, Write
from mergeflow.io.reader import ModelReader
from mergeflow.merge.catalog import OPERATORS
from mergeflow.recipe.validate import load_recipe
from tests.conftest import write


def plan_for(tmp_path, models: dict, merge="linear", extra="", max_memory=None):
    lines = "\n".join(f"  {k}: {v}" for k, v in models.items())
    rec = write(tmp_path / "r.yml", f"models:\n{lines}\nmerge: {merge}\n{extra}")
    r = load_recipe(rec, OPERATORS)
    readers = {n: ModelReader(n, e.path) for n, e in r.models.items()}
    return build_plan(r, readers, OPERATORS, max_memory=max_memory)


def test_plan_follows_reference_storage_order(tmp_path, toy):
    a = toy("llama")
    p = plan_for(tmp_path, {"a": a, "b": toy("llama", seed=1)})
    names = [w.out.name for w in p.writes]
    assert names == list(ModelReader("a", a).tensors)
    assert p.bytes_read == 2 * p.bytes_written
    assert p.ops_used == {"linear": len(names)}


def test_shared_loads_are_scheduled_once_and_before_use():
    x = Load("a", "t", 4, 16, True)
    m1 = Merge("o1", "passthrough", OPERATORS["passthrough"].params(), (), ("a",), (x,), None)
    m2 = Merge("o2", "passthrough", OPERATORS["passthrough"].params(), (), ("a",), (x,), None)
    from mergeflow.io.writer import OutTensor

    order = schedule([Write(OutTensor("o1", "F32", (4,)), m1), Write(OutTensor("o2", "F32", (4,)), m2)])
    assert order.count(x) == 1 and order.index(x) < order.index(m1) < order.index(m2)


def test_mismatches_are_named(tmp_path, toy):
    with pytest.raises(UnsupportedArchitecture, match="a is llama, b is gpt2"):
        plan_for(tmp_path, {"a": toy("llama"), "b": toy("gpt2")})
    d = tmp_path / "small"
    d.mkdir()
    sd = {
        k: v.clone() for f in sorted(toy("llama").glob("*.safetensors")) for k, v in load_file(str(f)).items()
    }
    sd_missing = dict(sd)
    sd_missing.pop("model.norm.weight")
    save_file(sd_missing, str(d / "model.safetensors"))
    with pytest.raises(MissingTensor, match="model 'b' .* lacks tensor 'model.norm.weight'"):
        plan_for(tmp_path, {"a": toy("llama"), "b": d})
    sd_shape = dict(sd)
    sd_shape["model.norm.weight"] = torch.ones(7)
    save_file(sd_shape, str(d / "model.safetensors"))
    with pytest.raises(ShapeMismatch, match=r"'model.norm.weight': shape \[7\] in model 'b'"):
        plan_for(tmp_path, {"a": toy("llama"), "b": d})


def test_memory_budget_too_small_is_an_input_error(tmp_path, toy):
    with pytest.raises(MemoryBudgetError, match="raise --max-memory"):
        plan_for(tmp_path, {"a": toy("llama"), "b": toy("llama", seed=1)}, max_memory=1000)


def test_integer_buffers_are_copied_not_averaged(tmp_path):
    for i, name in enumerate("ab"):
        save_file(
            {"w": torch.full((3,), float(i)), "ids": torch.arange(3) + 10 * i},
            str(tmp_path / f"{name}.safetensors"),
        )
    out = tmp_path / "out"
    rec = write(tmp_path / "r.yml", "models: {a: a.safetensors, b: b.safetensors}\nmerge: linear\n")
    opts = runner.Options(device="cpu")
    runner.run(runner.prepare(rec, opts), out, opts)
    got = load_file(str(out / "model.safetensors"))
    assert torch.equal(got["ids"], torch.arange(3)) and torch.equal(got["w"], torch.full((3,), 0.5))


@pytest.mark.parametrize("prefetch", [True, False])
def test_output_is_byte_identical_across_runs_and_prefetch(tmp_path, demo_tree, prefetch):
    outs = []
    for k in range(2):
        out = tmp_path / f"o{k}"
        opts = runner.Options(device="cpu", prefetch=prefetch if k else not prefetch, max_memory=200_000)
        runner.run(runner.prepare(demo_tree / "recipes" / "llama-dare.yml", opts), out, opts)
        outs.append({f.name: f.read_bytes() for f in sorted(out.iterdir()) if f.name != "README.md"})
    assert outs[0] == outs[1]


def test_failed_run_leaves_nothing(tmp_path, toy, monkeypatch):
    from mergeflow.merge import linear

    rec = write(
        tmp_path / "r.yml", f"models: {{a: {toy('llama')}, b: {toy('llama', seed=1)}}}\nmerge: linear\n"
    )
    opts = runner.Options(device="cpu")
    prep = runner.prepare(rec, opts)

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(linear, "weighted_sum", boom)
    with pytest.raises(RuntimeError, match="boom"):
        runner.run(prep, tmp_path / "out", opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


def test_row_blocks_cover_the_tensor():
    from mergeflow.graph.plan import row_blocks

    assert row_blocks((10, 4), 100) == [None]
    assert row_blocks((10, 4), 8) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    assert row_blocks((10, 4), 3) == [(i, i + 1) for i in range(10)]
    assert row_blocks((1000,), 300) == [(0, 300), (300, 600), (600, 900), (900, 1000)]
    assert row_blocks((), 0) == [None]


@pytest.mark.parametrize(
    "recipe_name", ["llama-linear.yml", "llama-task-arithmetic.yml", "llama-dare.yml", "llama-ties.yml"]
)
def test_row_blocks_give_the_same_bytes(tmp_path, demo_tree, recipe_name, monkeypatch):
    """Elementwise operators run large tensors in row blocks; the output must not change."""
    import mergeflow.graph.plan as plan_mod

    outs = []
    for k, chunk in enumerate([plan_mod.CHUNK_ELEMS, 100]):
        monkeypatch.setattr(plan_mod, "CHUNK_ELEMS", chunk)
        defaults = list(plan_mod.build_plan.__defaults__)
        defaults[1] = chunk  # (max_memory, chunk_elems, anchor_name, stats)
        monkeypatch.setattr(plan_mod.build_plan, "__defaults__", tuple(defaults))
        opts = runner.Options(device="cpu")
        prep = runner.prepare(demo_tree / "recipes" / recipe_name, opts)
        blocked = sum(w.rows is not None for w in prep.plan.writes)
        assert (blocked > 0) == (k == 1)  # (the ties recipe passes its embeddings through)
        runner.run(prep, tmp_path / f"o{k}", opts)
        outs.append(
            {f.name: f.read_bytes() for f in sorted((tmp_path / f"o{k}").iterdir()) if f.name != "README.md"}
        )
    if recipe_name == "llama-dare.yml":
        assert outs[0].keys() == outs[1].keys()  # random masks are drawn per block: same layout, other draws
    else:
        assert outs[0] == outs[1]
