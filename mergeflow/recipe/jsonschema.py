"""JSON Schema of recipe files, for editor completion (``mergeflow schema``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, create_model

from mergeflow.recipe.params import OperatorLike, takes_gradient
from mergeflow.recipe.schema import SECTIONS


def param_properties(cls: type[BaseModel]) -> dict[str, Any]:
    """Schema properties of one parameter model; numeric ones also accept a gradient (list of >= 2)."""
    schema = cls.model_json_schema(by_alias=True)
    props: dict[str, Any] = {}
    for key, prop in schema.get("properties", {}).items():
        prop = dict(prop)
        if takes_gradient(cls, key):
            item = {k: v for k, v in prop.items() if k not in ("default", "title", "description")}
            prop = {
                "description": prop.get("description", ""),
                "default": prop.get("default"),
                "anyOf": [item, {"type": "array", "items": item, "minItems": 2}],
            }
        prop.pop("title", None)
        props[key] = prop
    return props


def operator_schema(op: OperatorLike, per_model_only: bool = False) -> dict[str, Any]:
    props = param_properties(op.model_params)
    if not per_model_only:
        props = {**param_properties(op.params), **props}
    return {"type": "object", "properties": props, "additionalProperties": False}


def build_schema(operators: Mapping[str, OperatorLike]) -> dict[str, Any]:
    fields = {k: (typ, default) for k, (typ, default, _doc) in SECTIONS.items()}
    model = create_model("Recipe", **fields)  # type: ignore[call-overload]
    schema = model.model_json_schema()
    schema["title"] = "mergeflow recipe"
    schema["additionalProperties"] = False
    for key, (_t, _d, doc) in SECTIONS.items():
        schema["properties"][key]["description"] = doc
    merge = {
        "description": SECTIONS["merge"][2],
        "anyOf": [
            {"type": "string", "enum": sorted(operators)},
            *[
                {
                    "type": "object",
                    "properties": {name: {"anyOf": [operator_schema(op), {"type": "null"}]}},
                    "required": [name],
                    "additionalProperties": False,
                }
                for name, op in sorted(operators.items())
            ],
        ],
    }
    schema["properties"]["merge"] = merge
    defs = schema.get("$defs", {})
    defs["MergeSpec"] = {k: v for k, v in merge.items() if k != "description"}
    defs["AlignStep"] = {
        "anyOf": [{"type": "string"}, {"type": "object", "minProperties": 1, "maxProperties": 1}]
    }
    return schema
