"""Recipe validation: every problem at once, each with its YAML location, before any weight is read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from mergeflow.errors import RecipeError
from mergeflow.patterns import PatternError, compile_regex, parse_repo_ref
from mergeflow.recipe.model_paths import lora_path, model_path
from mergeflow.recipe.output_checks import check_outputs
from mergeflow.recipe.params import OperatorLike, check_value, field_names, model_refs, owner, whole_problems
from mergeflow.recipe.schema import SECTIONS, MergeSpec, ModelEntry, Recipe
from mergeflow.recipe.stats_check import check_stats
from mergeflow.recipe.yaml_source import YamlSource, read_yaml


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Problems:
    def __init__(self, src: YamlSource) -> None:
        self.src = src
        self.items: list[str] = []

    def add(self, path: tuple[Any, ...], msg: str) -> None:
        self.items.append(f"{self.src.where(path)}: {_dotted(path)}: {msg}")

    def pydantic(self, prefix: tuple[Any, ...], exc: ValidationError) -> None:
        for e in exc.errors():
            loc = tuple(p for p in e["loc"] if p not in ("function-after[_one_selector()]",))
            self.add((*prefix, *loc), e["msg"].removeprefix("Value error, "))


def _sections(data: dict[str, Any], probs: _Problems) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in data:
        if key not in SECTIONS:
            probs.add((key,), f"unknown key; known keys: {', '.join(SECTIONS)}")
    for key, (typ, default, _doc) in SECTIONS.items():
        if key not in data:
            if default is ...:
                probs.add((), f"missing required key '{key}'")
            continue
        value = data[key]
        if key == "models" and isinstance(value, dict):
            # a bare string is shorthand for {path: ...}; normalise first so errors are not doubled by the union
            value = {k: ({"path": v} if isinstance(v, str) else v) for k, v in value.items()}
            typ = dict[str, ModelEntry]
        try:
            out[key] = TypeAdapter(typ).validate_python(value)
        except ValidationError as exc:
            probs.pydantic((key,), exc)
    if "models" in out and not out["models"]:
        probs.add(("models",), "name at least one model")
    return out


def _check_params(
    probs: _Problems,
    path: tuple[Any, ...],
    raw: Mapping[str, Any],
    op: OperatorLike,
    per_model_only: bool,
    models: Mapping[str, Any],
) -> None:
    for key, value in raw.items():
        cls = owner(op, key)
        if per_model_only and cls is op.params:
            probs.add((*path, key), "is a global parameter; set it under merge or overrides[].params")
            continue
        if cls is None:
            allowed = list(field_names(op.model_params)) + (
                [] if per_model_only else list(field_names(op.params))
            )
            probs.add((*path, key), f"unknown parameter; allowed: {', '.join(allowed) or 'none'}")
            continue
        for msg in check_value(cls, key, value):
            probs.add((*path, key), msg)
        if key in model_refs(cls) and value is not None and value not in models:
            probs.add((*path, key), f"names no model; models are: {', '.join(models)}")


def _check_op(
    probs: _Problems,
    path: tuple[Any, ...],
    spec: MergeSpec,
    ops: Mapping[str, OperatorLike],
    models: Mapping[str, Any],
) -> OperatorLike | None:
    if spec.name not in ops:
        probs.add(
            (*path, spec.name) if path[-1] == "merge" else path,
            f"unknown merge operator '{spec.name}'; known: {', '.join(sorted(ops))}",
        )
        return None
    op = ops[spec.name]
    _check_params(probs, (*path, spec.name), spec.params, op, False, models)
    for cls in (op.params, op.model_params):  # per-model keys under merge: are every model's defaults
        for msg in whole_problems(cls, spec.params):
            probs.add((*path, spec.name), msg)
    return op


def _check_step_list(align: list[Any], steps: Mapping[str, Any], probs: _Problems) -> None:
    """Each step's rules about the step list (order, parameters it cannot run without): no model needed."""
    parsed = []
    for step in align:
        info = steps.get(step.name) if step.name in steps else None
        try:
            parsed.append((step.name, info.params.model_validate(step.params) if info is not None else None))
        except ValidationError:
            parsed.append((step.name, None))  # reported by the parameter checks
    for i, (name, _p) in enumerate(parsed):
        rule = getattr(steps.get(name), "in_list", None) if name in steps else None
        why = rule(i, parsed) if rule is not None else None
        if why:
            probs.add(("align", i, name), why)


