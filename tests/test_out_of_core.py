"""eval and stats on models larger than their memory budget (--max-memory): placed by accelerate, part of
the weights read from the files at each forward pass; the numbers are those of the in-memory path."""

from __future__ import annotations

import weakref

import pytest
import torch

from mergeflow import api
from mergeflow.errors import InputError
from mergeflow.eval.loss import evaluate
from mergeflow.stats.compute import compute_stats
from mergeflow.stats.data import load_data
from mergeflow.stats.model import load_model, weight_bytes
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write

TEXT = "the quick brown fox\njumps over the lazy dog\nhello world, merge me!\nalign then merge\n" * 3
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(toy, tmp_path_factory):
    root = tmp_path_factory.mktemp("ooc")
    a = toy("llama")
    budget = weight_bytes(a) // 3  # a third of the model's float32 weights
    return root, a, write(root / "d.txt", TEXT), budget


def test_a_model_over_the_budget_is_placed_and_gives_the_same_loss(setup):
    _root, a, data, budget = setup
    whole = load_model(a, CPU)
    placed = load_model(a, CPU, max_memory=budget)
    assert placed.offloaded and not whole.offloaded
    assert any(p.is_meta for p in placed.model.parameters())  # part of it stayed on disk
    ds = load_data(data)
    got, want = evaluate(placed, ds), evaluate(whole, ds)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-6, abs=1e-7)
    assert not load_model(a, CPU, max_memory=10 * weight_bytes(a)).offloaded  # fits: loaded whole


def test_gram_statistics_under_a_budget_equal_the_in_memory_ones(setup):
    root, a, data, budget = setup
    placed = compute_stats(a, data, "gram", root / "placed.safetensors", CPU, max_memory=budget)
    whole = compute_stats(a, data, "gram", root / "whole.safetensors", CPU)
    assert placed["offloaded"] and not whole["offloaded"]
    from safetensors.torch import load_file

    got, want = load_file(root / "placed.safetensors"), load_file(root / "whole.safetensors")
    assert set(got) == set(want) and got
    for name, t in want.items():
        torch.testing.assert_close(got[name], t, rtol=1e-5, atol=1e-6)


def test_fisher_under_a_smaller_budget_says_what_it_needs(setup):
    root, a, data, budget = setup
    with pytest.raises(InputError, match=r"gradients in memory.*--max-memory"):
        compute_stats(a, data, "fisher", root / "f.safetensors", CPU, max_memory=budget)
    assert not (root / "f.safetensors").exists()


