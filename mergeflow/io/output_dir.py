"""The output directory: built under a hidden temporary sibling, renamed into place when complete.

A run that fails, is interrupted or killed never leaves a directory under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from mergeflow.errors import OutputError
from mergeflow.io.journal import NAME as JOURNAL
from mergeflow.io.names import CONFIG_FILES, TOKENIZER_FILES
from mergeflow.io.ownership import (
    check_replaceable,
    copy_new,
    lexical,
    listed_files,
    remove_owned,
    write_marker,
    write_new,
)
from mergeflow.io.reader import is_inside

LOCK = ".mergeflow-lock"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while an output was being written: its partial directory was kept."""

    def __init__(self, final: Path, partial: Path, terminated: bool) -> None:
        super().__init__(f"{final}")
        self.final, self.partial, self.terminated = final, partial, terminated


def partial_path(final: Path) -> Path:
    """The hidden sibling an output is built in (fixed, so that --resume finds it)."""
    return final.parent / f".{final.name}.mergeflow-partial"


def check_partial(tmp: Path) -> None:
    """A folder under the partial output's name must be one mergeflow made (it carries the marker)."""
    if os.path.lexists(tmp) and (tmp.is_symlink() or not tmp.is_dir() or listed_files(tmp) is None):
        raise OutputError(
            f"{tmp} is in the way of the partial output and mergeflow did not create it; "
            "move it or choose another OUT"
        )


def check_output_path(final: str | Path, force: bool, inputs: Iterable[Path], parents: bool = False) -> None:
    """Refuse an output that overlaps an input or that mergeflow may not replace, before any work."""
    final = lexical(final)
    if final.parent == final:
        raise OutputError(f"output {final} is the root directory; choose a new directory for OUT")
    real = final.resolve()
    for src in inputs:
        src = Path(src).resolve()
        # never write into, over, or around an input (a --force replace would delete it)
        inside_input = src.is_dir() and src in real.parents
        if real == src or real in src.parents or inside_input:
            raise OutputError(f"output {final} overlaps input {src}; choose another output directory")
    check_partial(partial_path(final))
    if os.path.lexists(final):
        check_replaceable(final, inputs)
        if not force and any(final.iterdir()):
            raise OutputError(
                f"output {final} already exists (written by mergeflow); pass --force to replace it"
            )
    if not parents and not os.path.lexists(
        final.parent
    ):  # a typo or an unset variable must not create a tree
        raise OutputError(
            f"cannot create output {final}: its folder {final.parent} does not exist; create it or "
            "pass --parents"
        )
    parent = final.parent
    while not parent.exists():  # missing parents are created; the nearest existing one must be writable
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise OutputError(f"cannot create output {final}: {parent} is not a writable directory")


