"""Writes handed to one background thread, so that copying a finished tensor into the output file overlaps
computing the next one (an aligned 7B layer is solved while the previous layer's 440 MB go to disk).

Only tensors the caller made for the write and holds nowhere else (``owned``), or host copies of tensors on an
accelerator, are handed over: a CPU tensor that may still be read or changed in place by a later task is
written at once, after the queue has drained, so the file is written in the same order as without the thread
(the shard CRC runs over writes in file order). At most ``cap`` bytes wait in the queue; ``write`` blocks while
more would. Used by default when computing on an accelerator (``graph.memory.overlap``)."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch


class BackgroundWriter:
    """Wraps a ShardedWriter (``inner``); every call that touches the files after a write has been queued
    (``finish``, ``close``) waits for the queue first, and an error in the thread is raised in the caller."""

    def __init__(self, inner: Any, cap: int) -> None:
        self.inner = inner
        self.cap = cap
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergeflow-write")
        self._queued: deque[tuple[Future[None], int]] = deque()
        self._bytes = 0
        self._lock = threading.Lock()  # the inner writer is used by one thread at a time
        self.overlapped = 0  # bytes written by the thread

    def write(
        self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None = None, owned: bool = False
    ) -> None:
        size = tensor.numel() * tensor.element_size()
        if size > self.cap or not (owned or tensor.device.type != "cpu"):
            self.drain()
            self.inner.write(name, tensor, rows)
            return
        tensor = tensor.to(
            "cpu"
        )  # from an accelerator: a host copy of our own (and the thread needs no device)
        while self._queued and self._bytes + size > self.cap:
            self._wait_oldest()
        self._queued.append((self._pool.submit(self._write, name, tensor, rows), size))
        self._bytes += size

    def _write(self, name: str, tensor: torch.Tensor, rows: tuple[int, int] | None) -> None:
        with self._lock:
            self.inner.write(name, tensor, rows)
            self.overlapped += tensor.numel() * tensor.element_size()

    def _wait_oldest(self) -> None:
        fut, size = self._queued.popleft()
        self._bytes -= size
        fut.result()  # raises the thread's error here

    def drain(self) -> None:
        """Wait until every queued write is in the file."""
        while self._queued:
            self._wait_oldest()

    def is_done(self, name: str) -> bool:
        return bool(self.inner.is_done(name))

    @property
    def bytes_written(self) -> int:
        return int(self.inner.bytes_written)

    def finish(self) -> list[str]:
        self.drain()
        self._pool.shutdown(wait=True)
        return list(self.inner.finish())

    def close(self) -> None:
        """After a failure too: writes not started are dropped, the one running is waited for, then the files
        are closed (the output folder is the caller's to discard)."""
        for fut, _size in self._queued:
            fut.cancel()
        self._pool.shutdown(wait=True)
        self._queued.clear()
        self._bytes = 0
        with self._lock:
            self.inner.close()
