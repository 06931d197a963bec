"""ArchSpec: a model's family, head geometry and per-layer tensor names, from config.json + its tensors."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mergeflow.arch.families import FAMILIES, Family, family_for
from mergeflow.errors import UnsupportedArchitecture

# roles of the tensors an alignment step may change; ".b" marks a bias
ROLES = ("q", "k", "v", "o", "up", "gate", "down", "qkv", "gate_up")


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    d_model: int
    h_q: int
    h_kv: int
    d_h: int
    rope: str  # none | half | interleaved
    rot_dims: int  # rotary dims per head (even); the rest pass through
    qk_norm: str  # "" (none), "head" or "full": see Family.qk_norm
    qk_fixed: str = ""  # why no query/key transform is exact for this model ("" when some are)

    @property
    def group(self) -> int:
        return self.h_q // self.h_kv

    def planes(self) -> list[tuple[int, int]]:
        """The 2-D frequency planes of a head under RoPE, as index pairs within the head."""
        if self.rope == "none":
            return []
        half = self.rot_dims // 2
        if self.rope == "half":
            return [(i, i + half) for i in range(half)]
        return [(2 * i, 2 * i + 1) for i in range(half)]


@dataclass(frozen=True)
class LayerNames:
    index: int
    names: tuple[tuple[str, str], ...]  # (role, stored tensor name); biases as "q.b" etc.

    def get(self, role: str) -> str | None:
        return dict(self.names).get(role)

    def tensors(self) -> list[str]:
        return [n for _r, n in self.names]


@dataclass(frozen=True)
class ArchSpec:
    family: Family
    geometry: Geometry
    layers: tuple[LayerNames, ...]

    def layer_of(self) -> dict[str, int]:
        return {n: lay.index for lay in self.layers for n in lay.tensors()}

    def ffn_width(self, shape: Callable[[str], Sequence[int]]) -> int:
        """Hidden units of the dense FFN, from ``shape`` (stored name -> shape) of the first layer's up
        projection; 0 where the first layer has none (experts only)."""
        lay = self.layers[0]
        name = lay.get("up") or lay.get("gate_up")
        if name is None:
            return 0
        n = int(shape(name)[1 if self.family.conv1d else 0])
        return n if lay.get("up") else n // 2


def _int(config: Mapping[str, Any], key: str | None, what: str) -> int | None:
    if key is None:
        return None
    v = config.get(key)
    if v is not None and (not isinstance(v, int) or v <= 0):
        raise UnsupportedArchitecture(f"config.json: {key} ({what}) must be a positive integer, got {v!r}")
    return v


def _rotary_fraction(config: Mapping[str, Any]) -> float:
    rp = config.get("rope_parameters") or config.get("rope_scaling") or {}
    frac = config.get(
        "partial_rotary_factor", rp.get("partial_rotary_factor", 1.0) if isinstance(rp, dict) else 1.0
    )
    return float(frac)


def arch_spec(
    config: Mapping[str, Any] | None,
    names: Iterable[str],
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> ArchSpec:
    """Describe a model for alignment; UnsupportedArchitecture says why when it cannot be aligned."""
    if not config:
        raise UnsupportedArchitecture(
            "alignment needs the model's config.json (to know its family and heads)"
        )
    mt = config.get("model_type")
    fam = family_for(mt)
    if fam is None:
        known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
        raise UnsupportedArchitecture(f"model_type {mt!r} cannot be aligned; supported: {known}")
    names = list(names)
    anchor_role = fam.o
    rx = re.compile(rf"^(.*?)\b{fam.layer_stack}\.(\d+)\.{re.escape(anchor_role)}\.weight$")
    prefix = next((m.group(1) for m in map(rx.match, names) if m), None)
    if prefix is None:
        raise UnsupportedArchitecture(
            f"{mt}: no tensor named like '*{fam.layer_stack}.N.{anchor_role}.weight'"
        )
    d = _int(config, fam.hidden_key, "model width")
    h_q = _int(config, fam.heads_key, "attention heads")
    if d is None or h_q is None:
        raise UnsupportedArchitecture(f"config.json lacks {fam.hidden_key} or {fam.heads_key}")
    h_kv = _int(config, fam.kv_heads_key, "key/value heads") or h_q
    d_h = _int(config, "head_dim", "head size") if fam.rope != "none" else None
    d_h = d_h or d // h_q
    if h_q % h_kv:
        raise UnsupportedArchitecture(f"{h_q} query heads do not split into {h_kv} key/value groups")
    rot = 0
    if fam.rope != "none":
        rot = int(d_h * _rotary_fraction(config)) // 2 * 2
    stack = sorted({int(m.group(2)) for m in map(rx.match, names) if m and m.group(1) == prefix})
    present = set(names)
    layers = []
    for i in stack:
        base = f"{prefix}{fam.layer_stack}.{i}."
        roles: list[tuple[str, str]] = []
        paths = {"o": fam.o}
        if fam.qkv:
            paths["qkv"] = fam.qkv
        else:
            paths.update(q=fam.q, k=fam.k, v=fam.v)
        dense = {"down": fam.down}
        if fam.gate_up:
            dense["gate_up"] = fam.gate_up
        else:
            dense["up"] = fam.up
        if fam.gate:
            dense["gate"] = fam.gate
        # with experts, a layer's dense FFN is optional (Qwen2-MoE's dense layers have one, sparse ones not)
        if fam.experts is None or (fam.down and f"{base}{fam.down}.weight" in present):
            paths.update(dense)
        for role, path in paths.items():
            w, b = f"{base}{path}.weight", f"{base}{path}.bias"
            if w not in present:
                raise UnsupportedArchitecture(f"{mt}: layer {i} lacks tensor {w!r}")
            roles.append((role, w))
            if b in present:
                roles.append((f"{role}.b", b))
        roles += _expert_roles(fam, base, present)
        if not any(r == "down" or r.endswith(".down") for r, _n in roles):
            raise UnsupportedArchitecture(f"{mt}: layer {i} has neither an FFN nor experts")
        for role, opt in fam.norm_paths():  # norms: optional, only residual maps change them
            for suffix, r in (("weight", role), ("bias", f"{role}.b")):
                if opt is not None and f"{base}{opt}.{suffix}" in present:
                    roles.append((r, f"{base}{opt}.{suffix}"))
        for role, opt in (("q.norm", fam.q_norm), ("k.norm", fam.k_norm)):  # full QK-norm: follows the heads
            if opt is not None:
                if f"{base}{opt}.weight" not in present:
                    raise UnsupportedArchitecture(f"{mt}: layer {i} lacks tensor {base}{opt}.weight")
                roles.append((role, f"{base}{opt}.weight"))
        layers.append(LayerNames(i, tuple(roles)))
    fixed = ""
    if (
        fam.position_projections
        and config.get("relative_attention")
        and not config.get("share_att_key", False)
    ):
        fixed = (
            "its relative-position terms project with separate pos_query_proj/pos_key_proj weights "
            "(share_att_key is false), which a query/key transform would also have to change"
        )
    geom = Geometry(len(layers), d, h_q, h_kv, d_h, fam.rope, rot, fam.qk_norm, fixed)
    if shapes is not None:
        _check_shapes(fam, geom, layers[0], shapes)
    return ArchSpec(fam, geom, tuple(layers))


def _expert_roles(fam: Family, base: str, present: set[str]) -> list[tuple[str, str]]:
    """Canonical roles of a layer's experts ("e0.up", ...), shared expert ("es.up", ...) and routers."""
    out: list[tuple[str, str]] = []
    groups: list[tuple[str, str]] = []
    e = 0
    while (
        fam.experts is not None and f"{base}{fam.experts.format(e=e)}.{fam.expert_proj[2]}.weight" in present
    ):
        groups.append((f"e{e}.", fam.experts.format(e=e)))
        e += 1
    if fam.shared_expert is not None and f"{base}{fam.shared_expert}.{fam.expert_proj[2]}.weight" in present:
        groups.append(("es.", fam.shared_expert))
    for pre, path in groups:
        for role, proj in zip(("up", "gate", "down"), fam.expert_proj, strict=True):
            for suffix, r in (("weight", role), ("bias", f"{role}.b")):
                name = f"{base}{path}.{proj}.{suffix}"
                if name in present:
                    out.append((pre + r, name))
    for j, router in enumerate(fam.routers):
        if f"{base}{router}.weight" in present:
            out.append((f"router{j}", f"{base}{router}.weight"))
    return out


def _check_shapes(fam: Family, g: Geometry, layer: LayerNames, shapes: Mapping[str, tuple[int, ...]]) -> None:
    def rows(role: str) -> int | None:
        name = layer.get(role)
        if name is None:
            return None
        shape = shapes[name]
        return shape[1] if fam.conv1d else shape[0]

    want = {
        "q": g.h_q * g.d_h,
        "k": g.h_kv * g.d_h,
        "v": g.h_kv * g.d_h,
        "qkv": (g.h_q + 2 * g.h_kv) * g.d_h,
        "q.norm": g.h_q * g.d_h,
        "k.norm": g.h_kv * g.d_h,
    }
    for role, n in want.items():
        got = rows(role)
        if got is not None and got != n:
            raise UnsupportedArchitecture(
                f"tensor {layer.get(role)!r} has {got} output rows; the config's heads "
                f"({g.h_q} x {g.d_h}, {g.h_kv} key/value) need {n}"
            )
    fused = rows("gate_up")
    if fused is not None and fused % 2:
        raise UnsupportedArchitecture(
            f"tensor {layer.get('gate_up')!r} has {fused} output rows, which do not split "
            "into gate and up halves"
        )
