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


def _walk(node: yaml.Node, path: Path_, locs: dict[Path_, tuple[int, int]], budget: list[int],
          dups: list[tuple[Path_, yaml.Node, int]]) -> None:
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
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise RecipeError([f"{name}: file is larger than {MAX_BYTES // 1024 // 1024} MiB"])
    loader = None
    try:
        loader = yaml.SafeLoader(text)
        node = loader.get_single_node()
        if node is None:
            raise RecipeError([f"{name}: the file is empty"])
        locs: dict[Path_, tuple[int, int]] = {}
        dups: list[tuple[Path_, yaml.Node, int]] = []
        _walk(node, (), locs, [MAX_NODES], dups)
        if dups:
            raise RecipeError([
                f"{name}:{k.start_mark.line + 1}:{k.start_mark.column + 1}: {'.'.join(map(str, p))}: duplicate key "
                f"(first at line {first}); write each key once" for p, k, first in dups
            ])
        data = loader.construct_document(node)
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
    return YamlSource(data=data, name=name, locations=locs)


def read_yaml(path: str | Path) -> YamlSource:
    p = Path(path)
    try:
        text = read_text_capped(p, "recipe file", MAX_BYTES)
    except InputError as exc:
        raise RecipeError([str(exc)]) from None
    return parse_yaml(text, str(p))
