"""Operator parameters as recipes see them: split into global and per-model fields,
scalars or gradients (a list of numbers interpolated across layers). No torch here."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from pydantic import BaseModel, ValidationError


class OperatorLike(Protocol):
    """What recipe validation needs to know about a merge operator (see mergeflow.merge.base)."""

    @property
    def params(self) -> type[BaseModel]: ...

    @property
    def model_params(self) -> type[BaseModel]: ...

    @property
    def needs_base(self) -> bool: ...

    @property
    def min_models(self) -> int: ...

    @property
    def max_models(self) -> int | None: ...


def field_names(cls: type[BaseModel]) -> dict[str, str]:
    """Recipe key (alias if any) -> Python field name."""
    return {(f.alias or name): name for name, f in cls.model_fields.items()}


def takes_gradient(cls: type[BaseModel], key: str) -> bool:
    f = cls.model_fields[field_names(cls)[key]]
    return f.annotation in (float, int)


def model_refs(cls: type[BaseModel]) -> tuple[str, ...]:
    """Fields whose value names a model of the recipe."""
    return tuple(getattr(cls, "model_refs", ()))


def owner(op: OperatorLike, key: str) -> type[BaseModel] | None:
    for cls in (op.params, op.model_params):
        if key in field_names(cls):
            return cls
    return None


def check_value(cls: type[BaseModel], key: str, value: Any) -> list[str]:
    """Problems with one recipe value (scalar or gradient) for field ``key`` of ``cls``."""
    if isinstance(value, list) and takes_gradient(cls, key):
        if len(value) < 2:
            return ["a gradient needs at least 2 values"]
        out = []
        for i, v in enumerate(value):
            out += [f"[{i}]: {msg}" for msg in check_value(cls, key, v)]
        return out
    try:
        parsed = cls.model_validate({key: value})
    except ValidationError as exc:
        return [e["msg"] for e in exc.errors()]
    got = getattr(parsed, field_names(cls)[key], None)
    if isinstance(got, float) and not math.isfinite(got):
        return [f"must be a finite number, got {got}"]
    return []


def interpolate(value: Any, position: float) -> Any:
    """Evaluate a gradient at ``position`` in [0, 1] (first layer 0, last layer 1); scalars pass through."""
    if not isinstance(value, list):
        return value
    x = min(max(position, 0.0), 1.0) * (len(value) - 1)
    i = min(int(x), len(value) - 2)
    frac = x - i
    return value[i] * (1 - frac) + value[i + 1] * frac


def split_params(op: OperatorLike, raw: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a mapping of recipe keys into (global params, per-model defaults) for ``op``;
    keys the operator does not know are dropped (they belong to another operator)."""
    glob, per_model = field_names(op.params), field_names(op.model_params)
    return ({k: v for k, v in raw.items() if k in glob}, {k: v for k, v in raw.items() if k in per_model})


def whole_problems(cls: type[BaseModel], raw: Mapping[str, Any]) -> list[str]:
    """Problems of the values taken together (rules across fields, e.g. della's density +/- epsilon in
    (0, 1]), at every position where a gradient has a knot. Fields with problems of their own (see
    :func:`check_value`) and keys of other models are left out: they are reported once, elsewhere."""
    names = field_names(cls)
    vals = {k: v for k, v in raw.items() if k in names and not check_value(cls, k, v)}
    if not vals:
        return []
    knots = {0.0, 1.0} | {
        i / (len(v) - 1) for v in vals.values() if isinstance(v, list) and len(v) > 1 for i in range(len(v))
    }
    for t in sorted(knots):
        try:
            cls.model_validate({k: interpolate(v, t) for k, v in vals.items()})
        except ValidationError as exc:
            where = (
                ""
                if len(knots) == 2 and not any(isinstance(v, list) for v in vals.values())
                else f" (at layer position {t:.3g})"
            )
            return [e["msg"].removeprefix("Value error, ") + where for e in exc.errors()]
    return []
