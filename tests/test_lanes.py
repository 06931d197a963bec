"""Alignment on several lanes (`--device cuda:0,cuda:1`; on this CPU-only machine the same code with
`cpu,cpu`): layers are aligned a few at a time in threads, with the same output, report and errors as one
device; the order that brings them together stays topological; the budget caps the lanes."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mergeflow.errors import InputError
from mergeflow.graph import align_tasks
from mergeflow.graph import run as runner
from mergeflow.graph.options import resolve_device, resolve_devices
from mergeflow.graph.order import hoist, schedule
from mergeflow.testing.scramble import scramble_model
from tests.conftest import cli, write
from tests.helpers import clean_failure, state, text_data

STEPS = "{permute: {heads: true, ffn: true}}, {rotate: {qk: true, vo: true}}, {rescale: {}}]"
STREAM = {
    "llama": ("orthogonal", "[{orthogonal: {residual: true}}, "),
    "gpt2": ("permutation", "[{permute: {residual: true}}, "),
}


def three(tmp_path, toy, family="llama"):
    """A recipe merging an anchor with two scrambled copies of a random model, all three aligned (``family``
    "llama-activations": permutations matched on activations, a whole-model task the layers wait for)."""
    family, _, how = family.partition("-")
    a = toy(family, seed=3)
    residual, first = STREAM[family]
    b = scramble_model(a, tmp_path / "b", seed=5, heads_perm=True, residual=residual)
    c = scramble_model(toy(family, seed=4), tmp_path / "c", seed=6, heads_perm=True)
    steps = first + STEPS
    if how:
        data = text_data(tmp_path / "d.jsonl")
        steps = (
            f"[{{permute: {{residual: true, heads: true, ffn: true, method: activations, data: {data}}}}}, "
        )
        steps += STEPS.split("}}, ", 1)[1]
    return write(
        tmp_path / "r.yml",
        f"models: {{a: {a}, b: {b}, c: {c}}}\nanchor: a\nalign: {steps}\nmerge: {{linear: {{}}}}\n",
    )


def merged(rec, out, device, max_memory=None):
    opts = runner.Options(device=device, max_memory=max_memory)
    prep = runner.prepare(rec, opts)
    return prep, runner.run(prep, out, opts)


@pytest.mark.parametrize("family", ["llama", "gpt2", "llama-activations"])
def test_two_lanes_give_one_devices_output_and_report(tmp_path, toy, family, monkeypatch):
    """Every layer of both aligned models in a lane thread, two at a time; the merged tensors are bitwise
    those of one device, the alignment report's distances and counts equal."""
    rec = three(tmp_path, toy, family)
    _prep, one = merged(rec, tmp_path / "one", "cpu")
    seen: list[tuple[str, int]] = []
    busy, most = [0], [0]
    lock = threading.Lock()
    real = align_tasks.align_layer

    def watched(*args, **kw):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.05)  # long enough for the other lane to start beside it
        try:
            return real(*args, **kw)
        finally:
            with lock:
                busy[0] -= 1
                seen.append((threading.current_thread().name, args[1].index))

    monkeypatch.setattr(align_tasks, "align_layer", watched)
    prep, two = merged(rec, tmp_path / "two", "cpu,cpu")
    assert prep.lanes == (torch.device("cpu"), torch.device("cpu"))
    assert len(seen) == 2 * 3 and all(name.startswith("mergeflow-lane") for name, _ in seen)
    assert {name for name, _ in seen} == {"mergeflow-lane0", "mergeflow-lane1"}
    assert most[0] == 2
    sa, sb = state(one.out), state(two.out)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for key in ("totals", "counts", "layers"):
        assert one.alignment[key] == two.alignment[key]
    assert ("activations" in one.alignment) == ("activations" in family)
    timeless = [
        [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in x.alignment["residual"] + x.alignment.get("activations", [])
        ]
        for x in (one, two)
    ]
    assert timeless[0] == timeless[1]


def test_a_failure_in_a_lane_fails_the_run_cleanly(tmp_path, toy, capsys, monkeypatch):
    rec = three(tmp_path, toy)
    real = align_tasks.align_layer

    def failing(*args, **kw):
        if args[1].index == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kw)

    monkeypatch.setattr(align_tasks, "align_layer", failing)
    out = tmp_path / "out"
    err = clean_failure(capsys, ["run", str(rec), str(out), "--device", "cpu,cpu", "-q"], out, code=1)
    assert "ran out of memory" in err
    for lane in [t for t in threading.enumerate() if t.name.startswith("mergeflow-lane")]:
        lane.join(30)  # not waited for after a failure: each ends with the layer it was computing
        assert not lane.is_alive()


def test_the_budget_caps_the_lanes_and_plan_says_so(tmp_path, toy):
    rec = three(tmp_path, toy)
    prep = runner.prepare(rec, runner.Options(device="cpu,cpu,cpu"))
    assert len(prep.lanes) == 3
    peak = prep.plan.peak_task_bytes
    tight = 2 * peak * 4 // 3 + 1024  # tensors in flight get 3/4 of a budget: two layers' working sets
    assert runner.tensor_budget(tight) // peak == 2
    with pytest.warns(UserWarning, match=r"holds 2 layer\(s\)' alignment at once; using 2 of the 3"):
        prep = runner.prepare(rec, runner.Options(device="cpu,cpu,cpu", max_memory=tight))
    assert len(prep.lanes) == 2
    res = cli("plan", str(rec), "--device", "cpu,cpu")
    assert res.returncode == 0 and "lanes: layers aligned 2 at a time, one on each of cpu, cpu" in res.stdout
    merge_only = write(
        tmp_path / "m.yml",
        f"models: {{a: {toy('llama', seed=3)}, b: {toy('llama', seed=4)}}}\nmerge: {{linear: {{}}}}\n",
    )
    assert runner.prepare(merge_only, runner.Options(device="cpu,cpu")).lanes == ()  # nothing to align