class OutputDir:
    """``with OutputDir(final, force, resume, inputs) as tmp:`` write into ``tmp``; renamed to ``final``
    on success.

    A caller that sets ``written`` (names relative to ``tmp``, folders as ``NAME/``) carries only those
    into ``final``. ``tmp`` is a hidden sibling with a fixed name, so an interrupted run can be resumed:
    after Ctrl-C, SIGTERM or SIGKILL it stays (never under the final name); after any other error it is
    removed.
    A lock file keeps two runs from writing the same output at once. The finished directory gets a
    marker listing its files; an existing ``final`` is replaced only under ``force`` and only when
    :func:`check_replaceable` allows it, and then only its listed files are deleted.
    """

    def __init__(
        self,
        final: str | Path,
        force: bool = False,
        resume: bool = False,
        inputs: Iterable[Path] = (),
        parents: bool = False,
    ) -> None:
        self.final = lexical(final)
        self.force, self.resume = force, resume
        self.inputs, self.parents = list(inputs), parents
        self.tmp = partial_path(self.final)
        self.found_partial = False
        self.left_behind: list[str] = []  # files of a replaced output that mergeflow did not write
        self.written: list[str] | None = None  # set by the run: the files it wrote (None: whatever is there)
        self._lock: int | None = None

    def __enter__(self) -> Path:
        try:
            self.final.parent.mkdir(parents=self.parents, exist_ok=True)
            self.found_partial = os.path.lexists(self.tmp)
            if self.found_partial:
                check_partial(self.tmp)
                if not self.resume:
                    self._take_lock()  # refuse to delete another live run's work
                    self._release_lock()
                    shutil.rmtree(self.tmp)
                    warnings.warn(
                        f"discarded the partial output of an earlier interrupted run ({self.tmp}); "
                        "pass --resume instead to continue it",
                        stacklevel=2,
                    )
            if not self.tmp.is_dir():
                self.tmp.mkdir()
                write_marker(self.tmp, [], kind="partial")
            self._take_lock()
        except OSError as exc:
            raise OutputError(f"cannot create {self.tmp}: {exc.strerror or exc}") from None
        return self.tmp

    def _take_lock(self) -> None:
        import fcntl

        fd = os.open(self.tmp / LOCK, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise OutputError(
                f"another mergeflow run is writing {self.final} (lock held on {self.tmp})"
            ) from None
        self._lock = fd

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.tmp / LOCK).unlink()
            os.close(self._lock)
            self._lock = None

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if typ is not None:
            self._release_lock()
            if not issubclass(typ, (KeyboardInterrupt, SystemExit)):
                shutil.rmtree(self.tmp, ignore_errors=True)
                return
            raise Interrupted(self.final, self.tmp, typ is SystemExit) from exc
        self._release_lock()
        # what this run wrote, nothing else: stale files of an earlier attempt, the journal and anything
        # planted in the partial directory (links included) do not reach the output
        if self.written is None:
            self.written = [
                str(Path(r, f).relative_to(self.tmp))
                for r, _d, fs in os.walk(self.tmp)
                for f in fs
                if f not in (JOURNAL, LOCK)
            ]
        top = {w.split("/")[0] for w in self.written}
        for entry in os.scandir(self.tmp):
            if entry.name not in top:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        write_marker(self.tmp, self.written)
        old = None
        if os.path.lexists(self.final):
            try:
                check_replaceable(self.final, self.inputs)
                if not self.force and any(self.final.iterdir()):
                    raise OutputError(
                        f"output {self.final} appeared while merging; pass --force to replace it"
                    )
            except OutputError:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
            old = self.final.parent / f".{self.final.name}.mergeflow-old-{os.getpid()}"
            self.final.rename(old)
        self.tmp.rename(self.final)
        if old is not None:
            self.left_behind = [str(old / n) for n in remove_owned(old)]


def copy_support_files(
    out: Path,
    config_dir: Path | None,
    tokenizer_dir: Path | None,
    out_dtype: str | None,
    layer_origin: list[int] | None = None,
    vocab_size: int | None = None,
    config: dict | None = None,
    updates: dict | None = None,
) -> list[str]:
    """Copy config/generation config and tokenizer files (regular files only), updating the config's
    dtype, depth (``layer_origin``) and ``vocab_size`` when given; ``config`` replaces config.json's
    contents, ``updates`` sets keys in it. Returns the names copied."""
    copied = []
    if config is not None:
        write_new(out / "config.json", json.dumps(config, indent=2) + "\n")
        copied.append("config.json")
    if config_dir is not None and config_dir.is_dir():
        for name in CONFIG_FILES:
            src = config_dir / name
            if config is not None and name == "config.json":
                continue
            if src.is_file() and is_inside(config_dir, src):  # links only within a cache repository
                if name == "config.json" and (out_dtype is not None or layer_origin or vocab_size or updates):
                    cfg = json.loads(src.read_text(encoding="utf-8"))
                    cfg.update(updates or {})
                    if vocab_size is not None:
                        for key in ("vocab_size", "n_vocab"):
                            if isinstance(cfg.get(key), int):
                                cfg[key] = vocab_size
                    if out_dtype is not None:
                        for key in ("torch_dtype", "dtype"):
                            if key in cfg or key == "dtype":
                                cfg[key] = out_dtype
                    if layer_origin:  # a rebuilt layer stack: new depth, per-layer lists follow their layers
                        old_n = None
                        for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
                            if isinstance(cfg.get(key), int):
                                old_n, cfg[key] = cfg[key], len(layer_origin)
                        for key, value in list(cfg.items()):
                            if isinstance(value, list) and len(value) == old_n and key != "architectures":
                                cfg[key] = [value[i] for i in layer_origin]
                    write_new(out / name, json.dumps(cfg, indent=2) + "\n")
                else:
                    copy_new(src, out / name)
                copied.append(name)
    if tokenizer_dir is not None and tokenizer_dir.is_dir():
        for name in TOKENIZER_FILES:
            src = tokenizer_dir / name
            if src.is_file() and is_inside(tokenizer_dir, src):
                copy_new(src, out / name)
                copied.append(name)
    return copied
