"""Writes handed to a background thread (io.background): the files are byte for byte those of writing in the
computing thread, the queue stays under its cap, a tensor another task may still use is never handed over,
and a failure in the thread is a one-line error with nothing left behind."""

from __future__ import annotations

import errno
import os
import threading
import time

import pytest
import torch

from mergeflow.graph import memory
from mergeflow.io import background
from mergeflow.io.background import BackgroundWriter
from tests.conftest import cli, write
from tests.helpers import files, kill_after, make_model


class Recorder:
    """An inner writer that takes its time and notes who wrote what, and how much was queued then."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: list[tuple[str, str]] = []
        self.closed = False
        self.outer: BackgroundWriter | None = None
        self.most_queued = 0
        self.bytes_written = 0

    def write(self, name, tensor, rows=None, owned=False):
        time.sleep(self.delay)
        if name == "bad":
            raise OSError(errno.ENOSPC, "No space left on device", "out/model.safetensors")
        if self.outer is not None:
            self.most_queued = max(self.most_queued, self.outer._bytes)
        self.calls.append((name, threading.current_thread().name))

    def is_done(self, name):
        return False

    def finish(self):
        return ["model.safetensors"]

    def close(self):
        self.closed = True


def t(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.uint8)


def test_queue_order_cap_and_tensors_not_owned():
    inner = Recorder(delay=0.01)
    w = BackgroundWriter(inner, cap=300)
    inner.outer = w
    for i in range(6):
        w.write(f"a{i}", t(100), owned=True)
    w.write("shared", t(100))  # not owned: waits for the queue, then written here
    assert w._bytes == 0 and inner.calls[-1] == ("shared", threading.current_thread().name)
    w.write("big", t(400), owned=True)  # larger than the cap: written here
    assert w.finish() == ["model.safetensors"]
    assert [n for n, _ in inner.calls] == [f"a{i}" for i in range(6)] + ["shared", "big"]
    assert all(who.startswith("mergeflow-write") for _n, who in inner.calls[:6])
    assert inner.most_queued <= 300 and w.overlapped == 600


def test_an_error_in_the_thread_is_raised_in_the_caller_and_close_drops_the_rest():
    inner = Recorder(delay=0.05)  # the queue outlives the failure by far: close drops what is left
    w = BackgroundWriter(inner, cap=10_000)
    w.write("bad", t(10), owned=True)
    for i in range(5):
        w.write(f"b{i}", t(10), owned=True)
    with pytest.raises(OSError, match="No space left"):
        w.drain()
    w.close()
    assert inner.closed and len(inner.calls) < 5  # what was queued behind the failure is dropped


def test_the_thread_is_used_by_default_only_off_the_cpu(monkeypatch):
    """On a CPU the writing thread competes with the computing threads (neutral on 2 cores, measured); on an
    accelerator the host is idle. Never beyond the budget's window; MERGEFLOW_WRITE_BEHIND decides."""
    gib = 2**30
    assert memory.overlap(8 * gib, gib, False).write_behind == 0
    assert memory.overlap(8 * gib, gib, False, device_type="cuda").write_behind == memory.WRITE_BEHIND_CAP
    assert memory.overlap(8 * gib, 6 * gib, True, device_type="cuda").write_behind == 0  # no room left
    assert memory.overlap(8 * gib, gib, False, enabled=False, device_type="cuda") == memory.Overlap(0, 0, 0)
    monkeypatch.setattr(memory, "WRITE_BEHIND", "on")
    assert memory.overlap(8 * gib, gib, True).write_behind == memory.WRITE_BEHIND_CAP
    monkeypatch.setattr(memory, "WRITE_BEHIND", "off")
    assert memory.overlap(8 * gib, gib, True, device_type="cuda").write_behind == 0