class T:
    def __init__(self, name, deps=(), laned=False):
        self.name, self._deps, self.laned = name, tuple(deps), laned

    def deps(self):
        return self._deps

    def __repr__(self):
        return self.name


def test_hoisting_groups_laned_tasks_and_keeps_the_order_topological():
    """Per layer: reads, a laned alignment, a merge and a write; with two lanes each layer's reads and
    alignment come right after the previous layer's alignment, before its merge."""
    layers = []
    for i in range(5):
        load = T(f"load{i}")
        al = T(f"align{i}", [load], laned=True)
        layers.append(T(f"write{i}", [T(f"merge{i}", [al, T(f"anchor{i}")])]))
    order = schedule(layers)
    two = hoist(order, 2)
    assert sorted(map(repr, two)) == sorted(map(repr, order))
    at = {t: i for i, t in enumerate(two)}
    assert all(at[d] < at[t] for t in two for d in t.deps())
    names = [t.name for t in two]
    assert names.index("align1") == names.index("align0") + 2  # load1 between them
    assert names.index("align1") < names.index("merge0")
    # a sliding window: layer 2 is read and started once layer 0's result is written, while layer 1 runs
    assert names.index("write0") < names.index("load2") < names.index("align2") < names.index("merge1")
    assert hoist(order, 1) == order


def test_device_lists_are_checked():
    assert resolve_devices("cpu,cpu") == (torch.device("cpu"),) * 2
    assert resolve_devices("cpu") == (torch.device("cpu"),)
    for bad, why in [
        ("cpu,,cpu", "an empty name"),
        ("auto,cpu", "auto cannot"),
        ("cpu,tpu", "cpu,tpu: tpu not a device"),
    ]:
        with pytest.raises(InputError, match=why):
            resolve_devices(bad)
    with pytest.raises(InputError, match="runs on one device"):
        resolve_device("cpu,cpu")


def test_a_one_device_command_refuses_a_list(tmp_path, toy, capsys):
    out = tmp_path / "s.safetensors"
    argv = f"stats {toy('llama')} --data {tmp_path / 'd.npz'} --kind gram -o {out} --device cpu,cpu".split()
    assert "runs on one device" in clean_failure(capsys, argv)


def test_closing_lanes_after_a_failure_returns_at_once_and_drops_queued_work():
    """Ctrl-C while a lane computes a layer (a minute at 7B on a CPU): the run ends now, not after it; what
    was queued behind it never runs; after a success the lanes are joined and a failure nobody read is raised."""
    from mergeflow.graph.executor import ExecContext
    from mergeflow.graph.lanes import Lanes

    release, ran = threading.Event(), []

    class Slow:
        def run(self, ctx, *args):
            release.wait(30)
            ran.append("slow")

    class Quick:
        def run(self, ctx, *args):
            ran.append("quick")
            raise ValueError("lost")

    cpu = torch.device("cpu")
    ctx = ExecContext({}, None, cpu, torch.float32, lanes=(cpu, cpu))
    lanes = Lanes(ctx)
    first, second = lanes.start(Slow(), []), lanes.start(Slow(), [])  # one per lane
    behind = lanes.start(Quick(), [])  # lane 0, behind the first slow task
    while not (first.future.running() and second.future.running()):
        time.sleep(0.01)
    start = time.perf_counter()
    lanes.close(wait=False)
    assert time.perf_counter() - start < 1.0
    release.set()
    first.future.result(10)
    second.future.result(10)  # running when the lanes were closed: it ends with its task
    for thread in lanes.threads:
        thread.join(10)
    assert behind.future.cancelled() and "quick" not in ran

    lanes = Lanes(ctx)
    lanes.start(Quick(), [])
    with pytest.raises(ValueError, match="lost"):
        lanes.close(wait=True)


SLOW_LANE = """
import sys, time, torch
from mergeflow.cli.main import main
from mergeflow.graph import align_tasks
real = align_tasks.align_layer

def patched(*args, **kw):
    if args[1].index == 0:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    end = time.monotonic() + 30  # a layer that takes long, inside torch
    x = torch.randn(2048, 2048)
    while time.monotonic() < end:
        x = torch.tanh(x @ x)
    return real(*args, **kw)

align_tasks.align_layer = patched
sys.argv = ["mergeflow", "run", sys.argv[1], sys.argv[2], "--device", "cpu,cpu", "-q"]
main()
"""


def test_a_program_that_fails_while_a_lane_computes_exits_at_once(tmp_path, toy):
    """As a program, a run whose lane 0 fails while lane 1 is in the middle of a layer (a torch loop of 30 s)
    reports the failure and exits with its code at once: the lane is not waited for. (The SIGABRT that a
    real 7B alignment's shutdown sometimes met after Ctrl-C, which `main` now avoids by leaving with os._exit
    while a lane computes, did not occur with this loop even without that: benchmarks/bench_interrupt.py
    measures it.)"""
    import subprocess
    import sys

    a = toy("llama", seed=3)
    rec = write(tmp_path / "r.yml", f"models: {{a: {a}, b: {toy('llama', seed=4)}}}\nanchor: a\n"
                f"align: {STREAM['llama'][1]}{STEPS}\nmerge: {{linear: {{}}}}\n")  # fmt: skip
    out = tmp_path / "out"
    start = time.monotonic()
    res = subprocess.run(
        [sys.executable, "-c", SLOW_LANE, str(rec), str(out)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1, res.stderr
    assert time.monotonic() - start < 25, "waited for the computing lane"
    assert "ran out of memory" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
