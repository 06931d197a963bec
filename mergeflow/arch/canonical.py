"""One layer's alignable tensors in a canonical layout, and back.

Canonical: float64 (or float32 when asked), ``nn.Linear`` orientation (out, in): q (h_q*d_h, d), k and v (h_kv*d_h, d),
o (d, h_q*d_h), up/gate (f, d), down (d, f); biases follow their rows; norm weights as stored (a
family's ``norm_offset`` is applied where scales are folded). GPT-2's Conv1D weights are stored
(in, out), GPT-2's c_attn and Phi-3's qkv_proj fuse q, k, v along the output, Phi-3's gate_up_proj
fuses gate and up: all undone here and redone on the way back, so the solvers never see a storage
layout.
"""

from __future__ import annotations

import torch

from mergeflow.arch.spec import ArchSpec, LayerNames


def to_canonical(
    spec: ArchSpec, layer: LayerNames, stored: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64
) -> dict[str, torch.Tensor]:
    """``dtype``: float64 (the default, the reference) or float32 (a recipe's ``align_dtype``)."""
    conv = spec.family.conv1d
    out: dict[str, torch.Tensor] = {}
    for role, name in layer.names:
        t = stored[name].to(dtype)
        if conv and t.ndim == 2:
            t = t.T  # (in, out) -> (out, in)
        out[role] = t.contiguous()
    if "gate_up" in out:
        out["gate"], out["up"] = (part.contiguous() for part in out.pop("gate_up").chunk(2, dim=0))
        if "gate_up.b" in out:
            out["gate.b"], out["up.b"] = (part.contiguous() for part in out.pop("gate_up.b").chunk(2))
    if "qkv" in out:
        g = spec.geometry
        sizes = [g.h_q * g.d_h, g.h_kv * g.d_h, g.h_kv * g.d_h]
        for role, part in zip(("q", "k", "v"), torch.split(out.pop("qkv"), sizes, dim=0), strict=True):
            out[role] = part.contiguous()
        if "qkv.b" in out:
            for role, part in zip(("q.b", "k.b", "v.b"), torch.split(out.pop("qkv.b"), sizes), strict=True):
                out[role] = part.contiguous()
    return out


def from_canonical(
    spec: ArchSpec, layer: LayerNames, canon: dict[str, torch.Tensor], dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    canon = dict(canon)
    if layer.get("qkv") is not None:
        canon["qkv"] = torch.cat([canon.pop("q"), canon.pop("k"), canon.pop("v")], dim=0)
        if "q.b" in canon:
            canon["qkv.b"] = torch.cat([canon.pop("q.b"), canon.pop("k.b"), canon.pop("v.b")])
    if layer.get("gate_up") is not None:
        canon["gate_up"] = torch.cat([canon.pop("gate"), canon.pop("up")], dim=0)
        if "gate.b" in canon:
            canon["gate_up.b"] = torch.cat([canon.pop("gate.b"), canon.pop("up.b")])
    out = {}
    for role, name in layer.names:
        t = canon[role]
        if spec.family.conv1d and t.ndim == 2:
            t = t.T
        out[name] = t.to(dtype).contiguous()
    return out
