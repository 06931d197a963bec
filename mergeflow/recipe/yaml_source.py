"""Safe YAML loading that remembers where every value came from.

Validation errors name a YAML location (``file:line:col``), so we keep a map from each
key path (``("merge", "ties", "density")``) to the position of its value.  Only the safe
loader is used: no tag in a recipe can construct a Python object.  The composed node
graph is walked with a node budget before anything is constructed, so alias bombs and
absurd nesting are refused quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mergeflow.errors import InputError, RecipeError
from mergeflow.files import read_text_capped

MAX_NODES = 100_000
MAX_DEPTH = 64
MAX_BYTES = 4 * 1024 * 1024

Path_ = tuple[str | int, ...]


@dataclass
class YamlSource:
    """Parsed YAML data plus the location of every value in it."""

    data: Any
    name: str
    locations: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_) -> str:
        """``file:line:col`` of the longest known prefix of ``path``."""
        for n in range(len(path), -1, -1):
            loc = self.locations.get(tuple(path[:n]))
            if loc is not None:
                return f"{self.name}:{loc[0]}:{loc[1]}"
        return self.name


def _walk(
    node: yaml.Node,
    path: Path_,
    locs: dict[Path_, tuple[int, int]],
    budget: list[int],
    dups: list[tuple[Path_, yaml.Node, int]],
) -> None:
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError(f"more than {MAX_NODES} YAML nodes (alias expansion?)")
    if len(path) > MAX_DEPTH:
        raise ValueError(f"nesting deeper than {MAX_DEPTH} levels")
    locs.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.start_mark)
            if key in seen and key != "<<":  # YAML would keep the last one without a word
                dups.append(((*path, key), key_node, seen[key]))
            seen.setdefault(key, key_node.start_mark.line + 1)
            _walk(value_node, (*path, key), locs, budget, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), locs, budget, dups)


def parse_yaml(text: str, name: str) -> YamlSource:
    docs = parse_yaml_docs(text, name)
    if len(docs) > 1:
        raise RecipeError(
            [
                f"{name}: {len(docs)} YAML documents (separated by ---); a recipe is one, a "
                "multi-stage file is read by mergeflow run/plan/validate"
            ]
        )
    return docs[0]


def parse_yaml_docs(text: str, name: str) -> list[YamlSource]:
    """Every YAML document of ``text`` (separated by ``---``), each with its value locations."""
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise RecipeError([f"{name}: file is larger than {MAX_BYTES // 1024 // 1024} MiB"])
    loader = None
    out: list[YamlSource] = []
    budget = [MAX_NODES]
    try:
        loader = yaml.SafeLoader(text)
        while loader.check_node():
            node = loader.get_node()
            locs: dict[Path_, tuple[int, int]] = {}
            dups: list[tuple[Path_, yaml.Node, int]] = []
            _walk(node, (), locs, budget, dups)
            if dups:
                raise RecipeError(
                    [
                        f"{name}:{k.start_mark.line + 1}:{k.start_mark.column + 1}: {'.'.join(map(str, p))}: duplicate "
                        f"key (first at line {first}); write each key once"
                        for p, k, first in dups
                    ]
                )
            out.append(YamlSource(data=loader.construct_document(node), name=name, locations=locs))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        raise RecipeError([f"{where}: invalid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise RecipeError([f"{name}: invalid YAML: {' '.join(str(exc).split())}"]) from None
    except (ValueError, RecursionError) as exc:
        raise RecipeError([f"{name}: refused: {exc}"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    out = [d for d in out if d.data is not None]  # an empty document (a trailing ---) is nothing
    if not out:
        raise RecipeError([f"{name}: the file is empty"])
    return out


def sub_source(src: YamlSource, prefix: Path_, label: str | None = None) -> YamlSource:
    """The part of ``src`` under ``prefix``, its locations re-rooted (a stage of a stages: list)."""
    data = src.data
    for key in prefix:
        data = data[key]
    n = len(prefix)
    locs = {p[n:]: loc for p, loc in src.locations.items() if p[:n] == prefix}
    return YamlSource(data=data, name=label or src.name, locations=locs)


def _read(path: str | Path) -> str:
    try:
        return read_text_capped(Path(path), "recipe file", MAX_BYTES)
    except InputError as exc:
        raise RecipeError([str(exc)]) from None


def read_yaml_docs(path: str | Path) -> list[YamlSource]:
    return parse_yaml_docs(_read(path), str(path))


def read_yaml(path: str | Path) -> YamlSource:
    return parse_yaml(_read(path), str(path))
