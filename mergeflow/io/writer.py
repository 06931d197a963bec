"""Sharded safetensors writer with a layout fixed before any tensor is computed.

Every output tensor's dtype and shape are known from the plan, so each shard's header (and
so every tensor's byte offset) is decided up front. Tensors are then written straight to
their offsets as they are produced: nothing is buffered beyond the tensor in hand, whatever
the shard size, and the result does not depend on the order tensors arrive in.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path

import torch

from mergeflow.io.dtypes import ITEMSIZE, TORCH_TO_ST
from mergeflow.io.journal import file_crc
from mergeflow.io.names import INDEX_NAME
from mergeflow.io.ownership import open_new, write_new


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass
class ShardLayout:
    filename: str
    tensors: list[OutTensor]
    header: bytes = b""
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # absolute [begin, end)
    size: int = 0

    def finalize(self, metadata: dict[str, str]) -> None:
        entries: dict[str, object] = {"__metadata__": metadata}
        cursor = 0
        rel: dict[str, tuple[int, int]] = {}
        for t in self.tensors:
            rel[t.name] = (cursor, cursor + t.nbytes)
            entries[t.name] = {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "data_offsets": [cursor, cursor + t.nbytes],
            }
            cursor += t.nbytes
        text = json.dumps(entries, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)  # data starts 8-byte aligned
        self.header = len(text).to_bytes(8, "little") + text
        base = len(self.header)
        self.offsets = {n: (base + a, base + b) for n, (a, b) in rel.items()}
        self.size = base + cursor


def plan_shards(
    tensors: list[OutTensor], shard_size: int, metadata: dict[str, str] | None = None
) -> list[ShardLayout]:
    """Fill shards in the given order up to ``shard_size`` bytes (a larger tensor gets a shard of its own)."""
    groups: list[list[OutTensor]] = []
    used = 0
    for t in tensors:
        if not groups or (used + t.nbytes > shard_size and groups[-1]):
            groups.append([])
            used = 0
        groups[-1].append(t)
        used += t.nbytes
    n = len(groups)
    layouts = []
    for i, g in enumerate(groups or [[]]):
        fname = "model.safetensors" if n <= 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        layout = ShardLayout(fname, g)
        layout.finalize(metadata or {"format": "pt"})
        layouts.append(layout)
    return layouts


class ShardedWriter:
    """Writes tensors into pre-laid-out shards in ``directory``; ``finish`` writes the index last."""

    def __init__(
        self,
        directory: str | Path,
        layouts: list[ShardLayout],
        done: Iterable[str] = (),
        on_shard: Callable[[str, int, int], None] | None = None,
    ) -> None:
        """``done``: shard files already complete (resumed), never touched; ``on_shard(name, size, crc32)``
        is called when a shard is complete."""
        self.dir = Path(directory)
        self.layouts = layouts
        self.done = set(done)
        self.on_shard = on_shard
        self._where = {t.name: (i, t) for i, lay in enumerate(layouts) for t in lay.tensors}
        self._fds: dict[int, int] = {}
        self._started: set[int] = set()
        self._left = [
            0 if lay.filename in self.done else sum(t.nbytes for t in lay.tensors) for lay in layouts
        ]
        # running CRC-32 of each shard while writes arrive in file order (they do: the plan is in layout order)
        self._crc: dict[int, tuple[int, int] | None] = {}
        self.bytes_written = 0

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i)
        if fd is None:
            lay = self.layouts[i]
            path = self.dir / lay.filename
            if i in self._started:
                fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
            else:  # a new file: whatever stood under the name (a planted link) is not written through
                fd = open_new(path)
                os.ftruncate(fd, lay.size)
                os.pwrite(fd, lay.header, 0)
                self._started.add(i)
                self._crc[i] = (zlib.crc32(lay.header), len(lay.header))
            self._fds[i] = fd
        return fd

    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None, owned: bool = False
    ) -> None:
        """Write a whole tensor, or the block of rows [start, stop) of its first dimension (at once, whoever
        owns it)."""
        i, spec = self._where[name]
        want = spec.shape if rows is None else (rows[1] - rows[0], *spec.shape[1:])
        if TORCH_TO_ST.get(tensor.dtype) != spec.dtype or tuple(tensor.shape) != want:
            raise ValueError(
                f"{name}: got {tensor.dtype} {tuple(tensor.shape)}, layout says {spec.dtype} {want}"
            )
        begin, end = self.layouts[i].offsets[name]
        if rows is not None:
            row_bytes = spec.nbytes // spec.shape[0]
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
        if end == begin:
            return
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        view = data.data  # the tensor's bytes as a memoryview (no copy)
        pos = begin
        try:
            fd = self._fd(i)
            while view:  # pwrite may write less than asked
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        except OSError as exc:  # name the file (disk full says nothing of where)
            raise OSError(exc.errno, exc.strerror, str(self.dir / self.layouts[i].filename)) from None
        assert pos == end
        self.bytes_written += end - begin
        running = self._crc.get(i)
        self._crc[i] = (zlib.crc32(data.data, running[0]), end) if running and running[1] == begin else None
        self._left[i] -= end - begin
        if self._left[i] == 0:
            self._complete(i)

    def drain(self) -> None:
        """Nothing to wait for: every write is made when it is asked for (see io.background)."""

    def is_done(self, name: str) -> bool:
        return self.layouts[self._where[name][0]].filename in self.done

    def _complete(self, i: int) -> None:
        os.close(self._fds.pop(i))
        lay = self.layouts[i]
        running = self._crc.get(i)
        crc = running[0] if running and running[1] == lay.size else file_crc(self.dir / lay.filename)
        self.done.add(lay.filename)
        if self.on_shard is not None:
            self.on_shard(lay.filename, lay.size, crc)

    def finish(self) -> list[str]:
        for i, lay in enumerate(self.layouts):
            if self._left[i]:
                raise RuntimeError(f"{lay.filename}: {self._left[i]} bytes never written")
            if i not in self._started and lay.filename not in self.done:
                self._fd(i)
                self._complete(i)
        self.close()
        names = [lay.filename for lay in self.layouts]
        if len(self.layouts) > 1:
            index = {
                "metadata": {"total_size": sum(t.nbytes for lay in self.layouts for t in lay.tensors)},
                "weight_map": {n: self.layouts[i].filename for n, (i, _t) in sorted(self._where.items())},
            }
            write_new(self.dir / INDEX_NAME, json.dumps(index, indent=2) + "\n")
            names.append(INDEX_NAME)
        return names

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
