"""What mergeflow owns on disk, and the rule that it touches nothing else.

Every model directory mergeflow writes carries a marker file, ``.mergeflow``, listing the files it
wrote there. ``--force`` replaces a directory only when the marker is present and the directory holds
nothing but the files it lists; then only the listed files are removed, one by one, so a file put
there in the meantime survives. The working directory, its parents, the home directory, ``/``, a
symbolic link and anything that holds an input are never replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from mergeflow.errors import OutputError
from mergeflow.io.names import is_output_name
from mergeflow.io.recognise import file_written_by_mergeflow

MARKER = ".mergeflow"
LEGACY_CARD = "\n# Merged model\n\nMade with mergeflow "
WHAT_TO_DO = (
    "--force replaces only a model directory that mergeflow wrote: choose a new OUT or remove it yourself"
)


def lexical(path: str | Path) -> Path:
    """``path`` made absolute without following a link in its last component (its parents are resolved)."""
    p = Path(os.path.abspath(path))
    return p if p.parent == p else p.parent.resolve() / p.name


def write_marker(directory: Path, files: Iterable[str], kind: str = "model") -> None:
    from mergeflow import __version__

    names = sorted({*files, MARKER})
    data = {"written_by": "mergeflow", "version": __version__, "kind": kind, "files": names}
    write_new(directory / MARKER, json.dumps(data, indent=1) + "\n")


def listed_files(directory: Path) -> set[str] | None:
    """The files the marker of ``directory`` lists, or None when it has no valid marker."""
    marker = directory / MARKER
    if not os.path.lexists(marker):
        return legacy_files(directory)
    if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > 1 << 20:
        return None
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    files = data.get("files") if isinstance(data, dict) and data.get("written_by") == "mergeflow" else None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def legacy_files(directory: Path) -> set[str] | None:
    """An output of a mergeflow version before the marker: its model card says so and every entry is a
    regular file under a name mergeflow writes. Returns those names, or None."""
    card = directory / "README.md"
    try:
        if card.is_symlink() or LEGACY_CARD not in card.read_text(encoding="utf-8", errors="replace")[:4096]:
            return None
        names = os.listdir(directory)
    except OSError:
        return None
    ok = all(
        is_output_name(n) and not (directory / n).is_symlink() and (directory / n).is_file() for n in names
    )
    return set(names) if ok else None


def foreign_entries(directory: Path, listed: set[str]) -> list[str]:
    """Entries below ``directory`` that the marker does not list (links and special files always count)."""
    wanted_dirs = {str(Path(f).parent) for f in listed} - {"."} | {
        f.rstrip("/") for f in listed if f.endswith("/")
    }
    wanted_dirs |= {str(p) for f in wanted_dirs for p in Path(f).parents if str(p) != "."}
    found = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        rel_root = Path(root).relative_to(directory)
        for name in sorted(dirs):
            rel = str(rel_root / name)
            if os.path.islink(os.path.join(root, name)) or rel not in wanted_dirs:
                found.append(rel + "/")
        dirs[:] = [
            d for d in dirs if str(rel_root / d) in wanted_dirs and not os.path.islink(os.path.join(root, d))
        ]
        for name in sorted(files):
            rel = str(rel_root / name)
            full = os.path.join(root, name)
            if rel not in listed or os.path.islink(full) or not os.path.isfile(full):
                found.append(rel)
    return found


def _names(entries: list[str], most: int = 4) -> str:
    shown = ", ".join(entries[:most])
    return shown + (f" and {len(entries) - most} more" if len(entries) > most else "")


def check_replaceable(final: Path, inputs: Iterable[Path] = (), what: str = "output") -> None:
    """Raise OutputError unless the existing ``final`` is empty or a model directory mergeflow wrote,
    holding nothing else and no input. ``final`` comes from :func:`lexical` (its last component unresolved)."""
    if final.is_symlink():
        raise OutputError(
            f"{what} {final} is a symbolic link; mergeflow never replaces a link or what it points "
            "to: give a new directory"
        )
    if not final.is_dir():
        raise OutputError(f"{what} {final} exists and is not a directory; choose a new OUT")
    real = final.resolve()
    cwd = Path.cwd().resolve()
    if real == cwd or real in cwd.parents:
        raise OutputError(f"{what} {final} is the current directory or one of its parents; {WHAT_TO_DO}")
    home = Path.home().resolve()
    if real == home or real in home.parents:
        raise OutputError(f"{what} {final} is your home directory or one of its parents; {WHAT_TO_DO}")
    for src in inputs:
        src = Path(src).resolve()
        if src == real or real in src.parents:
            raise OutputError(f"{what} {final} holds the input {src}; {WHAT_TO_DO}")
    if not any(final.iterdir()):
        return  # an empty folder (made ahead of the run): nothing in it to lose
    listed = listed_files(final)
    if listed is None:
        raise OutputError(
            f"{what} {final} was not written by mergeflow (no {MARKER} marker in it); {WHAT_TO_DO}"
        )
    foreign = foreign_entries(final, listed)
    if foreign:
        raise OutputError(
            f"{what} {final} holds files mergeflow did not write ({_names(foreign)}); {WHAT_TO_DO}"
        )


def remove_owned(directory: Path) -> list[str]:
    """Delete the files the marker of ``directory`` lists, then the folders left empty; returns what was
    left (anything not listed stays where it is)."""
    listed = listed_files(directory) or set()
    for name in sorted(listed - {MARKER}) + [MARKER]:
        path = directory / name
        if name.endswith("/"):
            continue
        if path.is_symlink() or path.is_file():  # a listed name that became a folder is left alone
            path.unlink(missing_ok=True)
    folders = {str(p) for f in listed for p in Path(f).parents} - {"."} | {
        f.rstrip("/") for f in listed if f.endswith("/")
    }
    for name in sorted(folders, key=len, reverse=True):
        with contextlib.suppress(OSError):  # not empty: something mergeflow did not write is in it
            (directory / name).rmdir()
    try:
        directory.rmdir()
        return []
    except OSError:
        return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------------------------- single files
def input_inodes(inputs: Iterable[Path]) -> dict[tuple[int, int], Path]:
    """(device, inode) of every input file and of every file directly inside an input folder."""
    found: dict[tuple[int, int], Path] = {}
    for src in inputs:
        with contextlib.suppress(OSError):
            entries = [src] if not src.is_dir() else [src / n for n in sorted(os.listdir(src))[:10_000]]
            for p in entries:
                with contextlib.suppress(OSError):
                    st = os.stat(p)
                    found.setdefault((st.st_dev, st.st_ino), p)
    return found


def check_file_target(path: str | Path, inputs: Iterable[Path] = (), what: str = "output file") -> Path:
    """Refuse to write the file ``path`` over an input, a link, a folder, a special file or a file
    mergeflow did not write; returns the path to write (parents resolved, the name itself not)."""
    target = lexical(path)
    if target.is_symlink():
        raise OutputError(
            f"{what} {target} is a symbolic link; mergeflow never writes through a link: give another path"
        )
    real = target.resolve()
    inputs = [Path(src).resolve() for src in inputs]
    inodes = input_inodes(inputs)
    for src in inputs:
        if real == src or src in real.parents:
            raise OutputError(
                f"{what} {target} would be written over or inside the input {src}; choose another path"
            )
    with contextlib.suppress(OSError):
        st = os.stat(target)
        if (st.st_dev, st.st_ino) in inodes:
            raise OutputError(
                f"{what} {target} is the same file as the input {inodes[st.st_dev, st.st_ino]} "
                "(a hard link); choose another path"
            )
    if not target.parent.is_dir() and not target.parent.parent.is_dir():
        raise OutputError(
            f"{what} {target}: the folder {target.parent.parent} does not exist; create it first"
        )
    if os.path.lexists(target):
        if not target.is_file():
            raise OutputError(f"{what} {target} exists and is not a regular file; choose another path")
        if not file_written_by_mergeflow(target):
            raise OutputError(
                f"{what} {target} exists and was not written by mergeflow; mergeflow only "
                "replaces its own files: choose another path or remove it yourself"
            )
    return target


def open_new(path: Path) -> int:
    """A file descriptor for writing a new file at ``path``: whatever stood under the name (a planted
    link or a hard link to an input) is unlinked first, never written through."""
    if os.path.lexists(path) and not (path.is_symlink() or path.is_file()):
        raise OutputError(f"{path} is in the way and is not a file; move it")
    path.unlink(missing_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)


def write_new(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to a new file at ``path`` (see :func:`open_new`)."""
    with os.fdopen(open_new(path), "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def copy_new(src: Path, dst: Path) -> None:
    """Copy ``src`` to a new file at ``dst`` (see :func:`open_new`)."""
    with open(src, "rb") as fin, os.fdopen(open_new(dst), "wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)


def atomic_write(target: Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a fresh file beside ``target`` (created exclusively), then rename it over
    ``target``: a reader never sees half a file, and no link planted beside it is followed."""
    import tempfile

    target.parent.mkdir(exist_ok=True)  # the last folder at most (see check_file_target)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".mergeflow-tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
