"""Apply a known random symmetry to a model: for recovery tests, benchmarks and demos.

The result computes exactly the same function as the input (up to float rounding) but its
weights are far from it; aligning it back to the original must find the planted transform.
"""

from __future__ import annotations

import math

import torch

from mergeflow.align.base import Layer, ffn_prefixes, head_rows, heads
from mergeflow.arch.spec import Geometry


def random_orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))  # Haar-distributed, reflections included


def random_rope_rotation(g: Geometry, gen: torch.Generator) -> torch.Tensor:
    r = torch.zeros(g.d_h, g.d_h, dtype=torch.float64)
    planes = g.planes()
    for p, q in planes:
        phi = float(torch.rand((), generator=gen, dtype=torch.float64)) * 2 * math.pi
        r[p, p] = r[q, q] = math.cos(phi)
        r[p, q], r[q, p] = -math.sin(phi), math.sin(phi)
    rest = sorted(set(range(g.d_h)) - {i for pl in planes for i in pl})
    if rest:
        idx = torch.tensor(rest)
        r[idx.unsqueeze(1), idx.unsqueeze(0)] = random_orthogonal(len(rest), gen)
    return r


def scramble_layer(
    layer: Layer,
    g: Geometry,
    gen: torch.Generator,
    rotate: bool = True,
    permute: bool = True,
    heads_perm: bool = False,
    scale: bool = True,
) -> dict[str, object]:
    """Apply a random symmetry to one canonical layer in place; returns what was applied."""
    planted: dict[str, object] = {}
    if heads_perm:
        perm = torch.randperm(g.h_kv, generator=gen)
        kv = torch.cat([torch.arange(g.d_h) + int(p) * g.d_h for p in perm])
        q = torch.cat([torch.arange(g.group * g.d_h) + int(p) * g.group * g.d_h for p in perm])
        for role, idx in head_rows(q, kv):
            if role in layer:
                layer[role] = layer[role][idx]
        layer["o"] = layer["o"][:, q]
        planted["heads"] = perm
    for j in range(g.h_kv):
        kj = heads(g.h_kv, g.d_h, j)
        qs = [heads(g.h_q, g.d_h, i) for i in range(j * g.group, (j + 1) * g.group)]
        if rotate:
            if not g.qk_norm:
                r = random_rope_rotation(g, gen) if g.rope != "none" else random_orthogonal(g.d_h, gen)
                for role, rows in [("k", kj), ("k.b", kj)] + [(x, qi) for qi in qs for x in ("q", "q.b")]:
                    if role in layer:
                        layer[role][rows] = r @ layer[role][rows]
            r = random_orthogonal(g.d_h, gen)
            for role in ("v", "v.b"):
                if role in layer:
                    layer[role][kj] = r @ layer[role][kj]
            for qi in qs:
                layer["o"][:, qi] = layer["o"][:, qi] @ r.T
        if scale:
            a, b = [
                float(x) * (1 if float(torch.rand((), generator=gen)) < 0.7 else -1)
                for x in 0.5 + 1.5 * torch.rand(2, generator=gen, dtype=torch.float64)
            ]
            for role, rows, f in [("k", kj, 1 / a), ("k.b", kj, 1 / a), ("v", kj, b), ("v.b", kj, b)] + [
                (x, qi, a) for qi in qs for x in ("q", "q.b")
            ]:
                if role in layer and not (g.qk_norm and role[0] in "qk"):
                    layer[role][rows] *= f
            for qi in qs:
                layer["o"][:, qi] /= b
    if permute:
        for pre in ffn_prefixes(layer):  # the dense FFN and each expert, independently
            perm = torch.randperm(layer[pre + "down"].shape[1], generator=gen)
            for role in ("up", "up.b", "gate", "gate.b"):
                if pre + role in layer:
                    layer[pre + role] = layer[pre + role][perm]
            layer[pre + "down"] = layer[pre + "down"][:, perm]
            planted[pre + "ffn"] = perm
    return planted
