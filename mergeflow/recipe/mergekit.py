"""Accept mergekit's YAML schema: convert a mergekit config into a native recipe (pure data).

Supported: ``models`` (paths or ``{model, parameters}``), ``base_model``, ``merge_method`` among the
operators mergeflow has, ``parameters`` (global and per model) with mergekit's ``filter:`` lists and
gradients, ``dtype``, ``out_dtype``, ``tokenizer_source`` (``base`` or ``model:PATH``). mergekit's
defaults that differ from mergeflow's are written out explicitly. Anything else is an error naming
the key; nothing is silently ignored except ``int8_mask``, which only changes mergekit's memory use.

Semantics that still differ (documented in docs/mergekit.md): DARE rescaling (mergekit matches the
L1 norm of each task vector, mergeflow scales by 1/density as in the paper) and TIES' sign election
where task vectors cancel exactly (mergekit elects +, mergeflow sign(0) = 0).
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any

from mergeflow.errors import RecipeError
from mergeflow.recipe.yaml_source import YamlSource

METHODS = {"linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp", "passthrough", "breadcrumbs",
           "breadcrumbs_ties", "della", "della_linear", "model_stock", "nearswap", "karcher", "sce", "nuslerp", "multislerp"}
# mergekit's defaults where they differ from mergeflow's (mergekit GeneralizedTaskArithmetic registry)
DEFAULTS = {"dare_ties": {"normalize": False}}
# methods whose random drop mergekit rescales to the task vector's L1 norm by default
L1_RESCALE = {"dare_ties", "dare_linear", "della", "della_linear"}
# mergekit names some parameters after the method
RENAMES = {"nuslerp": {"nuslerp_flatten": "flatten", "nuslerp_row_wise": "row_wise"}}
TOP_KEYS = {"models", "base_model", "merge_method", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "slices", "tokenizer", "chat_template", "name", "modules"}


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
    def __init__(self, src: YamlSource) -> None:
        self.src, self.problems = src, []
        self.models: dict[str, dict[str, Any]] = {}
        self.by_path: dict[str, str] = {}
        self.overrides: list[dict[str, Any]] = []

    def fail(self, path: tuple[Any, ...], msg: str) -> None:
        dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        self.problems.append(f"{self.src.where(path)}: {dotted}: {msg} (mergekit config)")

    def model(self, path: Any, where: tuple[Any, ...]) -> str | None:
        if not isinstance(path, str) or not path:
            self.fail(where, "a model is a path string")
            return None
        if "+" in path:
            self.fail(where, "LoRA adapters ('model+lora') are not supported")
            return None
        if path not in self.by_path:
            name = _name(path, set(self.models))
            self.by_path[path] = name
            self.models[name] = {"path": path, "params": {}}
        return self.by_path[path]

    def params(self, raw: Any, where: tuple[Any, ...], model: str | None) -> dict[str, Any]:
        """Unfiltered values; filtered ones become overrides (regex on the filter substring)."""
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            self.fail(where, "parameters must be a mapping")
            return {}
        plain: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "int8_mask":
                continue
            if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, cond in enumerate(value):
                    if "value" not in cond or set(cond) - {"filter", "value"}:
                        self.fail((*where, key, i), "expected {filter: TEXT, value: VALUE}")
                        continue
                    if cond.get("filter") is None:
                        plain[key] = cond["value"]
                        continue
                    ov: dict[str, Any] = {"regex": re.escape(str(cond["filter"]))}
                    if model is None:
                        ov["params"] = {key: cond["value"]}
                    else:
                        ov["models"] = {model: {key: cond["value"]}}
                    self.overrides.append(ov)
            else:
                plain[key] = value
        return plain

    def convert(self) -> dict[str, Any]:
        data = self.src.data
        for key in data:
            if key not in TOP_KEYS:
                self.fail((key,), "unknown mergekit key")
        for key in ("slices", "modules"):
            if key in data:
                self.fail((key,), "slices and modules (layer stacking) are not supported yet; use models:")
        for key in ("tokenizer", "chat_template"):
            if key in data:
                self.fail((key,), "not supported yet; use tokenizer_source: base or model:PATH")
        method = data.get("merge_method")
        if method not in METHODS:
            self.fail(("merge_method",), f"'{method}' is not supported; supported: {', '.join(sorted(METHODS))}")
        base = self.model(data["base_model"], ("base_model",)) if data.get("base_model") is not None else None
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
                self.models[name]["params"].update(self.params(entry.get("parameters"), ("models", i, "parameters"),
                                                               name))
        given = self.params(data.get("parameters"), ("parameters",), None)
        given = {RENAMES.get(method, {}).get(k, k): v for k, v in given.items()}
        op_params = {**DEFAULTS.get(method, {}), **given}
        if method in L1_RESCALE and op_params.get("rescale", True) is not False:
            op_params["rescale"] = "l1"  # mergekit's rescale matches L1 norms (its default for these methods)
        recipe: dict[str, Any] = {"models": self.models, "merge": {method: op_params}}
        if base is not None:
            recipe["base"] = base
        if self.overrides:
            recipe["overrides"] = self.overrides
        if "dtype" in data:
            recipe["dtype"] = data["dtype"]
        out = data.get("out_dtype", data.get("dtype"))  # mergekit writes in dtype unless out_dtype is given
        if out is not None:
            recipe["out_dtype"] = out
        tok = data.get("tokenizer_source")
        if tok is not None:
            if tok == "base" and base is not None:
                recipe["output"] = {"tokenizer": base}
            elif isinstance(tok, str) and tok.startswith("model:"):
                name = self.by_path.get(tok[len("model:"):])
                if name is None:
                    self.fail(("tokenizer_source",), f"{tok[6:]} is not one of the models")
                else:
                    recipe["output"] = {"tokenizer": name}
            else:
                self.fail(("tokenizer_source",), f"'{tok}' is not supported (base or model:PATH)")
        if self.problems:
            raise RecipeError(self.problems, self.src.name)
        return recipe


def convert(src: YamlSource) -> dict[str, Any]:
    """The native recipe (as data) equivalent to a mergekit config; RecipeError listing every problem."""
    return _Converter(src).convert()
