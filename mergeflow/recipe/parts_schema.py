"""Which tensors a recipe merges, and what happens to the others (pure data)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Patterns(_Strict):
    """Tensors merged: those matching an ``include`` glob and no ``exclude`` glob (names without the
    base-model prefix, e.g. ``encoder.*``)."""

    include: list[str] = Field(default_factory=lambda: ["*"])
    exclude: list[str] = Field(default_factory=list)


class Keep(_Strict):
    keep: str = Field(description="The model whose copy of such a tensor goes into the output.")


MergeOnly = Literal["all", "backbone"] | Patterns
Partial = Literal["error", "drop"] | Keep


def keep_model(partial: Any) -> str | None:
    return partial.keep if isinstance(partial, Keep) else None