def test_grams_larger_than_the_free_memory_take_several_passes_and_give_the_same_file(setup, monkeypatch):
    """A 7B model's Grams are about 39 GB: where they do not fit, the layers are split into groups (one pass
    over the data each), each written as its pass ends; the file equals the one-pass file exactly. A layer
    whose Gram alone does not fit is refused before any forward pass."""
    import weakref

    from safetensors import safe_open

    from mergeflow.stats import compute, gram, gram_passes

    root, a, data, _budget = setup
    model = load_model(a, CPU, headless=True).model
    widths = [m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    one = compute_stats(a, data, "gram", root / "one.safetensors", CPU)
    free = 2 * 4 * (2 * max(widths) ** 2)  # about two of the largest Grams per group
    monkeypatch.setattr(gram, "available_bytes", lambda device: (free, "this machine's available memory"))
    events: list[str] = []  # each group written, and freed, before the next pass runs
    written: list[weakref.ref] = []
    real_gram, real_write = gram.gram, gram_passes.write_groups

    def logged_gram(*args):
        events.append("pass")
        assert all(ref() is None for ref in written), "an earlier group's Grams are still held"
        return real_gram(*args)

    def logged_write(path, shapes, chunks, meta):
        def seen():
            for chunk in chunks:
                events.append("write")
                written.extend(weakref.ref(t) for t in chunk.values())
                yield chunk
                del chunk

        return real_write(path, shapes, seen(), meta)

    monkeypatch.setattr(gram, "gram", logged_gram)
    monkeypatch.setattr(compute, "write_groups", logged_write)
    many = compute_stats(a, data, "gram", root / "many.safetensors", CPU)
    assert events == ["pass", "write"] * many["passes"] and written
    assert many["passes"] > 2 and one["passes"] == 1 and many["tensors"] == one["tensors"]
    with safe_open(root / "one.safetensors", "pt") as h1, safe_open(root / "many.safetensors", "pt") as h2:
        assert h1.metadata() == {**h2.metadata(), "model": h1.metadata()["model"]}
        assert set(h1.keys()) == set(h2.keys())
        for k in h1.keys():  # noqa: SIM118
            assert torch.equal(h1.get_tensor(k), h2.get_tensor(k)), k
    monkeypatch.setattr(
        gram, "available_bytes", lambda device: (4 * max(widths) ** 2, "this machine's memory")
    )
    monkeypatch.setattr(gram, "gram", lambda *a: pytest.fail("forward passes ran"))
    with pytest.raises(InputError, match=r"alone is \d+ MiB, more than half of this machine's memory"):
        compute_stats(a, data, "gram", root / "g2.safetensors", CPU)
    assert not (root / "g2.safetensors").exists()


def test_barrier_under_a_budget_gives_the_in_memory_curves(setup, tmp_path):
    root, a, data, budget = setup
    b = scramble_model(a, tmp_path / "scrambled", seed=4)
    steps = [{"permute": {"heads": True}}, {"rotate": {}}]
    ds = str(data)
    placed = api.barrier(a, b, ds, steps, points=3, device="cpu", max_memory=budget)
    whole = api.barrier(a, b, ds, steps, points=3, device="cpu")
    assert set(placed["variants"]) == {"naive", "+permute", "+rotate"}
    for name, v in whole["variants"].items():
        for p, q in zip(placed["variants"][name]["points"], v["points"], strict=True):
            assert p["lambda"] == q["lambda"]
            assert p["loss"] == pytest.approx(q["loss"], rel=1e-5, abs=1e-6), (name, p, q)
    assert placed["variants"]["naive"]["barrier"] > 0.01  # a real curve, not a flat one


def test_cli_equivalence_and_stats_take_the_weights_budget(setup):
    root, a, data, _budget = setup
    res = cli(
        "eval", "equivalence", str(a), str(a), "--data", str(data), "--device", "cpu", "--max-memory", "1MiB"
    )
    assert res.returncode == 0 and "equivalent" in res.stdout, res.stderr
    res = cli(
        "stats", str(a), "--data", str(data), "--kind", "gram", "-o", str(root / "g.safetensors"),
        "--max-memory", "1KB", "--device", "cpu",
    )  # fmt: skip
    assert res.returncode == 2 and "--max-memory" in res.stderr and "Traceback" not in res.stderr
    assert not (root / "g.safetensors").exists()


@pytest.mark.parametrize(
    "step,what",
    [
        (
            "{permute: {residual: true}}, {refine: {data: DATA, steps: 2, mode: whole}}",
            "refine (it holds both models whole",
        ),
        (  # auto: layered, as the whole mode does not fit; nor does it
            "{permute: {residual: true}}, {refine: {data: DATA, steps: 2}}",
            "refine (mode: layered: both models in float32",
        ),
        ("{permute: {method: activations, data: DATA}}", "activation matching (it runs both models whole"),
    ],
)
def test_whole_model_steps_over_the_budget_say_what_they_need(tmp_path, step, what):
    """A 9.8 M-parameter Llama: refine (about 40 bytes per parameter) and activation matching (8) over a
    64 MiB budget are refused before anything is read or written, with the size they need."""
    from mergeflow.testing.models import build

    cfg = {"hidden_size": 256, "intermediate_size": 688, "vocab_size": 16000, "num_hidden_layers": 2}
    cfg |= {"num_attention_heads": 4, "num_key_value_heads": 4}
    a = build("llama", tmp_path / "a", seed=0, shard_size="50MB", config=cfg)
    b = build("llama", tmp_path / "b", seed=1, shard_size="50MB", config=cfg)
    data = write(tmp_path / "d.txt", TEXT)
    rec = write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}}}\nanchor: a\nalign: [{step.replace('DATA', str(data))}]\nmerge: linear\n",
    )
    res = cli("run", str(rec), str(tmp_path / "out"), "--max-memory", "64MiB", "--device", "cpu")
    assert res.returncode == 2 and what in res.stderr and "--max-memory to at least" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "out").exists()


