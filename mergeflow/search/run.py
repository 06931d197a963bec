"""``mergeflow search``: read a search file, check every point it can produce, run (or resume) the study,
and write the best recipe, the trial table and the plots."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mergeflow.errors import InputError, RecipeError
from mergeflow.search.section import SearchSection
from mergeflow.search.space import Dim, SpaceError, corners, dotted


@dataclass
class SearchFile:
    path: Path
    section: SearchSection
    tree: dict[str, Any]  # the recipe with its search nodes
    dims: dict[str, Dim]
    corners: list[Any]  # recipes at the corners of the space (each validated)


def accepts(op: str, key: str) -> bool:
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.params import owner

    return op in OPERATORS and owner(OPERATORS[op], key) is not None


def read_search(path: str | Path) -> SearchFile:
    """The search file, validated: its ``search:`` section, every search node, and the recipe at every
    corner of the space (low and high ends, each choice) — all problems at once, before any trial."""
    from mergeflow.align.catalog import STEPS
    from mergeflow.merge.catalog import OPERATORS
    from mergeflow.recipe.validate import validate
    from mergeflow.recipe.yaml_source import YamlSource, read_yaml

    src = read_yaml(path)
    if not isinstance(src.data, dict) or "search" not in src.data:
        raise RecipeError(
            [f"{src.name}: a search file is a recipe with a 'search:' section (objective, sampler, trials)"]
        )
    problems: list[str] = []
    try:
        section = SearchSection.model_validate(src.data["search"])
    except ValidationError as exc:
        for e in exc.errors():
            loc = ("search", *e["loc"])
            problems.append(f"{src.where(loc)}: {dotted(loc)}: {e['msg']}")
        section = None
    tree = {k: v for k, v in src.data.items() if k != "search"}
    for key in ("tokenizer", "slices", "stages"):
        if key in tree:
            problems.append(f"{src.where((key,))}: {key}: not supported in a search file yet")
    dims: dict[str, Dim] = {}
    points: list[Any] = []
    try:
        points, dims = corners(tree, accepts)
    except SpaceError as exc:
        problems.append(f"{src.where(exc.path)}: {dotted(exc.path)}: {exc}")
    if not problems and not dims:
        problems.append(f"{src.name}: no search space: mark a parameter, e.g. weight: {{search: [0.0, 1.0]}}")
    seen: set[str] = set()
    root = Path(path).resolve().parent
    for point in points:
        try:
            validate(YamlSource(point, src.name, src.locations), OPERATORS, STEPS, root=root)
        except RecipeError as exc:
            for p in exc.problems:
                if p not in seen:
                    seen.add(p)
                    problems.append(p)
    if section is not None:
        for i, o in enumerate(section.objective):
            data = Path(o.data) if Path(o.data).is_absolute() else root / o.data
            if not data.is_file():
                problems.append(
                    f"{src.where(('search', 'objective', i, 'data'))}: search.objective[{i}].data: "
                    f"data file {data} does not exist"
                )
    if problems:
        raise RecipeError(problems, src.name)
    assert section is not None
    return SearchFile(Path(path), section, tree, dims, points)


def search_inputs(sf: SearchFile) -> list[Path]:
    """What a search reads: the file, the models (those that are local paths, relative to the file) and the
    objectives' data; nothing is written over or into them."""
    root = sf.path.resolve().parent
    out = [sf.path.resolve()]
    for m in (sf.tree.get("models") or {}).values():
        p = m.get("path") if isinstance(m, dict) else m
        if isinstance(p, str) and (root / p).exists():
            out.append((root / p).resolve())
    out += [(root / o.data).resolve() for o in sf.section.objective]
    return out


def storage_path(sf: SearchFile, out: Path) -> Path:
    from mergeflow.io.ownership import check_file_target

    given = sf.section.storage
    path = (sf.path.resolve().parent / given) if given else Path(f"{out}.search.db")
    return check_file_target(path, search_inputs(sf), "search storage")


LOCK = b"mergeflow search lock\n"


@contextlib.contextmanager
def study_lock(storage: Path) -> Any:
    """One search process per study: a second one is refused instead of corrupting the trial count."""
    lock = Path(f"{storage}.lock")
    if os.path.lexists(lock) and (
        lock.is_symlink() or not lock.is_file() or lock.read_bytes()[: len(LOCK)] != LOCK
    ):
        raise InputError(f"{lock} exists and is not mergeflow's lock file; move it away")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{storage}: another mergeflow search is running this study") from None
        os.write(fd, LOCK)
        yield
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            lock.unlink()  # ours: made here, or left by a killed search (it carries the mark)


class FixedPick:
    """The values of one finished trial."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        return float(self.params[name])

    def choice(self, name: str, choices: list[Any]) -> Any:
        return self.params[name]
