"""Kernel readahead in alignment runs: the executor asks the readers to bring the next loads' bytes into the
page cache while the current task runs, within a byte budget, each tensor once, in the order of use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mergeflow.graph.executor import ExecContext, execute
from mergeflow.graph.tasks import Load
from mergeflow.io.reader import ModelReader


class Recorder:
    """A reader stand-in: records advise and read calls in one shared log."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name, self.log = name, log

    def advise(self, tensor: str) -> None:
        self.log.append(("advise", self.name, tensor))

    def read(self, tensor: str, dtype: Any = None, device: Any = "cpu", rows: Any = None) -> torch.Tensor:
        self.log.append(("read", self.name, tensor))
        return torch.zeros(1)


@dataclass(frozen=True)
class Use:
    inputs: tuple[Load, ...]

    def deps(self) -> tuple[Any, ...]:
        return self.inputs

    def run(self, ctx: Any, *values: Any) -> None:
        return None


def loads(n: int, size: int = 100) -> list[Load]:
    return [Load("m", f"t{i}", size // 4, size, True) for i in range(n)]


def run(tasks: list[Use], budget: int) -> list[tuple[str, str, str]]:
    log: list[tuple[str, str, str]] = []
    ctx = ExecContext({"m": Recorder("m", log)}, None, torch.device("cpu"), torch.float32)  # type: ignore[arg-type]
    execute(list(tasks), ctx, advise_bytes=budget)
    return log


def test_the_next_loads_are_advised_within_the_budget_before_they_are_read():
    lds = loads(6)
    log = run([Use(tuple(lds[i : i + 2])) for i in range(0, 6, 2)], budget=250)
    advised = [t for kind, _m, t in log if kind == "advise"]
    assert advised == [f"t{i}" for i in range(1, 6)]  # each once, in the order of use (t0 is read at once)
    for i in range(1, 6):  # advised before read, and never more than the budget's worth ahead of the reads
        a, r = log.index(("advise", "m", f"t{i}")), log.index(("read", "m", f"t{i}"))
        assert a < r
        reads_before = sum(1 for kind, *_ in log[:a] if kind == "read")
        assert i - reads_before <= 3  # under 250 bytes pending before it: two 100-byte loads + this one


def test_no_budget_no_advice_and_row_blocks_are_advised_once():
    lds = loads(3)
    assert all(kind == "read" for kind, *_ in run([Use(tuple(lds))], budget=0))
    blocks = tuple(Load("m", "w", 25, 100, True, rows=(i, i + 1)) for i in range(4))
    log = run([Use(blocks)], budget=1 << 20)
    assert [e for e in log if e[0] == "advise"] == [("advise", "m", "w")]


def test_a_reader_advises_the_tensors_byte_range_and_ignores_missing_files(tmp_path, monkeypatch):
    import os

    from safetensors.torch import save_file

    save_file({"a": torch.zeros(10), "w": torch.ones(1000)}, str(tmp_path / "model.safetensors"))
    reader = ModelReader("m", tmp_path)
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, how: calls.append((off, n, how)) or real(fd, off, n, how)
    )
    reader.advise("w")
    info = reader.info("w")
    assert calls == [(info.begin, info.nbytes, os.POSIX_FADV_WILLNEED)] and info.nbytes == 4000
    (tmp_path / "model.safetensors").unlink()
    reader.advise("w")  # the file is gone: a no-op, not an error
    assert len(calls) == 1
