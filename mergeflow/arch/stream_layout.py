"""Where a model's tensors outside the layer stack touch the residual stream.

Inside the stack the canonical roles say it (``mergeflow.align.stream_map.LAYER_AXES``); outside it the
family lists the stream's tensors by name suffix with the axis of the stream (embeddings, their norm),
its final norm and the head weights that read the final norm. Every other tensor must not touch the
stream: one with an axis of the stream's width that is not described is refused by name, so a map
never silently skips a tensor and changes the function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mergeflow.arch.layers import layer_index
from mergeflow.arch.spec import ArchSpec
from mergeflow.errors import UnsupportedArchitecture

_INSIDE_OK = ("q_norm.weight", "k_norm.weight")  # per-head norms (QK-norm) inside a layer


@dataclass(frozen=True)
class StreamTensor:
    name: str
    axis: int
    kind: str  # stream | final_norm | final_norm.b | head


@dataclass(frozen=True)
class ResidualLayout:
    tensors: tuple[StreamTensor, ...]
    norm: str  # layer | rms
    post_ln: bool
    final_norm: str | None  # weight name
    no_orthogonal: str  # why an orthogonal map is not exact for this checkpoint ("" when it is)
    norm_offset: float = 0.0  # norms scale by (stored weight + this): Family.norm_offset

    def get(self, name: str) -> StreamTensor | None:
        return next((t for t in self.tensors if t.name == name), None)


def residual_layout(
    spec: ArchSpec, shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any]
) -> ResidualLayout:
    fam, d = spec.family, spec.geometry.d_model
    if not fam.stream:
        raise UnsupportedArchitecture(
            f"{fam.name}: its residual stream is not described; it cannot be mapped"
        )
    in_layers = spec.layer_of()
    found: list[StreamTensor] = []
    final_w = None
    for name, shape in shapes.items():
        if name in in_layers:
            continue
        kind: str | None = None
        axis = 0
        for suffix, ax in fam.stream:
            if name.endswith(suffix):
                kind, axis = "stream", ax
        if fam.final_norm is not None and layer_index(name) is None:
            stem = name.rsplit(".", 1)[0]
            if stem == fam.final_norm or stem.endswith("." + fam.final_norm):
                kind, axis = ("final_norm" if name.endswith(".weight") else "final_norm.b"), 0
                final_w = name if name.endswith(".weight") else final_w
        if any(name == h or name.endswith("." + h) for h in fam.head):
            kind, axis = "head", len(shape) - 1
        if kind is not None:
            if axis >= len(shape) or shape[axis] != d:
                raise UnsupportedArchitecture(
                    f"tensor {name!r} (shape {list(shape)}) should have the residual "
                    f"stream's width {d} on axis {axis}"
                )
            found.append(StreamTensor(name, axis, kind))
            continue
        known = any(o in name for o in fam.outside) or name.endswith(_INSIDE_OK)
        if d in shape and not known:
            raise UnsupportedArchitecture(
                f"{fam.name}: tensor {name!r} (shape {list(shape)}) may touch the residual stream and is not "
                "described; a residual map cannot be applied to this checkpoint"
            )
    if not any(t.kind == "stream" for t in found):
        raise UnsupportedArchitecture(
            f"{fam.name}: no embedding tensors found; the residual stream cannot be mapped"
        )
    why = ""
    if fam.post_ln:
        why = "post-norm blocks normalise the stream itself"
    elif fam.norms_on_outputs():
        why = (
            "the norms on the attention's and the FFN's outputs scale each coordinate of what is added to the "
            "stream, which only a permutation commutes with"
        )
    elif not any(t.kind == "head" for t in found):
        tied = bool(config.get("tie_word_embeddings", True))
        why = (
            "its output head is tied to the input embeddings, and folding the final norm's scale into the "
            "head would untie them (orthogonal: {untie: true} writes an untied output)"
            if tied
            else "no head reads the final norm, so the outputs would be rotated"
        )
    return ResidualLayout(tuple(found), fam.norm, fam.post_ln, final_w, why, fam.norm_offset)