def validate(
    src: YamlSource,
    operators: Mapping[str, OperatorLike],
    steps: Mapping[str, Any] | None = None,
    root: Path | None = None,
    check_paths: bool = True,
    stages: Mapping[str, Path] | None = None,
) -> Recipe:
    """Validate parsed YAML; raise RecipeError listing every problem. ``stages``: the output folders of
    the stages a model may name (``{stage: NAME}``), in a multi-stage file."""
    probs = _Problems(src)
    steps = steps or {}
    if not isinstance(src.data, dict):
        raise RecipeError([f"{src.name}: a recipe is a mapping of keys (models, merge, ...)"])
    sec = _sections(src.data, probs)
    models: dict[str, ModelEntry] = sec.get("models") or {}
    names = list(models)

    for key in ("base", "anchor"):
        ref = sec.get(key)
        if ref is not None and ref not in models and not (key == "anchor" and ref == "auto"):
            probs.add((key,), f"'{ref}' is not a key of models ({', '.join(names)})")
    check_outputs(sec, src.data, models, probs.add)
    if sec.get("align"):
        _check_step_list(sec["align"], steps, probs)
        if sec.get("anchor") is None and "anchor" not in src.data:
            probs.add(("align",), "alignment steps need an 'anchor' model")
        for i, step in enumerate(sec["align"]):
            if step.name not in steps:
                known = ", ".join(sorted(steps)) or "none in this version"
                probs.add(("align", i, step.name), f"unknown alignment step; known: {known}")
            else:
                _check_params(probs, ("align", i, step.name), step.params, steps[step.name], False, models)
                for key, what, is_it in (
                    ("data", "data file", Path.is_file),
                    ("aligner", "aligner", Path.is_dir),
                ):
                    value = sec["align"][i].params.get(key)
                    if isinstance(value, str):  # a data file or an aligner folder: relative to the recipe
                        path = Path(value) if Path(value).is_absolute() else (root or Path.cwd()) / value
                        if check_paths and not is_it(path):
                            probs.add(("align", i, step.name, key), f"{what} {path} does not exist")
                        params = {**sec["align"][i].params, key: str(path)}
                        sec["align"][i] = sec["align"][i].model_copy(update={"params": params})

    op = _check_op(probs, ("merge",), sec["merge"], operators, models) if "merge" in sec else None
    if op is not None:
        base = sec.get("base")
        if op.needs_base and base is None and "base" not in src.data:
            probs.add(("merge", sec["merge"].name), "this operator needs a 'base' model")
        with_base = op.needs_base or getattr(op, "optional_base", False)
        n = len(models) - (1 if with_base and base in models else 0)
        if models and n < op.min_models:
            probs.add(
                ("merge", sec["merge"].name), f"needs at least {op.min_models} model(s) to merge, got {n}"
            )
        if op.max_models is not None and n > op.max_models:
            probs.add(("merge", sec["merge"].name), f"merges at most {op.max_models} model(s), got {n}")
        for name, entry in models.items():
            _check_params(probs, ("models", name, "params"), entry.params, op, True, models)
            if entry.params:
                for msg in whole_problems(op.model_params, {**sec["merge"].params, **entry.params}):
                    probs.add(("models", name, "params"), msg)

    for i, ov in enumerate(sec.get("overrides") or []):
        if ov.regex is not None:
            try:
                compile_regex(ov.regex)
            except PatternError as exc:
                probs.add(("overrides", i, "regex"), f"invalid regular expression: {exc}")
        ov_op = _check_op(probs, ("overrides", i, "merge"), ov.merge, operators, models) if ov.merge else op
        if ov_op is not None:
            _check_params(probs, ("overrides", i, "params"), ov.params, ov_op, False, models)
            for name, raw in ov.models.items():
                if name not in models:
                    probs.add(("overrides", i, "models", name), "is not a key of models")
                else:
                    _check_params(probs, ("overrides", i, "models", name), raw, ov_op, True, models)

    for i, sl in enumerate(sec.get("slices") or []):
        for k, source in enumerate(sl.sources):
            if source.model not in models:
                probs.add(("slices", i, "sources", k, "model"), f"'{source.model}' is not a key of models")
    if sec.get("slices") and sec.get("align"):
        probs.add(("slices",), "slices and align cannot be combined yet")

    ops: list[tuple[tuple[Any, ...], Any]] = [(("merge",), sec["merge"])] if "merge" in sec else []
    ops += [
        (("overrides", i, "merge"), ov.merge) for i, ov in enumerate(sec.get("overrides") or []) if ov.merge
    ]
    stats = check_stats(sec, ops, operators, root or Path.cwd(), check_paths, probs.add)
    resolved: dict[str, ModelEntry] = {}
    for name, entry in models.items():
        found = (
            model_path(name, entry, root or Path.cwd(), probs, stages)
            if check_paths or entry.stage is not None
            else entry.path
        )
        lora = lora_path(name, entry.lora, root or Path.cwd(), probs, check_paths)
        # a local folder's subfolder is part of its resolved path; a repo id keeps it for the Hub
        keep = entry.stage is None and (
            not check_paths or (found == entry.path and parse_repo_ref(entry.path) is not None)
        )
        resolved[name] = entry.model_copy(
            update={"path": found, "lora": lora, "subfolder": entry.subfolder if keep else None}
        )
    if probs.items:
        raise RecipeError(probs.items, src.name)
    recipe = Recipe(**{**sec, "models": resolved, **({"stats": stats} if stats else {})})
    recipe._where = src.where
    return recipe


def load_recipe(
    path: str | Path,
    operators: Mapping[str, OperatorLike],
    steps: Mapping[str, Any] | None = None,
    check_paths: bool = True,
) -> Recipe:
    """Read and validate a recipe file. Relative model paths resolve against the file's folder; a
    mergekit config (it has ``merge_method``) is converted first, its paths relative to the working
    directory as in mergekit."""
    from mergeflow.recipe.mergekit import convert_located, is_mergekit

    src = read_yaml(path)
    if is_mergekit(src.data):
        native = convert_located(src, src.name)
        return validate(native, operators, steps, root=Path.cwd(), check_paths=check_paths)
    return validate(src, operators, steps, root=Path(path).resolve().parent, check_paths=check_paths)


def recipe_schema(operators: Mapping[str, OperatorLike]) -> dict[str, Any]:
    """JSON Schema of recipes, with each operator's parameters spelled out (gradients allowed on numbers)."""
    from mergeflow.recipe.jsonschema import build_schema

    return build_schema(operators)


__all__ = ["load_recipe", "validate", "recipe_schema", "BaseModel"]
