"""Shards of Hub models downloaded in the background, in the order a merge first reads them.

A run hands the fetcher the shards its plan reads that are not on disk yet, in order of first use. One
thread downloads them through ``huggingface_hub`` (which resumes a partial download) while the merge
works on the shards already there, so a merge takes about max(download, merge) rather than their sum.
A reader that needs a shard waits for it (:meth:`wait`).

With a disk budget the shards go to a private folder instead of the shared cache, a download starts
only when it fits in the budget beside the shards still held, and the run reports each load it has
done (:meth:`loaded`): after a shard's last load it is deleted. The plan checks beforehand that the shards
the merge holds at once fit (:func:`mergeflow.graph.shard_uses.disk_needed`), so the wait always ends.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mergeflow.errors import ModelError
from mergeflow.io.hub import client_options, hub_cache, hub_errors
from mergeflow.progress import SILENT, Progress


class _Stopped(Exception):
    """Raised inside a download's progress callback to abandon it (the run ended)."""


@dataclass
class Job:
    reader: Any  # HubReader
    file: str  # its local path, as the reader's tensors name it
    size: int
    loads: int  # loads of the plan still to read it
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    held: bool = False  # counted in the bytes held on disk


class Fetcher:
    def __init__(
        self,
        shards: list[tuple[Any, str, int]],
        folder: Path | None = None,
        budget: int | None = None,
        progress: Progress | None = None,
    ) -> None:
        """``shards``: (HubReader, local path, loads that read it) in order of first use. ``folder``: a
        private folder (with ``budget``, in bytes) instead of the shared cache."""
        self.folder, self.budget = folder, budget
        self._dirs: dict[int, Path] = {}
        if folder is not None:
            moves: dict[Any, dict[str, str]] = {}
            for reader, file, _n in shards:
                where = self._dirs.setdefault(id(reader), folder / f"model-{len(self._dirs)}")
                moves.setdefault(reader, {})[file] = str(where / reader.repo_file[file])
            for reader, m in moves.items():
                reader.relocate(m)
            shards = [(r, moves[r][f], n) for r, f, n in shards]
            self._drop_stale(folder, {f for _r, f, _n in shards})
        self.jobs = {(id(r), f): Job(r, f, r.shard_size(f), n) for r, f, n in shards}
        self.held = self.peak_held = self.downloaded = 0
        self.seconds = 0.0  # from start() to the last shard on disk
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.bar = (progress or SILENT).bar(
            "downloading", sum(j.size for j in self.jobs.values()), unit="B", nested=True
        )
        self._thread = threading.Thread(target=self._work, name="mergeflow-download", daemon=True)
        for reader in {id(j.reader): j.reader for j in self.jobs.values()}.values():
            reader.fetcher = self

    @staticmethod
    def _drop_stale(folder: Path, planned: set[str]) -> None:
        """Shards an interrupted attempt left in the (private) folder that this run no longer reads (--resume
        after the shards they fed were written): deleted, so they do not count against the budget."""
        if folder.is_dir():
            for path in folder.rglob("*.safetensors"):
                if ".cache" not in path.relative_to(folder).parts and str(path) not in planned:
                    path.unlink()

    def start(self) -> Fetcher:
        if self.jobs:
            self._started = time.perf_counter()
            self._thread.start()
        return self

    def has(self, reader: Any, file: str) -> bool:
        return (id(reader), file) in self.jobs

    # ---------------------------------------------------------------- the download thread
    def _feed(self) -> type[tqdm]:
        bar, stop = self.bar, self._stop

        class Feed(tqdm):  # huggingface_hub's per-file bar, folded into ours
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)
                bar.update(kwargs.get("initial") or 0)

            def update(self, n: float | None = 1) -> bool | None:
                if stop.is_set():
                    raise _Stopped()
                bar.update(n or 0)
                return None

        return Feed

    def _work(self) -> None:
        from huggingface_hub import hf_hub_download

        feed = self._feed()
        jobs = list(self.jobs.values())
        for i, job in enumerate(jobs):
            with self._cond:
                while self.budget is not None and self.held and self.held + job.size > self.budget:
                    if self._stop.is_set():
                        break
                    self._cond.wait(0.2)
                if self._stop.is_set():
                    job.error = _Stopped()
                else:
                    self.held += job.size
                    self.peak_held = max(self.peak_held, self.held)
                    job.held = True
            if job.error is None:
                r = job.reader
                where = (
                    {"local_dir": str(self._dirs[id(r)])}
                    if self.folder is not None
                    else {"cache_dir": str(hub_cache())}
                )
                try:
                    options: dict[str, Any] = {**where, **client_options()}
                    hf_hub_download(
                        r.repo, r.repo_file[job.file], revision=r.commit, tqdm_class=feed, **options
                    )
                    self.downloaded += job.size
                    self.seconds = time.perf_counter() - self._started
                except BaseException as exc:  # handed to the reader that waits for this shard
                    job.error = exc
            job.done.set()
            if job.error is not None:
                for later in jobs[i + 1 :]:
                    later.error = job.error
                    later.done.set()
                return

    # ---------------------------------------------------------------- the merge's side
    def wait(self, reader: Any, file: str) -> None:
        job = self.jobs[(id(reader), file)]
        while not job.done.wait(0.5):
            pass
        if job.error is not None:
            if isinstance(job.error, _Stopped):
                raise ModelError(f"{reader.who}: download of {reader.repo_file[file]} was stopped")
            with hub_errors(reader.who, reader.repo, reader.commit):
                raise job.error

    def loaded(self, reader: Any, file: str) -> None:
        """The merge has read one of its loads from the shard. With a budget, after the last one the shard
        is deleted and its room given to the downloads still to come."""
        job = self.jobs.get((id(reader), file))
        if self.folder is None or job is None:
            return
        job.loads -= 1
        if job.loads > 0:
            return
        reader.forget(file)
        if os.path.isfile(file):
            os.unlink(file)
        with self._cond:
            if job.held:
                self.held -= job.size
                job.held = False
            self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.bar.close()
        for job in self.jobs.values():
            job.reader.fetcher = None
