"""Search spaces inside a recipe: any parameter value may be ``{search: [low, high]}`` (a float),
``{search: [low, high], knots: K}`` (a per-layer gradient of K searched values), ``{search: {choices:
[...]}}`` or a list of strings (one of them); ``log: true`` samples a range on a log scale. A ``merge:``
(top level or an override's) may be ``{search: [ties, dare_ties], params: {...}}`` (one of the operators,
each taking the shared parameters it accepts) or ``{search: {ties: {...}, della: {...}}}`` (each with
its own). ``materialize`` turns the tree into a plain recipe, asking a ``Pick`` for every value: an
Optuna trial while searching, fixed corners while validating, a recorder for ``--dry-run``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

KEYS = {"search", "knots", "log", "params"}


class Pick(Protocol):
    def float(self, name: str, low: float, high: float, log: bool) -> float: ...

    def choice(self, name: str, choices: list[Any]) -> Any: ...


@dataclass(frozen=True)
class Dim:
    name: str
    kind: str  # float | choice
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "choice":
            return f"one of {', '.join(map(str, self.choices))}"
        return f"[{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"


def is_space(node: Any) -> bool:
    return isinstance(node, dict) and "search" in node and set(node) <= KEYS


def dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class SpaceError(Exception):
    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.path = path


def check_space(node: dict[str, Any], path: tuple[Any, ...], merge: bool) -> None:
    """Raise SpaceError for a malformed search node (before any value is drawn)."""
    spec = node["search"]
    if "params" in node and not merge:
        raise SpaceError(path, "'params' belongs to a search over merge operators only")
    if merge:
        if isinstance(spec, dict) and spec and all(isinstance(k, str) for k in spec):
            return
        if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
            return
        raise SpaceError(
            (*path, "search"),
            "a search over operators is a list of operator names, or a mapping of "
            "operator name -> its parameters",
        )
    if isinstance(spec, dict):
        choices = spec.get("choices")
        if set(spec) != {"choices"} or not isinstance(choices, list) or not choices:
            raise SpaceError((*path, "search"), "a choice is {choices: [value, ...]} with at least one value")
        return
    if isinstance(spec, list) and spec and all(isinstance(s, str) for s in spec):
        return
    nums = isinstance(spec, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in spec
    )
    if not nums or len(spec) != 2:
        raise SpaceError(
            (*path, "search"), "a range is [low, high]; a choice among values is {choices: [...]}"
        )
    low, high = float(spec[0]), float(spec[1])
    if not low < high:
        raise SpaceError((*path, "search"), f"a range needs low < high, got [{spec[0]}, {spec[1]}]")
    if node.get("log") and low <= 0:
        raise SpaceError((*path, "log"), "a log-scale range needs low > 0")
    knots = node.get("knots")
    if knots is not None and (not isinstance(knots, int) or isinstance(knots, bool) or not 2 <= knots <= 64):
        raise SpaceError((*path, "knots"), "knots is an integer from 2 to 64 (values along the layers)")


def materialize(
    tree: Any, pick: Pick, accepts: Callable[[str, str], bool], path: tuple[Any, ...] = ()
) -> Any:
    """``tree`` with every search node replaced by the value ``pick`` gives. ``accepts(op, key)``: whether
    operator ``op`` takes parameter ``key`` (shared parameters of an operator search go where accepted)."""
    merge = bool(path) and path[-1] == "merge"
    if is_space(tree):
        check_space(tree, path, merge)
        name, spec = dotted(path), tree["search"]
        if merge:
            options = list(spec)
            op = pick.choice(name, options)
            own = spec[op] if isinstance(spec, dict) else None
            shared = {k: v for k, v in (tree.get("params") or {}).items() if accepts(op, k)}
            params = {**shared, **(own or {})}
            return {op: materialize(params, pick, accepts, (*path, op))}
        if isinstance(spec, dict) or all(isinstance(s, str) for s in spec):
            return pick.choice(name, list(spec["choices"] if isinstance(spec, dict) else spec))
        low, high, log = float(spec[0]), float(spec[1]), bool(tree.get("log"))
        if tree.get("knots"):
            return [pick.float(f"{name}[{k}]", low, high, log) for k in range(tree["knots"])]
        return pick.float(name, low, high, log)
    if isinstance(tree, dict):
        return {k: materialize(v, pick, accepts, (*path, k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [materialize(v, pick, accepts, (*path, i)) for i, v in enumerate(tree)]
    return tree


class Corner:
    """Fixed picks: every range at its low (or high) end, choice ``k`` mod its length; records what it drew."""

    def __init__(self, end: str = "low", k: int = 0) -> None:
        self.end, self.k = end, k
        self.dims: dict[str, Dim] = {}

    def float(self, name: str, low: float, high: float, log: bool) -> float:
        self.dims.setdefault(name, Dim(name, "float", low, high, log))
        return low if self.end == "low" else high

    def choice(self, name: str, choices: list[Any]) -> Any:
        self.dims.setdefault(name, Dim(name, "choice", choices=tuple(choices)))
        return choices[self.k % len(choices)]


def corners(tree: Any, accepts: Callable[[str, str], bool]) -> tuple[list[Any], dict[str, Dim]]:
    """Recipes at the corners of the space (low and high ends, every choice at least once), and every
    dimension seen. The search is valid when each of them is."""
    widest = 1
    dims: dict[str, Dim] = {}
    out = []
    k = 0
    while k < widest:
        for end in ("low", "high"):
            c = Corner(end, k)
            out.append(materialize(tree, c, accepts))
            dims.update(c.dims)
            widest = max([widest, *(len(d.choices) for d in dims.values() if d.kind == "choice")])
        k += 1
    return out, dims
