"""Statistics files as merge inputs: opened and checked against their models, then read lazily
tensor by tensor like any model tensor (loads keyed ``stats.MODEL``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mergeflow.io.reader import ModelReader
from mergeflow.io.stats_file import StatsError, StatsInfo, stats_info
from mergeflow.recipe.schema import Recipe


@dataclass
class Stats:
    info: StatsInfo
    reader: ModelReader


def open_stats(recipe: Recipe, readers: Mapping[str, ModelReader]) -> dict[str, Stats]:
    out = {}
    for model, path in recipe.stats.items():
        who = f"stats.{model}"
        info = stats_info(path, who)
        reader = ModelReader(who, path)
        if not set(reader.tensors) & set(readers[model].tensors):
            raise StatsError(
                f"{who}: {path} has no tensor named like a parameter of model '{model}' "
                f"({readers[model].path}): statistics of another model?"
            )
        out[model] = Stats(info, reader)
    return out


def key(model: str) -> str:
    return f"stats.{model}"


@dataclass(frozen=True)
class TensorStats:
    """The statistics of one tensor, checked: where to read them and how to use them."""

    kind: str
    names: tuple[str, ...]  # stats tensor name, per merged model
    models: tuple[str, ...]
    scale: tuple[float, ...]  # per model: the mean of its whole statistics file
    transposed: bool  # the weight is stored [in, out] (GPT-2 Conv1D)

    def merge_fields(self, rows: tuple[int, int] | None, load: Callable) -> dict[str, object]:
        """The Merge task's statistics fields for one row block (Fisher follows the rows; Gram is whole)."""
        rows = rows if self.kind == "fisher" else None
        loads = tuple(load(key(m), n, rows) for m, n in zip(self.models, self.names, strict=True))
        return {"stats": loads, "stats_scale": self.scale, "transposed": self.transposed}


def tensor_stats(
    kind: str,
    tensor: str,
    shape: tuple[int, ...],
    members: list[str],
    names: Mapping[str, str],
    stats: Mapping[str, Stats],
) -> TensorStats | None:
    """The checked statistics of ``tensor``, or None when a model has none for it (the operator's
    fallback merges it). Wrong kind or shape is an error naming the file."""
    transposed = False
    for m in members:
        st = stats[m]
        if st.info.kind != kind:
            raise StatsError(
                f"stats.{m}: {st.info.path} holds {st.info.kind} statistics; this operator needs {kind}"
            )
        info = st.reader.tensors.get(names[m])
        if info is None:
            return None
        transposed = names[m] in st.info.transposed
        if kind == "gram":
            if len(shape) != 2:
                return None
            n_in = shape[0] if transposed else shape[1]
            want: tuple[int, ...] = (n_in, n_in)
        else:
            want = tuple(shape)
        if tuple(info.shape) != want:
            raise StatsError(
                f"stats.{m}: {st.info.path}: tensor {names[m]!r} has shape {list(info.shape)}, but "
                f"model '{m}' needs {list(want)} for {tensor!r}: statistics of another model?"
            )
    return TensorStats(
        kind,
        tuple(names[m] for m in members),
        tuple(members),
        tuple(stats[m].info.mean for m in members),
        transposed,
    )
