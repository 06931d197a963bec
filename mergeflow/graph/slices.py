"""What each output tensor is made of: by default tensor t of every model; with ``slices`` the layer
stack is rebuilt from layer ranges of the models (renumbered), the other tensors stay as they are."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mergeflow.arch.layers import LAYER_RE, PRE_RE, layer_index
from mergeflow.errors import MissingTensor, ShapeMismatch
from mergeflow.io.header import TensorInfo
from mergeflow.io.reader import ModelReader
from mergeflow.recipe.schema import Recipe


@dataclass(frozen=True)
class Item:
    out: str
    info: TensorInfo  # dtype and shape of the output (from the first source)
    names: dict[str, str]  # model -> input tensor name
    models: tuple[str, ...]  # models merged, in order
    copy: bool = False  # copied from its one model (partial: keep), never merged


def with_layer(name: str, i: int) -> str:
    m = LAYER_RE.search(name)
    assert m is not None
    return f"{name[: m.start(1)]}{i}{name[m.end(1) :]}"


def plain_items(ref: ModelReader, order: list[str]) -> list[Item]:
    return [Item(t, info, dict.fromkeys(order, t), tuple(order)) for t, info in ref.tensors.items()]


def slice_items(
    recipe: Recipe, readers: Mapping[str, ModelReader], ref: str, order: list[str]
) -> tuple[list[Item], list[tuple[str, int]]]:
    """(items, for each output layer the (model, layer) it comes from first)."""
    tensors = readers[ref].tensors
    first = min((i for i in map(layer_index, tensors) if i is not None), default=None)
    if first is None:
        raise MissingTensor(f"model '{ref}' has no layer stack to slice")
    template = [t for t in tensors if layer_index(t) == first]
    outside = [t for t in tensors if layer_index(t) is None]
    # embeddings from the models of the first slice, final norm and head from those of the last (as mergekit)
    first_models = [m for m in order if m in {s.model for s in recipe.slices[0].sources}]
    last_models = [m for m in order if m in {s.model for s in recipe.slices[-1].sources}]
    pre = [
        Item(t, tensors[t], dict.fromkeys(first_models, t), tuple(first_models))
        for t in outside
        if PRE_RE.search(t)
    ]
    post = [
        Item(t, tensors[t], dict.fromkeys(last_models, t), tuple(last_models))
        for t in outside
        if not PRE_RE.search(t)
    ]
    items, origin, j = [], [], 0
    for sl in recipe.slices:
        for o in range(sl.sources[0].layers[1] - sl.sources[0].layers[0]):
            origin.append((sl.sources[0].model, sl.sources[0].layers[0] + o))
            for t in template:
                names = {s.model: with_layer(t, s.layers[0] + o) for s in sl.sources}
                infos = [readers[m].info(n) for m, n in names.items()]  # MissingTensor names model and tensor
                if len({i.shape for i in infos}) > 1:
                    raise ShapeMismatch(f"slice sources of output layer {j} differ in shape for {t!r}")
                items.append(Item(with_layer(t, j), infos[0], names, tuple(s.model for s in sl.sources)))
            j += 1
    return pre + items + post, origin
