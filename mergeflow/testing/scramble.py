"""A model copied with a random exact symmetry planted in every layer (and optionally its residual stream),
written a layer at a time: the recovery tests', the demo's and the benchmarks' scrambled models."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch


def scramble_model(
    src: str | Path,
    dst: str | Path,
    seed: int = 0,
    noise: float = 0.0,
    residual: str | None = None,
    replace: bool = False,
    **which: bool,
) -> Path:
    """Copy a model with a random exact symmetry applied to every layer (see align.scramble), plus
    optional Gaussian noise of relative size ``noise`` on every tensor. ``residual``: also map the residual
    stream by a random ``permutation`` or ``orthogonal`` matrix (norm scales folded). Returns ``dst``.
    Written one layer at a time into one safetensors file (a layer in memory, whatever the model's size):
    the layers in order, then the tensors outside them. ``dst`` must be new or empty (its files would be
    overwritten) unless ``replace``: for a folder of the caller's own making, such as the demo's."""
    from mergeflow.align.scramble import scramble_layer
    from mergeflow.align.stream_map import ResidualMap, apply_layer, fold_layer, map_stream, solve
    from mergeflow.arch.canonical import from_canonical, to_canonical
    from mergeflow.arch.spec import arch_spec
    from mergeflow.io.dtypes import ST_TO_TORCH
    from mergeflow.io.ownership import copy_new
    from mergeflow.io.reader import ModelReader
    from mergeflow.io.stream_save import Entry, save_streamed

    src, dst = Path(src), Path(dst)
    if not replace and dst.is_dir() and any(dst.iterdir()):
        raise FileExistsError(f"{dst}: not empty; scramble_model writes into a new or empty folder")
    reader = ModelReader("src", src)
    shapes = {n: t.shape for n, t in reader.tensors.items()}
    spec = arch_spec(reader.config, reader.tensors, shapes)
    gen = torch.Generator().manual_seed(seed)
    rmap = layout = None
    if residual is not None:  # one map of the stream; orthogonal maps fold the norm scales first
        from mergeflow.align.scramble import random_orthogonal
        from mergeflow.arch.stream_layout import residual_layout

        layout = residual_layout(spec, shapes, reader.config or {})
        d = spec.geometry.d_model
        if residual == "permutation":
            rmap = ResidualMap(perm=torch.randperm(d, generator=gen))
        else:  # a random orthogonal map, projected to the group the norms allow
            group = "orthogonal" if layout.norm == "rms" else "orthogonal_centred"
            rmap = solve(random_orthogonal(d, gen), group)
    fold = residual is not None and residual != "permutation"
    stream = {st.name: st for st in layout.tensors} if rmap is not None and layout is not None else {}
    final = layout.final_norm if stream and layout is not None else None
    gamma = reader.read(final).double() if final else None  # read once for every stream tensor
    done: dict[str, torch.Tensor] = {}  # the current layer's scrambled tensors, until written

    def noisy(t: torch.Tensor) -> torch.Tensor:
        if noise and t.is_floating_point():
            return t + noise * t.std().nan_to_num(0.0) * torch.randn(t.shape, generator=gen)
        return t

    def layer_tensor(layer: Any, name: str) -> torch.Tensor:
        if not done:  # the layer's first tensor: scramble the whole layer
            canon = to_canonical(spec, layer, {n: reader.read(n) for _r, n in layer.names})
            scramble_layer(canon, spec.geometry, gen, **which)
            if rmap is not None:
                if fold:
                    fold_layer(canon, spec.family.norm_offset)
                apply_layer(canon, rmap, fold)
            done.update(from_canonical(spec, layer, canon, torch.float32))
        return noisy(done.pop(name))

    def other(name: str) -> torch.Tensor:
        t = reader.read(name)
        st = stream.get(name)
        if st is not None and rmap is not None and layout is not None:
            t = map_stream(t.double(), st.kind, st.axis, rmap, fold, gamma, layout.norm_offset).float()
        return noisy(t)

    entries, placed = [], set()
    for layer in spec.layers:
        for _role, name in layer.names:
            info = reader.tensors[name]
            entries.append(
                Entry(name, tuple(info.shape), ST_TO_TORCH[info.dtype], partial(layer_tensor, layer, name))
            )
            placed.add(name)
    for name, info in reader.tensors.items():
        if name not in placed:
            entries.append(Entry(name, tuple(info.shape), ST_TO_TORCH[info.dtype], partial(other, name)))
    dst.mkdir(parents=True, exist_ok=True)
    partial_file = dst / ".model.safetensors.partial"  # renamed when whole: no half file under the real name
    save_streamed(entries, partial_file, {}, in_order=True)
    partial_file.replace(dst / "model.safetensors")
    reader.close()
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.suffix != ".safetensors":
            copy_new(f, dst / f.name)  # a link planted under the name is replaced, never written through
    return dst
