"""Activation matching: pair the units of two models by how their activations correlate on the same data.

Both models run through the same batches (the anchor's transformers class on each model's stored tensors,
through ``torch.func.functional_call``); forward hooks collect, per layer, the FFN's hidden activations (the
input of its down projection), the attention heads' outputs (the input of the output projection) and the
residual stream (the input of the first block and every block's output). Each pair of activation sets is
summed into float64 running moments, never kept: memory is one accumulator per hooked layer, and layers are
taken in passes over the data so that the accumulators of a pass fit ``budget`` bytes (a pass stops each
forward after its last layer).

The moments give the same assignment problems weight matching solves: FFN units by Pearson correlation;
key/value groups by how well their heads' outputs can be aligned (nuclear norm of the cross-covariance over
the traces: invariant to the rotations and scales the rotate and rescale steps undo); the stream by the
correlation of its coordinates (a permutation) or by orthogonal Procrustes on the cross second moment, each
stream point scaled to unit mean square so that every layer counts alike.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from mergeflow.align.matching import Found, Want
from mergeflow.align.permute import assignment
from mergeflow.align.stream_map import solve
from mergeflow.align.unit_match import best_assignment
from mergeflow.arch.spec import ArchSpec
from mergeflow.errors import InputError
from mergeflow.learn.fused import Source, params_from
from mergeflow.learn.moments import Moments, head_score
from mergeflow.learn.refine import module_names
from mergeflow.stats.data import Data, batches
from mergeflow.stats.model import Loaded, max_length_for

BUDGET = 1 << 30  # bytes of accumulators per pass over the data


@dataclass
class MatchReport:
    section = "activations"  # where the alignment report lists it
    model: str
    examples: int = 0
    rows: int = 0  # activation rows (tokens or images) per point
    passes: int = 0
    seconds: float = 0.0
    agreement: dict[str, float] = field(default_factory=dict)  # mean correlation, identity vs matched

    def summary(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "examples": self.examples,
            "rows": self.rows,
            "passes": self.passes,
            "seconds": round(self.seconds, 3),
            **{k: round(v, 6) for k, v in self.agreement.items()},
        }


class _Stop(Exception):
    """Raised by the last hooked block of a pass: nothing after it is needed."""


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and x.dim() == 3 and x.shape[:2] == mask.shape:
        return x[mask.bool()]
    return x.reshape(-1, x.shape[-1])


def _unit_rms(x: torch.Tensor) -> torch.Tensor:
    return x / x.double().pow(2).mean().sqrt().clamp_min(1e-30).to(x.dtype)


@dataclass
class _Points:
    """Where the hooks go, per layer index: the FFN's down projection, the attention output projection, the
    block."""

    ffn: dict[int, Any]
    heads: dict[int, Any]
    block: dict[int, Any]


def _points(loaded: Loaded, spec: ArchSpec, names: dict[str, Source], ffn: bool = True) -> _Points:
    """``ffn``: the FFNs' inputs are wanted (a mixture's layers have no one FFN to watch)."""
    stored_to_mod = {st: mod for mod, st in names.items()}
    model = loaded.model
    pts = _Points({}, {}, {})
    for lay in spec.layers:
        for role, where in (("down", pts.ffn), ("o", pts.heads))[0 if ffn else 1 :]:
            mod = stored_to_mod.get(lay.get(role) or "")
            if mod is None:
                raise InputError(
                    f"activation matching: no module of {type(model).__name__} holds {lay.get(role)!r}"
                )
            where[lay.index] = model.get_submodule(mod.rsplit(".", 1)[0])
        found = re.match(rf"^(.*?\.{lay.index})\.", stored_to_mod[lay.get("o") or ""])
        if found is None:
            raise InputError(f"activation matching: cannot find the block of layer {lay.index}")
        pts.block[lay.index] = model.get_submodule(found.group(1))
    return pts


def match_activations(
    loaded: Loaded,
    spec: ArchSpec,
    anchor: dict[str, torch.Tensor],
    source: dict[str, torch.Tensor],
    data: Data,
    want: Want,
    model: str,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    budget: int = BUDGET,
) -> tuple[Found, MatchReport]:
    """The permutations (and stream map) that match ``source``'s units to ``anchor``'s on ``data``; both
    models as stored-name state dicts, run through ``loaded``'s model class."""
    start = time.perf_counter()
    g = spec.geometry
    report = MatchReport(model)
    data = data.subset(want.batches * want.batch_size)
    report.examples = len(data)
    max_length = max_length_for(loaded, data, want.max_length)
    names = module_names(loaded, anchor)
    params = {
        "anchor": params_from(names, lambda st: anchor[st].to(device=device, dtype=torch.float32)),
        "source": params_from(names, lambda st: source[st].to(device=device, dtype=torch.float32)),
    }
    pts = _points(loaded, spec, names, want.ffn)
    layers = [lay.index for lay in spec.layers]
    f = spec.ffn_width(lambda n: anchor[n].shape)
    per_layer = 8 * ((f * f if want.ffn else 0) + ((g.h_q * g.d_h) ** 2 if want.heads else 0)) or 1
    step = max(1, budget // per_layer)
    stream = Moments(g.d_model, g.d_model, device) if want.stream else None
    found: dict[int, dict[str, torch.Tensor]] = {i: {} for i in layers}
    agree: dict[str, list[float]] = {}
    if not want.ffn and not want.heads:
        step = len(layers)
    for lo in range(0, len(layers), step):
        group = layers[lo : lo + step]
        report.passes += 1
        moments = _collect(
            loaded, pts, params, data, want, group, lo == 0, stream, device, max_length, g, progress, report
        )
        for i in group:  # solved (and freed) as soon as its pass is over
            ffn, heads = moments.pop(("ffn", i), None), moments.pop(("heads", i), None)
            if ffn is not None:
                corr = ffn.correlation()
                perm = best_assignment(corr)  # FFN widths of 10^4 units: the certified sparse solver
                found[i]["ffn"] = perm
                _agree(agree, "ffn", corr, perm)
            if heads is not None:
                found[i]["heads"] = assignment(head_score(heads, g.h_q, g.h_kv, g.d_h))
    rmap = None
    if stream is not None:
        assert want.stream is not None
        corr = stream.correlation()
        rmap = solve(
            corr.T if want.stream == "permutation" else (stream.ba / max(stream.n, 1)).T, want.stream
        )
        if rmap.perm is not None:
            _agree(agree, "stream", corr, rmap.perm)
    report.agreement = {k: sum(v) / len(v) for k, v in sorted(agree.items())}
    report.seconds = time.perf_counter() - start
    return Found(rmap, found), report


def _agree(out: dict[str, list[float]], what: str, corr: torch.Tensor, perm: torch.Tensor) -> None:
    """Mean correlation of the units paired as they are (identity) and as matched."""
    n = corr.shape[1]
    out.setdefault(f"{what}_correlation_identity", []).append(float(torch.diagonal(corr).mean()))
    out.setdefault(f"{what}_correlation_matched", []).append(float(corr[perm, torch.arange(n)].mean()))


def _collect(
    loaded: Loaded,
    pts: _Points,
    params: dict[str, dict[str, torch.Tensor]],
    data: Data,
    want: Want,
    group: list[int],
    first: bool,
    stream: Moments | None,
    device: torch.device,
    max_length: int,
    g: Any,
    progress: Callable[[int], None] | None,
    report: MatchReport,
) -> dict[tuple[str, int], Moments]:
    """One pass over the data with hooks on ``group``'s layers; the moments of each (kind, layer)."""
    moments: dict[tuple[str, int], Moments] = {}
    cache: dict[tuple[str, int], torch.Tensor] = {}
    state: dict[str, Any] = {"mask": None, "who": "anchor"}

    def take(key: tuple[str, int], x: torch.Tensor, acc: Callable[[], Moments]) -> None:
        x = _rows(x.detach(), state["mask"])
        if state["who"] == "anchor":
            cache[key] = x
            return
        a = cache.pop(key)
        if key[0] == "stream":
            a, x = _unit_rms(a), _unit_rms(x)
        acc().add(a, x)

    def acc_for(key: tuple[str, int], width: int) -> Callable[[], Moments]:
        if key[0] == "stream":
            return lambda: stream  # type: ignore[return-value]
        return lambda: moments.setdefault(key, Moments(width, width, device))

    handles = []
    for i in group:
        for kind, mods, on in (("ffn", pts.ffn, want.ffn), ("heads", pts.heads, want.heads)):
            if on:
                handles.append(
                    mods[i].register_forward_pre_hook(
                        lambda _m, args, key=(kind, i): take(key, args[0], acc_for(key, args[0].shape[-1]))
                    )
                )

        def out_hook(_m: Any, _args: Any, out: Any, i: int = i) -> None:
            if stream is not None:
                take(
                    ("stream", i),
                    out[0] if isinstance(out, tuple) else out,
                    acc_for(("stream", i), g.d_model),
                )
            if i == group[-1]:
                raise _Stop

        handles.append(pts.block[i].register_forward_hook(out_hook))
    if first and stream is not None:

        def in_hook(_m: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            take(("stream", -1), x, acc_for(("stream", -1), g.d_model))

        handles.append(pts.block[group[0]].register_forward_pre_hook(in_hook, with_kwargs=True))
    try:
        with torch.no_grad():
            for inputs, _labels, mask in batches(
                data, loaded.tokenizer, want.batch_size, max_length, device, loaded.image_shape
            ):
                state["mask"] = mask
                for who in ("anchor", "source"):
                    state["who"] = who
                    with contextlib.suppress(_Stop):
                        torch.func.functional_call(loaded.model, params[who], (), inputs)
                n = len(next(iter(inputs.values())))
                if progress is not None:
                    progress(n)
    finally:
        for h in handles:
            h.remove()
    if first:  # rows per point: every point of a layer sees the same tokens
        report.rows = next(
            (m.n for m in moments.values()), stream.n // (len(group) + 1) if stream is not None else 0
        )
    return moments
