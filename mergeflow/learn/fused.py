"""Parameters a model class holds fused but checkpoints store apart: transformers 5 loads a mixture's experts
(``experts.0.w1.weight``, ``experts.1.w1.weight``, ...) into one ``experts.gate_up_proj`` per layer, stacking
the experts and concatenating gate and up. Models that mergeflow runs on weights it builds (refine, activation
matching) rebuild such a parameter from the stored tensors the same way, differentiably (``torch.stack`` and
``torch.cat``), after following transformers' own conversion rules for the class: only the stacking and
concatenating rules are understood; any other leaves the parameter unbuildable (and the caller says so)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Fused:
    """parameter = cat([stack(parts[0]), stack(parts[1]), ...], concat), the stored tensors by name (each part
    in expert order); a single part with ``concat`` None is the stack alone."""

    parts: tuple[tuple[str, ...], ...]
    concat: int | None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for part in self.parts for n in part)

    def build(self, value: Callable[[str], torch.Tensor]) -> torch.Tensor:
        stacks = [torch.stack([value(n) for n in part]) for part in self.parts]
        return stacks[0] if self.concat is None else torch.cat(stacks, self.concat)


Source = str | Fused  # how a parameter is made from the stored tensors: one of them, or several fused


def params_from(names: Mapping[str, Source], value: Callable[[str], torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> tensor, each stored tensor given by ``value(stored name)``."""
    return {m: st.build(value) if isinstance(st, Fused) else value(st) for m, st in names.items()}


def stored_of(source: Source) -> tuple[str, ...]:
    return source.names if isinstance(source, Fused) else (source,)


def fused_params(model: Any, missing: Iterable[str], stored: Mapping[str, torch.Tensor]) -> dict[str, Fused]:
    """For each parameter of ``missing`` (no stored tensor of its name) that a stacking/concatenating rule of
    the class makes from tensors of ``stored`` (by stored name), into its shape: how. Parameters no rule
    explains are left out."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
    except ImportError:  # transformers 4: parameters are stored as they are
        return {}
    rules = get_model_conversion_mapping(model)
    renames = [
        (re.compile(src), tgt)
        for r in rules
        if type(r).__name__ == "WeightRenaming"
        for src, tgt in zip(r.source_patterns, r.target_patterns * len(r.source_patterns), strict=False)
    ]

    def renamed(name: str) -> str:
        for pattern, target in renames:
            name = pattern.sub(target, name)
        return name

    by_loaded = {renamed(n): n for n in stored}  # stored tensors under the names loading gives them
    state = model.state_dict(keep_vars=True)

    def meta(name: str) -> torch.Tensor:
        return torch.empty(stored[name].shape, device="meta")

    out: dict[str, Fused] = {}
    for param in missing:
        for rule in rules:
            fused = _by_rule(rule, param, by_loaded)
            if fused is not None and fused.build(meta).shape == state[param].shape:
                out[param] = fused
                break
    return out


def _by_rule(rule: Any, param: str, by_loaded: Mapping[str, str]) -> Fused | None:
    if type(rule).__name__ != "WeightConverter" or len(rule.target_patterns) != 1:
        return None
    target = rule.target_patterns[0]
    if not param.endswith(target.lstrip("^")):
        return None
    prefix = param[: len(param) - len(target.lstrip("^"))]
    ops = [(type(op).__name__, getattr(op, "dim", None)) for op in rule.operations]
    if (
        not ops
        or ops[0] != ("MergeModulelist", 0)
        or any(n != "Concatenate" for n, _d in ops[1:])
        or len(ops) > 2
    ):
        return None
    near = [(loaded, name) for loaded, name in by_loaded.items() if loaded.startswith(prefix)]  # its module's
    parts = []
    for src in rule.source_patterns:
        found = {}
        pattern = re.compile(re.escape(prefix + src).replace(r"\*", r"(\d+)") + "$")
        for loaded, name in near:
            if m := pattern.match(loaded):
                found[int(m.group(1))] = name
        if not found or sorted(found) != list(range(len(found))):
            return None
        parts.append(tuple(found[i] for i in range(len(found))))
    if len({len(p) for p in parts}) != 1 or (len(ops) == 1) != (len(parts) == 1):
        return None
    return Fused(tuple(parts), ops[1][1] if len(ops) == 2 else None)
