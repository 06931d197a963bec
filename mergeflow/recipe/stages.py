"""Multi-stage recipe files: several merges in one file, later ones using earlier ones' outputs.

Two spellings: mergekit-multi's (YAML documents separated by ``---``, each with a ``name:``, one
without a name being the final merge; a model path equal to a stage's name is that stage's output)
and the native one (one document with a ``stages:`` list of recipes, each with a ``name:``, models
naming a stage as ``{stage: NAME}``). Each stage is a recipe of its own (native or mergekit) and is
validated as one; the stages form a graph that must be acyclic. Every problem of every stage is
reported at once, before anything runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mergeflow.errors import RecipeError
from mergeflow.recipe.schema import Recipe
from mergeflow.recipe.validate import validate
from mergeflow.recipe.yaml_source import YamlSource, read_yaml_docs, sub_source

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
FINAL = "final"  # how messages call an unnamed final stage


@dataclass
class Stage:
    name: str | None  # None: the unnamed final stage
    recipe: Recipe
    text: str  # the stage as a native recipe (YAML): what the model card holds and the fingerprint covers
    uses: tuple[str, ...]  # the stages whose outputs it reads

    @property
    def label(self) -> str:
        return self.name or FINAL


@dataclass
class StageFile:
    stages: list[Stage]  # in an order that runs every stage after those it uses
    final: Stage  # the stage written to OUT: the unnamed one, else the one no other stage uses
    intermediate: Path  # where named stages other than the final are written, one folder each

    def by_name(self) -> dict[str, Stage]:
        return {s.name: s for s in self.stages if s.name is not None}

    def needed_for(self, name: str) -> list[Stage]:
        """The stage called ``name`` and every stage it depends on, in run order."""
        by = self.by_name()
        want, todo = set(), [name]
        while todo:
            n = todo.pop()
            if n not in want:
                want.add(n)
                todo.extend(by[n].uses)
        return [s for s in self.stages if s.name in want]


def is_multistage(docs: list[YamlSource]) -> bool:
    return len(docs) > 1 or (isinstance(docs[0].data, dict) and "stages" in docs[0].data)


def _stage_sources(docs: list[YamlSource]) -> tuple[list[YamlSource], list[str]]:
    if len(docs) > 1:
        return docs, []
    src = docs[0]
    probs = [
        f"{src.where((k,))}: {k}: a multi-stage file has only stages: at its top level"
        for k in src.data
        if k != "stages"
    ]
    if not isinstance(src.data["stages"], list) or not src.data["stages"]:
        return [], [*probs, f"{src.where(('stages',))}: stages: a non-empty list of recipes"]
    return [sub_source(src, ("stages", i)) for i in range(len(src.data["stages"]))], probs


def _stage_ref(value: Any, names: set[str]) -> Any:
    """A converted mergekit model entry naming a stage as a path, as a native stage reference."""
    if isinstance(value, str) and value in names:
        return {"stage": value}
    if isinstance(value, dict) and value.get("path") in names and "lora" not in value:
        return {"stage": value["path"], **{k: v for k, v in value.items() if k != "path"}}
    return value


def native_stage(src: YamlSource, names: set[str]) -> dict[str, Any]:
    """A mergekit stage (its name taken out) as a native recipe, models named like a stage being its output."""
    from mergeflow.recipe.mergekit import convert

    native = convert(src)
    native["models"] = {k: _stage_ref(v, names) for k, v in native["models"].items()}
    return native


def convert_file(docs: list[YamlSource]) -> dict[str, Any]:
    """A mergekit-multi file as one native recipe with a stages: list (mergekit stages converted)."""
    from mergeflow.recipe.mergekit import is_mergekit

    names = {str(d.data["name"]) for d in docs if isinstance(d.data, dict) and d.data.get("name") is not None}
    stages = []
    for d in docs:
        data = dict(d.data) if isinstance(d.data, dict) else {}
        name = data.pop("name", None)
        body = native_stage(YamlSource(data, d.name, d.locations), names) if is_mergekit(data) else data
        stages.append({**({"name": name} if name is not None else {}), **body})
    return {"stages": stages}


def load_stages(
    path: str | Path, intermediate: Path, operators: Mapping[str, Any], steps: Mapping[str, Any] | None = None
) -> StageFile:
    from mergeflow.recipe.mergekit import is_mergekit

    docs = read_yaml_docs(path)
    sources, problems = _stage_sources(docs)
    named: list[tuple[str | None, YamlSource]] = []
    for src in sources:
        if not isinstance(src.data, dict):
            problems.append(f"{src.where(())}: a stage is a recipe (a mapping of keys)")
            continue
        data = dict(src.data)
        name = data.pop("name", None)
        if name is not None and (not isinstance(name, str) or not NAME_RE.fullmatch(name)):
            problems.append(
                f"{src.where(('name',))}: name: {name!r} is not a stage name (letters, digits, _ . -)"
            )
            continue
        if name in {n for n, _ in named}:
            problems.append(
                f"{src.where(('name',))}: name: "
                + (
                    f"two stages are called '{name}'"
                    if name
                    else "two stages have no name; only the final stage may be unnamed"
                )
            )
            continue
        named.append((name, YamlSource(data, src.name, src.locations)))
    names = {n for n, _ in named if n is not None}
    outs = {n: intermediate / n for n in names}
    stages: list[Stage] = []
    for name, src in named:
        label = f"stage '{name or FINAL}'"
        try:
            root = Path(path).resolve().parent
            if is_mergekit(src.data):
                native = native_stage(
                    YamlSource(src.data, f"{src.name} ({label}, mergekit)", src.locations), names
                )
                src, root = YamlSource(native, f"{src.name} ({label}, converted from mergekit)"), Path.cwd()
            else:
                src = YamlSource(src.data, f"{src.name} ({label})", src.locations)
            recipe = validate(
                src, operators, steps, root=root, stages={n: p for n, p in outs.items() if n != name}
            )
        except RecipeError as exc:
            problems.extend(exc.problems)
            continue
        uses = tuple(dict.fromkeys(e.stage for e in recipe.models.values() if e.stage is not None))
        text = yaml.safe_dump({**({"name": name} if name else {}), **src.data}, sort_keys=False)
        stages.append(Stage(name, recipe, text, uses))
    if problems:
        raise RecipeError(problems, str(path))
    return _graph(stages, intermediate, str(path))


def _graph(stages: list[Stage], intermediate: Path, where: str) -> StageFile:
    by = {s.name: s for s in stages}
    order: list[Stage] = []
    state: dict[str | None, int] = {}  # 1: on the current path, 2: done

    def visit(s: Stage, path: list[str]) -> None:
        if state.get(s.name) == 2:
            return
        if state.get(s.name) == 1:
            cycle = " -> ".join([*path[path.index(s.label) :], s.label])
            raise RecipeError([f"{where}: the stages form a cycle: {cycle}"])
        state[s.name] = 1
        for u in s.uses:
            visit(by[u], [*path, s.label])
        state[s.name] = 2
        order.append(s)

    for s in stages:
        visit(s, [])
    unnamed = [s for s in stages if s.name is None]
    used = {u for s in stages for u in s.uses}
    if unnamed:
        if unnamed[0].label in used:
            raise RecipeError([f"{where}: the unnamed final stage cannot be used by another stage"])
        final = unnamed[0]
    else:
        sinks = [s for s in stages if s.name not in used]
        if len(sinks) > 1:
            raise RecipeError(
                [
                    f"{where}: stages {', '.join(s.label for s in sinks)} are used by no other stage; "
                    "leave the name out of the one to write to OUT"
                ]
            )
        final = sinks[0]
    return StageFile(order, final, intermediate)
