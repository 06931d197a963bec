"""passthrough: copy one model's tensor unchanged (cast to the output dtype)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from mergeflow.merge.base import OpParams, merge_operator


class PassthroughParams(OpParams):
    model_refs: ClassVar[tuple[str, ...]] = ("source",)
    source: str | None = Field(None, description="Model to copy from. Default: the first model.")


def _source(p: PassthroughParams, names) -> list[str]:
    return [p.source if p.source is not None else names[0]]


@merge_operator("passthrough", params=PassthroughParams, work=0.0, select=_source, elementwise=True)
def passthrough(tensors, base, p: PassthroughParams, mp, ctx):
    """The tensor of ``source`` (default: the first model), unchanged; only that model is read."""
    return tensors[0]
