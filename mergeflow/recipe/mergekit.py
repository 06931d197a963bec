"""Accept mergekit's YAML schema: convert a mergekit config into a native recipe (pure data).

Supported: ``models`` (paths or ``{model, parameters}``) or ``slices`` (layer ranges; parameters
with one slice only), ``base_model``, ``merge_method`` among the operators mergeflow has,
``parameters`` at every scope with mergekit's ``filter:`` lists and gradients (emitted so the same
value wins as in mergekit), ``dtype``, ``out_dtype``, ``tokenizer_source`` (``base``,
``union``, ``model:PATH``), the ``tokenizer`` block and ``chat_template``. mergekit's defaults that differ from mergeflow's are written out explicitly.
Anything else is an error naming the key; nothing is silently ignored except ``int8_mask``, which
only changes mergekit's memory use. Remaining differences in what operators compute are listed in
docs/mergekit.md.
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from mergeflow.errors import RecipeError
from mergeflow.recipe.mergekit_keys import DEFAULTS, L1_RESCALE, METHODS, RENAMES, TOP_KEYS
from mergeflow.recipe.mergekit_tokenizer import convert_tokenizer
from mergeflow.recipe.yaml_source import YamlSource


def is_mergekit(data: Any) -> bool:
    return isinstance(data, dict) and "merge_method" in data


def _name(path: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]", "_", PurePath(str(path)).name) or "model"
    name, k = base, 2
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


class _Converter:
    """Builds the native recipe. mergekit resolves a parameter from the most specific scope that
    gives it (slice source / model, then slice, then top level); inside one scope the first matching
    ``filter`` wins. Native overrides apply in order and the last match wins, so scopes are emitted
    from the least to the most specific and each scope's conditions in reverse order."""

    def __init__(self, src: YamlSource) -> None:
        self.src = src
        self.problems: list[str] = []
        self.models: dict[str, dict[str, Any]] = {}
        self.by_path: dict[str, str] = {}
        self.overrides: list[dict[str, Any]] = []
        self.glob: dict[str, Any] = {}
        self.gradients = False
        self.locs: dict[tuple[Any, ...], tuple[int, int]] = {}  # native key path -> its mergekit line, column
        self.method: Any = None

    def at(self, native: tuple[Any, ...], where: tuple[Any, ...]) -> None:
        """The native key ``native`` came from the mergekit key ``where`` (for error locations)."""
        for n in range(len(where), -1, -1):
            loc = self.src.locations.get(tuple(where[:n]))
            if loc is not None:
                self.locs.setdefault(native, loc)
                return

    def fail(self, path: tuple[Any, ...], msg: str) -> None:
        dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        self.problems.append(f"{self.src.where(path)}: {dotted}: {msg} (mergekit config)")

    def model(self, path: Any, where: tuple[Any, ...]) -> str | None:
        if not isinstance(path, str) or not path:
            self.fail(where, "a model is a path string")
            return None
        base, _plus, adapter = path.partition("+")  # mergekit's "model+lora"
        if not base or (_plus and not adapter):
            self.fail(where, f"{path!r}: write a model, or a model and a LoRA adapter as MODEL+ADAPTER")
            return None
        if path not in self.by_path:
            name = _name(
                base if not adapter else f"{PurePath(base).name}+{PurePath(adapter).name}", set(self.models)
            )
            self.by_path[path] = name
            self.models[name] = {"path": base, "params": {}, **({"lora": adapter} if adapter else {})}
            self.at(("models", name), where)
        return self.by_path[path]

    def _set(self, model: str | None, key: str, value: Any, regex: str | None) -> None:
        self.gradients |= isinstance(value, list)
        target = self.glob if model is None else self.models[model]["params"]
        if regex is None and key not in target and not any(_sets(ov, model, key) for ov in self.overrides):
            target[key] = value  # nothing less specific to beat: a plain value
            return
        ov: dict[str, Any] = {"regex": "" if regex is None else regex}
        if model is None:
            ov["params"] = {key: value}
        else:
            ov["models"] = {model: {key: value}}
        self.overrides.append(ov)

    def scope(self, raw: Any, where: tuple[Any, ...], model: str | None, method: Any = None) -> None:
        """Add one mergekit ``parameters`` mapping (a scope) on top of what is already there."""
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.fail(where, "parameters must be a mapping")
            return
        for key, value in raw.items():
            key = str(key)
            if key == "int8_mask":
                continue
            name = RENAMES.get(method, {}).get(key, key)
            self.at(
                ("merge", method, name) if model is None else ("models", model, "params", name), (*where, key)
            )
            if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
                self._set(model, name, value, None)
                continue
            conds: list[tuple[str | None, Any]] = []
            for i, cond in enumerate(value):
                if "value" not in cond or set(cond) - {"filter", "value"}:
                    self.fail((*where, key, i), "expected {filter: TEXT, value: VALUE}")
                    continue
                filt = cond.get("filter")
                conds.append((None if filt in (None, "*") else re.escape(str(filt)), cond["value"]))
                if conds[-1][0] is None:
                    break  # mergekit never looks past an unfiltered condition
            for regex, val in reversed(conds):
                self._set(model, name, val, regex)

    def slices(self, data: dict[str, Any], base: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        raw = data["slices"]
        if not isinstance(raw, list) or not raw:
            self.fail(("slices",), "a non-empty list of {sources: [...]}")
            return out
        for i, sl in enumerate(raw):
            if not isinstance(sl, dict) or not isinstance(sl.get("sources"), list):
                self.fail(("slices", i), "expected {sources: [{model, layer_range}, ...]}")
                continue
            extra = set(sl) - {"sources", "parameters", "base_model"}
            if extra:
                self.fail(("slices", i), f"unknown or unsupported key(s): {', '.join(sorted(extra))}")
            if sl.get("base_model") is not None and self.by_path.get(sl["base_model"]) != base:
                self.fail(
                    ("slices", i, "base_model"),
                    "a per-slice base model differing from base_model is not supported",
                )
            sources: list[dict[str, Any]] = []
            scoped: list[tuple[Any, tuple[Any, ...], str]] = []
            for j, src in enumerate(sl["sources"]):
                where = ("slices", i, "sources", j)
                if not isinstance(src, dict) or set(src) - {"model", "layer_range", "parameters"}:
                    self.fail(where, "expected {model, layer_range, parameters}")
                    continue
                name = self.model(src.get("model"), (*where, "model"))
                rng = src.get("layer_range")
                if not (isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int) for x in rng)):
                    self.fail((*where, "layer_range"), "expected [start, end]")
                    continue
                if name is not None:
                    sources.append({"model": name, "layers": rng})
                    if src.get("parameters") is not None:
                        scoped.append((src["parameters"], (*where, "parameters"), name))
            if len(raw) == 1:  # the slice's scope first: the sources' are more specific
                self.scope(sl.get("parameters"), ("slices", i, "parameters"), None, data.get("merge_method"))
                for params, where, name in scoped:
                    self.scope(params, where, name, data.get("merge_method"))
            elif sl.get("parameters") or scoped:
                self.fail(
                    ("slices", i),
                    "per-slice and per-source parameters are supported with one slice only; "
                    "give them under top-level parameters",
                )
            out.append({"sources": sources})
        return out

    def convert(self) -> dict[str, Any]:
        data = self.src.data
        for key in data:
            if key not in TOP_KEYS:
                self.fail((key,), "unknown mergekit key")
        if "modules" in data:
            self.fail(
                ("modules",), "modules (multi-module architectures) are not supported; use models: or slices:"
            )
        if ("models" in data) == ("slices" in data):
            self.fail(("models",), "give exactly one of models: or slices:")
        if "tokenizer" in data and "tokenizer_source" in data:
            self.fail(("tokenizer",), "give tokenizer or tokenizer_source, not both")
        method = data.get("merge_method")
        if method not in METHODS:
            self.fail(
                ("merge_method",), f"'{method}' is not supported; supported: {', '.join(sorted(METHODS))}"
            )
        base = self.model(data["base_model"], ("base_model",)) if data.get("base_model") is not None else None
        self.scope(data.get("parameters"), ("parameters",), None, method)
        slices = self.slices(data, base) if "slices" in data else []
        entries = data.get("models") or []
        if not isinstance(entries, list):
            self.fail(("models",), "a list of models")
            entries = []
        for i, entry in enumerate(entries):
            path = entry.get("model") if isinstance(entry, dict) else entry
            name = self.model(path, ("models", i, "model") if isinstance(entry, dict) else ("models", i))
            if name is not None and isinstance(entry, dict):
                extra = set(entry) - {"model", "parameters"}
                if extra:
                    self.fail(("models", i), f"unknown key(s): {', '.join(sorted(extra))}")
                self.scope(entry.get("parameters"), ("models", i, "parameters"), name, method)
        if len(slices) > 1 and self.gradients:
            self.fail(
                ("slices",),
                "gradients with several slices are not supported (mergekit evaluates them per "
                "slice, mergeflow over the output layer stack)",
            )
        op_params = {**DEFAULTS.get(method, {}), **self.glob}
        if method == "task_arithmetic":
            op_params.pop("rescale", None)  # mergekit's rescale only acts after a sparsification: none here
        if method in L1_RESCALE and op_params.get("rescale", True) is not False:
            op_params["rescale"] = "l1"  # mergekit's rescale matches L1 norms (its default for these methods)
        models = {n: (m if m["params"] else m["path"]) for n, m in self.models.items()}
        recipe: dict[str, Any] = {"models": models, "merge": {method: op_params}}
        self.at(("merge", method), ("merge_method",))
        for key, mk in (
            ("base", "base_model"),
            ("dtype", "dtype"),
            ("out_dtype", "out_dtype"),
            ("slices", "slices"),
            ("tokenizer", "tokenizer"),
            ("tokenizer", "tokenizer_source"),
            ("chat_template", "chat_template"),
        ):
            if mk in data:
                self.at((key,), (mk,))
        if base is not None:
            recipe["base"] = base
        if slices:
            recipe["slices"] = slices
        if self.overrides:
            recipe["overrides"] = self.overrides
        if self.gradients:
            recipe["outside_position"] = 0.0  # mergekit evaluates gradients at t=0 outside the layer stack
        if "dtype" in data:
            recipe["dtype"] = data["dtype"]
        out = data.get("out_dtype", data.get("dtype"))  # mergekit writes in dtype unless out_dtype is given
        if out is not None:
            recipe["out_dtype"] = out
        convert_tokenizer(data, recipe, self.ref, self.fail)
        if self.problems:
            raise RecipeError(self.problems, self.src.name)
        return recipe

    def ref(self, value: Any, where: tuple[Any, ...]) -> str | None:
        """A mergekit model reference (a path, as in models:) as the native model name."""
        name = self.by_path.get(value) if isinstance(value, str) else None
        if name is None:
            self.fail(where, f"{value!r} is not one of the models")
        return name


def _sets(ov: dict[str, Any], model: str | None, key: str) -> bool:
    return key in ov.get("params", {}) or (model is not None and key in ov.get("models", {}).get(model, {}))


def convert(src: YamlSource) -> dict[str, Any]:
    """The native recipe (as data) equivalent to a mergekit config; RecipeError listing every problem."""
    return _Converter(src).convert()


def convert_located(src: YamlSource, name: str) -> YamlSource:
    """The converted recipe as a YAML source whose keys point at the mergekit lines they came from."""
    conv = _Converter(src)
    return YamlSource(conv.convert(), name, conv.locs)
