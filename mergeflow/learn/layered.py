"""Refinement a layer at a time (refine's ``mode: layered``), for models whose whole-model refinement does
not fit: the memory is both models in float32 (8 bytes per parameter) and one layer's working set.

The model is a skeleton (``load_model(skeleton=True)``: no weights of its own). Each decoder layer's module
is replaced in its parent by a wrapper that, inside ``torch.utils.checkpoint``, builds that layer's weights
(the source's layer under the current stream map and FFN permutation, interpolated with the anchor's) and
runs the layer on them; backward recomputes them, so one layer's float32 weights and their gradients exist
at a time. The FFN permutations are learned on candidate edges (``mergeflow.learn.edges``). The tensors
outside the stack (embeddings, final norm, head) are built whole each step, as in the whole-model mode.
The final map and permutations are applied exactly in float64, a layer at a time."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from mergeflow.align.permute import apply_ffn
from mergeflow.align.stream_map import ResidualMap, solve
from mergeflow.arch.canonical import to_canonical
from mergeflow.arch.spec import ArchSpec, LayerNames
from mergeflow.errors import InputError
from mergeflow.learn.edges import EdgePerm, Matcher, candidate_edges, permuted_by_edges
from mergeflow.learn.fused import Source, params_from, stored_of
from mergeflow.learn.refine import (
    Problem,
    RefineReport,
    _batch,
    _loss,
    module_names,
    moved_by,
    train,
    transform_layer,
    transform_stream,
)
from mergeflow.stats.model import max_length_for

Build = Callable[[], dict[str, torch.Tensor]]


class _Checkpointed(torch.nn.Module):
    """Runs ``inner`` (not registered: its parameters are not the model's) on the weights ``build`` makes,
    under activation checkpointing; other attributes are the inner layer's (e.g. ``attention_type``)."""

    def __init__(self, inner: torch.nn.Module, build: Build) -> None:
        super().__init__()
        self.__dict__["_inner"], self.__dict__["_build"] = inner, build

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return checkpoint(self._run, *args, use_reentrant=False, **kwargs)

    def _run(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.__dict__["_inner"], self.__dict__["_build"](), args, kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_inner"], name)


def layer_module(model: torch.nn.Module, module_params: list[str]) -> str:
    """The dotted path of the smallest module holding these parameters (a decoder layer's)."""
    parts = [n.split(".") for n in module_params]
    prefix: list[str] = []
    for group in zip(*parts, strict=False):
        if len(set(group)) != 1:
            break
        prefix.append(group[0])
    path = ".".join(prefix)
    own = {f"{path}.{n}" for n, _ in model.get_submodule(path).named_parameters()} if path else set()
    if not path or not own >= set(module_params):
        raise InputError(
            f"refine (mode: layered): the parameters of a layer ({module_params[0]}, ...) are not one module "
            "of the model class; use mode: whole"
        )
    return path


@contextmanager
def wrapped(model: torch.nn.Module, builds: dict[str, Build]) -> Iterator[None]:
    """Each module path of ``builds`` replaced by its checkpointed wrapper for the duration."""
    originals = {}
    for path, build in builds.items():
        parent, _, child = path.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        originals[path] = (owner, child, owner.get_submodule(child))
        setattr(owner, child, _Checkpointed(originals[path][2], build))
    try:
        yield
    finally:
        for owner, child, inner in originals.values():
            setattr(owner, child, inner)


def refine_layered(
    job: Problem, out_dtype: torch.dtype, progress: Callable[[int, float], None] | None = None
) -> tuple[dict[str, torch.Tensor], RefineReport]:
    """The layered mode, with ``job.anchor`` and ``job.source`` float32 and the result in ``out_dtype``: the
    layers' and the stream's tensors only. ``job.source`` is consumed: each layer's tensors leave it as the
    final transform of that layer is made, so the two never add up at 7B size. The models may be held on the
    host while ``job.device`` is a GPU: a layer's tensors then go to the GPU when its weights are built (and
    again when rebuilt), the tensors outside the stack once, and the result comes back to the host."""
    loaded, spec, layout, data, group, fold, device = (
        job.loaded, job.spec, job.layout, job.data, job.group, job.fold, job.device
    )  # fmt: skip
    anchor, source = job.anchor, job.source
    hold = next(iter(source.values())).device  # where the models are held (the host, or the device)
    start = time.perf_counter()
    report = RefineReport(job.model, mode="layered")
    p = job.p.model_copy(update={"max_length": max_length_for(loaded, data, job.p.max_length)})
    names = module_names(loaded, anchor)  # module -> stored
    d = spec.geometry.d_model
    omat = torch.eye(d, dtype=torch.float64, device=device, requires_grad=group is not None)
    edges = [
        _edges(spec, lay, source, anchor, p.candidates, device) if p.permutations else None
        for lay in spec.layers
    ]
    now: dict[str, Any] = {}  # this step's interpolation weight, stream map and permutations

    def build_for(lay: LayerNames, k: int, local: dict[str, Source]) -> Build:
        def build() -> dict[str, torch.Tensor]:
            e, perm = edges[k], now["perms"][k]
            stored = {n: source[n].to(device, non_blocking=True) for n in lay.tensors()}
            moved = transform_layer(
                spec,
                lay,
                stored,
                now["rmap"],
                None if e is None else permuted_by_edges(e, perm),
                fold,
                torch.float32,
                torch.float32,
            )
            return params_from(
                local,
                lambda st: torch.lerp(
                    anchor[st].to(device), moved[st] if st in moved else source[st].to(device), now["lam"]
                ),
            )

        return build

    builds, inside = {}, set()
    for k, lay in enumerate(spec.layers):
        own = set(lay.tensors())
        path = layer_module(loaded.model, [m for m, st in names.items() if own.intersection(stored_of(st))])
        mods = [m for m in names if m.startswith(path + ".")]  # with any the alignment leaves as they are
        builds[path] = build_for(lay, k, {m[len(path) + 1 :]: names[m] for m in mods})
        inside.update(mods)
    outer = {m: st for m, st in names.items() if m not in inside}
    # the tensors outside the layer stack, moved to the device once
    outside = {n for st in outer.values() for n in stored_of(st)} | {st.name for st in layout.tensors}
    near = {st: source[st].to(device) for st in outside}
    near_anchor = {st: anchor[st].to(device) for st in outside}
    if hasattr(loaded.model.config, "use_cache"):  # a KV cache would grow again when a layer is recomputed
        loaded.model.config.use_cache = False

    def step_loss(lam: float, idx: np.ndarray) -> torch.Tensor:
        now["perms"] = matcher.hard()
        now["rmap"] = ResidualMap(matrix=omat.float()) if group is not None else None
        now["lam"] = lam
        stream = transform_stream(layout, near, now["rmap"], fold, torch.float32, torch.float32)
        params = params_from(outer, lambda st: torch.lerp(near_anchor[st], stream.get(st, near[st]), lam))
        return _loss(loaded, params, _batch(data, idx), p, device)

    with wrapped(loaded.model, builds), Matcher(edges) as matcher:
        train(p, len(data), omat, group, [e.z for e in edges if e is not None], step_loss, report, progress)
        hard = matcher.hard()  # the final matchings
    with torch.no_grad():
        final = solve(omat.detach(), group) if group is not None else None
        out = {n: t.to(hold) for n, t in transform_stream(layout, near, final, fold, out_dtype).items()}
        for lay, perm in zip(spec.layers, hard, strict=True):
            stored = {
                n: source.pop(n).to(device) for n in lay.tensors()
            }  # its result takes the layer's place
            moved = transform_layer(
                spec,
                lay,
                stored,
                final,
                None if perm is None else partial(apply_ffn, perm=perm),
                fold,
                out_dtype,
            )
            out.update({n: t.to(hold) for n, t in moved.items()})
        report.moved = moved_by(None if final is None else final.as_matrix(d), hard)
        report.moved["candidate_edges"] = sum(len(e.new) for e in edges if e is not None)
    report.seconds = time.perf_counter() - start
    return out, report


def _edges(
    spec: ArchSpec,
    lay: LayerNames,
    source: dict[str, torch.Tensor],
    anchor: dict[str, torch.Tensor],
    k: int,
    device: torch.device,
) -> EdgePerm:
    local = to_canonical(spec, lay, {n: source[n].to(device) for n in lay.tensors()}, torch.float32)
    anc = to_canonical(spec, lay, {n: anchor[n].to(device) for n in lay.tensors()}, torch.float32)
    new, old = candidate_edges(local, anc, k)
    return EdgePerm(new, old, local["down"].shape[1], device)