def launch_two(script, timeout: int = 300):
    """``script`` started by ``torchrun --standalone --nproc_per_node 2`` (a free port of its own)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(script)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


@pytest.mark.slow
def test_statistics_of_two_processes_equal_those_of_one(tmp_path, digits_finetunes):
    """`mergeflow stats` started by `torchrun --nproc_per_node 2`: each process takes half the examples, the
    sums are added up with accelerate's collectives (gloo on CPUs) and the first process writes the file: the
    same statistics as one process (Fisher of a classifier is exact, so both kinds are deterministic). One
    launch runs the command for both kinds (the processes' start-up is most of the time). The launch exits 0:
    before the processes met at a barrier at exit, one in six died of SIGABRT after a correct result."""
    from pathlib import Path

    from safetensors.torch import load_file

    from mergeflow.testing import train as tt

    x, y = tt.digits("train")
    tt.save_npz(tmp_path / "d.npz", x[:37], y[:37])  # odd: the halves differ in size
    model = digits_finetunes / "a"

    def args(kind: str, out: Path) -> list[str]:
        data = str(tmp_path / "d.npz")
        return ["stats", str(model), "--data", data, "--kind", kind, "--device", "cpu", "-q", "-o", str(out)]

    script = tmp_path / "both.py"
    script.write_text(  # the processes see different free memory: the first alone would take several passes
        "import os, sys\nfrom mergeflow.cli.main import main\nfrom mergeflow.stats import gram\n"
        "free = (128 << 10) if os.environ['RANK'] == '0' else (1 << 30)\n"
        "gram.available_bytes = lambda device: (free, 'memory')\n"
        f"for argv in {[args(k, tmp_path / f'two-{k}.safetensors') for k in ('gram', 'fisher')]!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit as exc:\n        if exc.code:\n            raise\n"
    )
    res = launch_two(script)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    for kind in ("gram", "fisher"):
        one = tmp_path / f"one-{kind}.safetensors"
        assert cli(*args(kind, one)).returncode == 0
        got, want = load_file(tmp_path / f"two-{kind}.safetensors"), load_file(one)
        assert set(got) == set(want) and want
        for name, t in want.items():
            torch.testing.assert_close(got[name], t, rtol=1e-4, atol=1e-6, msg=f"{kind} {name}")


@pytest.mark.slow
def test_a_process_that_fails_does_not_hang_the_launch(tmp_path, digits_finetunes):
    """The first process's data file is missing: it says so and exits 2 while the second waits in a
    collective; the launch ends promptly and non-zero, no file written (a process that failed skips the
    meeting at exit: with it, the launch hung until the collective's 30-minute timeout)."""
    from mergeflow.testing import train as tt

    x, y = tt.digits("train")
    tt.save_npz(tmp_path / "d.npz", x[:20], y[:20])
    out = tmp_path / "s.safetensors"
    script = tmp_path / "bad.py"
    script.write_text(
        "import os\nfrom mergeflow.cli.main import main\n"
        f"data = {str(tmp_path / 'd.npz')!r} if os.environ['RANK'] == '1' else {str(tmp_path / 'no.npz')!r}\n"
        f"main(['stats', {str(digits_finetunes / 'a')!r}, '--data', data, '--kind', 'gram', '--device', 'cpu', "
        f"'-q', '-o', {str(out)!r}])\n"
    )
    res = launch_two(script, timeout=150)  # seconds: it takes under 10
    assert res.returncode != 0 and "no.npz does not exist" in res.stderr, res.stderr[-3000:]
    assert not out.exists()


@pytest.mark.slow
def test_evaluation_by_two_processes_equals_one(tmp_path, trio, digits_finetunes):
    """`eval tasks` (a sequence and a token classifier: summed losses and counts, gathered entity spans),
    `eval barrier --align default` (a ViT pair) and `eval barrier` of a Llama larger than --max-memory (its
    inner point written to disk) started by `torchrun --nproc_per_node 2`, each process scoring half the
    examples: the first process writes the same reports as one process. The aligned copies and the point are
    written once, by the first process (both are on this machine), and read by both."""
    import json

    from mergeflow.testing.models import build

    cfg = {"hidden_size": 256, "intermediate_size": 688, "vocab_size": 16000, "num_hidden_layers": 2}
    llama = build("llama", tmp_path / "llama", seed=0, shard_size="50MB", config=cfg)  # 39 MB in float32
    text = write(tmp_path / "t.txt", TEXT)

    base, sent, ner = trio
    words = [["ann", "lives", "in", "paris"], ["bob", "went", "to", "rome"], ["nice", "day"]] * 3
    tags = [[1, 0, 0, 3], [1, 0, 0, 3], [0, 0]] * 3
    ner_data = tmp_path / "ner.jsonl"
    ner_data.write_text(
        "".join(json.dumps({"tokens": w, "tags": t}) + "\n" for w, t in zip(words, tags, strict=True))
    )
    sent_data = tmp_path / "sent.jsonl"
    sent_data.write_text(
        "".join(json.dumps({"text": " ".join(w), "label": i % 3}) + "\n" for i, w in enumerate(words))
    )
    from mergeflow.testing import train as tt

    x, y = tt.digits("test")
    tt.save_npz(tmp_path / "d.npz", x[:45], y[:45])  # odd: the halves differ in size

    def args(tag: str) -> list[list[str]]:
        tasks = [
            "eval",
            "tasks",
            str(base),
            "--task",
            f"sent={sent}:{sent_data}",
            "--task",
            f"ner={ner}:{ner_data}",
        ]
        barrier = ["eval", "barrier", str(digits_finetunes / "a"), str(digits_finetunes / "b"), "--data"]
        barrier += [str(tmp_path / "d.npz"), "--align", "default", "--points", "3", "-q"]
        scrambled = scramble_model(llama, tmp_path / f"b-{tag}", seed=9)  # the same function
        placed = ["eval", "barrier", str(llama), str(scrambled)]
        placed += ["--data", str(text), "--points", "3", "--max-memory", "16MiB", "-q"]
        return [
            ["eval", "equivalence", str(llama), str(scrambled), "--data", str(text), "--device", "cpu"],
            tasks + ["--device", "cpu", "--json", str(tmp_path / f"{tag}-tasks.json")],
            barrier + ["--device", "cpu", "-o", str(tmp_path / f"{tag}-barrier")],
            placed + ["--device", "cpu", "-o", str(tmp_path / f"{tag}-placed")],
        ]

    from mergeflow.eval.tasks import eval_tasks
    from mergeflow.stats.model import weight_bytes

    placed_task, budget = [("ner", str(ner), str(ner_data))], weight_bytes(ner) // 3
    script = tmp_path / "both.py"
    script.write_text(  # each process notes the temporary models it writes
        "import os\nfrom mergeflow.cli.main import main\nfrom mergeflow.eval import barrier\n"
        "def noted(f):\n    def g(*a, **k):\n"
        f"        with open({str(tmp_path / 'made.txt')!r}, 'a') as fh:\n"
        "            fh.write(os.environ['RANK'] + ' ' + f.__name__ + '\\n')\n"
        "        return f(*a, **k)\n    return g\n"
        "barrier.aligned_copy, barrier.interpolated = noted(barrier.aligned_copy), noted(barrier.interpolated)\n"
        "from mergeflow.eval import tasks\ntasks._grafted_copy = noted(tasks._grafted_copy)\n"
        f"for argv in {args('two')!r}:\n"
        "    try:\n        main(argv)\n    except SystemExit as exc:\n        if exc.code:\n            raise\n"
        "import json, torch\n"  # a task model placed under a budget below the CLI's floor: its grafted copy
        f"r = tasks.eval_tasks({str(base)!r}, {placed_task!r}, torch.device('cpu'), max_memory={budget})\n"
        f"if os.environ['RANK'] == '0':\n    open({str(tmp_path / 'two-placed-tasks.json')!r}, 'w').write(json.dumps(r))\n"
    )
    res = launch_two(script)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    lines = res.stdout.splitlines()  # equivalence: the largest differences of both halves, said once
    assert lines.count("equivalent") == 1 and sum("max |logits difference|" in x for x in lines) == 1, lines
    for argv in args("one"):
        assert cli(*argv).returncode == 0
    two, one = (json.loads((tmp_path / f"{t}-tasks.json").read_text()) for t in ("two", "one"))
    assert two["processes"] == 2 and one["processes"] == 1
    for name in ("sent", "ner"):
        for side in ("fine_tuned", "merged"):
            assert two["tasks"][name][side] == pytest.approx(one["tasks"][name][side], rel=1e-5), (name, side)
    assert "entity_f1" in one["tasks"]["ner"]["merged"]
    two, one = (json.loads((tmp_path / f"{t}-barrier.json").read_text()) for t in ("two", "one"))
    assert list(two["variants"]) == list(one["variants"]) == ["naive", "+permute", "+rotate", "+rescale"]
    for name, v in one["variants"].items():
        for p, q in zip(two["variants"][name]["points"], v["points"], strict=True):
            assert p == pytest.approx(q, rel=1e-5), name
    two, one = (json.loads((tmp_path / f"{t}-placed.json").read_text()) for t in ("two", "one"))
    for p, q in zip(two["variants"]["naive"]["points"], one["variants"]["naive"]["points"], strict=True):
        assert p == pytest.approx(q, rel=1e-5)
    made = (tmp_path / "made.txt").read_text().split()
    assert sorted(set(made[0::2])) == ["0"], made
    assert made[1::2] == ["aligned_copy"] * 3 + ["interpolated", "_grafted_copy"], made
    two = json.loads((tmp_path / "two-placed-tasks.json").read_text())["tasks"]["ner"]
    one = eval_tasks(base, placed_task, CPU, max_memory=budget)["tasks"]["ner"]
    assert two["placed"] and one["placed"]
    assert two["merged"] == pytest.approx(one["merged"], rel=1e-5) and two["merged"] != two["fine_tuned"]


def test_statistics_files_written_a_tensor_at_a_time_read_back_exactly(tmp_path):
    """The streaming writer (no in-memory copy of the file): any shape, 0-d, empty and transposed tensors,
    bf16 converted to float32; metadata as safetensors writes it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from mergeflow.io.stats_file import stats_info, write_stats

    t = {
        "a.weight": torch.randn(3, 4),
        "b": torch.randn(5, dtype=torch.bfloat16),
        "c": torch.zeros(0, 2),
        "d": torch.tensor(2.5),
        "e": torch.randn(4, 3).T,
    }
    path = write_stats(tmp_path / "s.safetensors", t, "gram", 7, "m", {"a.weight"}, {"tokens": 9})
    got = load_file(path)
    assert set(got) == set(t)
    for k, v in t.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v.float()), k
    info = stats_info(path, "s")
    assert info.kind == "gram" and info.examples == 7 and info.transposed == {"a.weight"}
    mean = sum(float(v.double().sum()) for v in t.values()) / sum(v.numel() for v in t.values())
    assert info.mean == pytest.approx(mean, rel=1e-12)
    with safe_open(str(path), "pt") as h:
        assert h.metadata()["tokens"] == "9" and h.metadata()["format"] == "pt"


def test_barrier_temporary_models_go_under_scratch_and_are_deleted_per_variant(setup, tmp_path, monkeypatch):
    """Aligned copies and points are written under --scratch, each variant's deleted before the next is made,
    and the folder the command made is gone after; the user's own files there are untouched."""
    from mergeflow.eval import barrier as barrier_mod

    _root, a, data, budget = setup
    b = scramble_model(a, tmp_path / "scrambled", seed=5)
    scratch = tmp_path / "scratch"
    mine = write(scratch / "mine.txt", "a user's file")
    seen: list[list[str]] = []
    real_copy = barrier_mod.aligned_copy

    def copy(a_dir, b_dir, steps, work, device, keep="model"):
        tmp = work.parent
        assert tmp.parent == scratch  # the command's own folder, under --scratch
        seen.append(sorted(p.name for p in tmp.iterdir()))
        return real_copy(a_dir, b_dir, steps, work, device, keep)

    monkeypatch.setattr(barrier_mod, "aligned_copy", copy)
    real_point, points = barrier_mod.interpolated, []
    real_load, models = barrier_mod.load_model, []

    def load(*args, **kw):
        loaded = real_load(*args, **kw)
        models.append(weakref.ref(loaded.model))
        return loaded

    def point(a_dir, b_dir, lam, work, *rest):
        assert not (work / "point").exists()  # the previous point is gone: one on disk at a time
        # and so is every model loaded before (reference cycles collected): the merge runs beside none of them
        assert models and all(ref() is None for ref in models)
        points.append(lam)
        return real_point(a_dir, b_dir, lam, work, *rest)

    monkeypatch.setattr(barrier_mod, "interpolated", point)
    monkeypatch.setattr(barrier_mod, "load_model", load)
    steps = [{"permute": {"heads": True}}, {"rotate": {}}]
    report = api.barrier(a, b, str(data), steps, points=4, device="cpu", max_memory=budget, scratch=scratch)
    assert set(report["variants"]) == {"naive", "+permute", "+rotate"}
    assert len(points) == 3 * 2  # two inner points per curve
    # when +rotate's copy is made, +permute's folder is already gone
    assert seen == [["check"], ["check"]]
    assert [p.name for p in scratch.iterdir()] == ["mine.txt"] and mine.read_text() == "a user's file"


def test_barrier_refuses_a_scratch_disk_without_room_before_writing(setup, tmp_path, monkeypatch):
    from mergeflow.io import scratch as scratch_mod

    _root, a, data, _budget = setup
    b = scramble_model(a, tmp_path / "scrambled", seed=6)
    monkeypatch.setattr(scratch_mod, "nearest_free", lambda path: 1000)
    out = tmp_path / "bar"
    res = cli(
        "eval", "barrier", str(a), str(b), "--data", str(data), "--align", "default", "--points", "3",
        "--device", "cpu", "-o", str(out), "--scratch", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert "eval barrier needs" in res.stderr and "--scratch DIR" in res.stderr
    assert not list(tmp_path.glob("bar.*")) and not list(tmp_path.glob("mergeflow-barrier-*"))
    res = cli(
        "eval", "barrier", str(a), str(b), "--data", str(data), "--device", "cpu", "-o", str(out),
        "--scratch", str(tmp_path / "nowhere"),
    )  # fmt: skip
    assert res.returncode == 2 and "--scratch" in res.stderr and "not an existing folder" in res.stderr


def test_processes_sharing_a_machine_are_checked_for_their_scratch_together(setup, tmp_path, monkeypatch):
    """A launch over several machines (4 processes, 2 on this one): each process makes its own aligned copy, so
    the two here need twice the temporary disk, and the refusal says so (room for one copy only). (All on one
    machine, the first process makes the copies for all: the two-process test.)"""
    from mergeflow.eval import barrier as barrier_mod
    from mergeflow.io import scratch as scratch_mod
    from mergeflow.stats.model import stored_bytes
    from mergeflow.stats.parallel import Group

    class TwoOnHost(Group):
        sharing_host = 2  # type: ignore[assignment]

    _root, a, data, _budget = setup
    b = scramble_model(a, tmp_path / "scrambled", seed=7)
    monkeypatch.setattr(barrier_mod, "process_group", lambda device: TwoOnHost(0, 4, CPU))
    monkeypatch.setattr(scratch_mod, "nearest_free", lambda path: int(stored_bytes(b) * 1.5))
    res = cli(
        "eval", "barrier", str(a), str(b), "--data", str(data), "--align", "default", "--points", "3",
        "--device", "cpu", "-o", str(tmp_path / "bar"), "--scratch", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 2 and "(2 processes on this machine) needs" in res.stderr, res.stderr
    monkeypatch.setattr(barrier_mod, "process_group", lambda device: Group(0, 1, CPU))
    res = cli(
        "eval", "barrier", str(a), str(b), "--data", str(data), "--align", "default", "--points", "3",
        "--device", "cpu", "-o", str(tmp_path / "bar"), "--scratch", str(tmp_path), "-q",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_a_model_made_once_for_the_machine_fails_in_every_process():
    """Group.made_once: the first process's failure is handed to the others as a one-line error naming it;
    a process on another machine (not all on one host) makes its own."""
    from mergeflow.stats.parallel import Group

    sent: list[object] = []

    class Fake(Group):
        sharing_host = 2  # type: ignore[assignment]

        def gather(self, value):
            sent.append(value)
            return [("failed", "no space left on /scratch"), value]

    def boom():
        raise OSError("no space left on /scratch")

    with pytest.raises(OSError):
        Fake(0, 2, CPU).made_once(boom, "eval barrier's point")
    assert sent == [("failed", "no space left on /scratch")]
    with pytest.raises(InputError, match="eval barrier's point: the first process failed .no space left"):
        Fake(1, 2, CPU).made_once(boom, "eval barrier's point")
    assert Group(0, 1, CPU).made_once(lambda: "here", "x") == "here"