@pytest.fixture
def behind(monkeypatch):
    """The writing thread on the CPU too (the path an accelerator run takes, after its host copy)."""
    monkeypatch.setattr(memory, "WRITE_BEHIND", "on")
    monkeypatch.setenv("MERGEFLOW_WRITE_BEHIND", "on")  # for runs in a child process


@pytest.fixture(scope="module")
def bf16_recipe(tmp_path_factory):
    """Three float32 checkpoints merged into bfloat16 (the converted tensors are the writes' own: handed to
    the thread), written in 4 MiB shards."""
    root = tmp_path_factory.mktemp("behind")
    models = [make_model(root / f"m{i}", 24, 1 << 19, i, shards=3) for i in range(3)]
    rec = write(
        root / "r.yml",
        "models:\n"
        + "".join(f"  m{i}: {p}\n" for i, p in enumerate(models))
        + "base: m0\nmerge: {dare_ties: {density: 0.5}}\nseed: 3\nout_dtype: bfloat16\n"
        + "output: {shard_size: 4MiB}\n",
    )
    return rec


def test_same_files_with_and_without_the_writing_thread(tmp_path, bf16_recipe, monkeypatch, behind):
    made: list[BackgroundWriter] = []
    real = background.BackgroundWriter.__init__

    def spy(self, inner, cap):
        real(self, inner, cap)
        made.append(self)

    monkeypatch.setattr(background.BackgroundWriter, "__init__", spy)
    assert cli("run", str(bf16_recipe), str(tmp_path / "behind"), "-q").returncode == 0
    assert made and made[0].overlapped > 20 * 2**20  # most of the 36 MiB went through the thread
    monkeypatch.setattr(memory, "WRITE_BEHIND", "off")
    assert cli("run", str(bf16_recipe), str(tmp_path / "direct"), "-q").returncode == 0
    assert len(made) == 1
    a, b = files(tmp_path / "behind"), files(tmp_path / "direct")
    assert a.keys() == b.keys() and len([n for n in a if n.endswith(".safetensors")]) > 3
    assert a == b, [n for n in a if a[n] != b[n]]


def test_disk_full_in_the_writing_thread_is_one_line_and_cleans_up(
    tmp_path, bf16_recipe, monkeypatch, capsys, behind
):
    from mergeflow.cli import main as cli_main

    real = os.pwrite

    def full(fd, data, offset):
        if threading.current_thread().name.startswith("mergeflow-write") and offset > 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["run", str(bf16_recipe), str(out), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and ".safetensors" in err[0], err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_killed_run_with_the_writing_thread_resumes_to_identical_output(tmp_path, bf16_recipe, behind):
    """Shards completed by the thread are journalled by it; after SIGKILL the resumed run keeps them."""
    ref = tmp_path / "ref"
    assert cli("run", str(bf16_recipe), str(ref), "-q").returncode == 0
    out = tmp_path / "out"
    seen = kill_after(bf16_recipe, out, 4)
    res = cli("run", str(bf16_recipe), str(out), "--resume")
    assert res.returncode == 0, res.stderr
    assert seen >= 4 and "resumed: kept" in res.stdout and "kept 0 of" not in res.stdout, (seen, res.stdout)
    assert files(out) == files(ref)


def test_a_write_hands_over_only_a_converted_copy():
    """A value already in the output dtype is the task's value itself (a later task may still read or change
    it in place): not owned. A converted copy is the write's own."""
    from types import SimpleNamespace

    from mergeflow.graph.tasks import Write
    from mergeflow.io.writer import OutTensor

    got = []
    sink = SimpleNamespace(write=lambda name, tensor, rows=None, owned=False: got.append((name, owned)))
    ctx = SimpleNamespace(check_finite=True, writer=sink)
    value = torch.ones(4)
    Write(OutTensor("same", "F32", (4,)), None).run(ctx, value)  # type: ignore[arg-type]
    Write(OutTensor("cast", "BF16", (4,)), None).run(ctx, value)  # type: ignore[arg-type]
    assert got == [("same", False), ("cast", True)]
