"""The residual stream's map: one permutation or orthogonal matrix shared by every tensor that reads or
writes the stream, solved from the summed cross-correlation of those tensors.

Convention: the map R sends the source model's stream coordinates to the anchor's (``x' = R x``). A tensor
touches the stream along one axis (rows of writers such as ``o``/``down``, columns of readers such as
``q``/``up``, the last axis of embeddings); since R is orthogonal, readers (``W R^T``) and writers
(``R W``) both become "apply R along that axis". The best R for a fixed rest of the model maximises
``<R, M>`` with ``M = sum A_axis B_axis^T`` over all pairs of anchor tensor A and source tensor B:
one linear assignment (permutation), one SVD (orthogonal), or an SVD on the complement of the all-ones
vector (orthogonal maps that keep LayerNorm's centring, see ``solve``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mergeflow.align.base import Layer, module_role
from mergeflow.errors import InputError

# canonical roles that touch the stream, and the axis they touch it on
LAYER_AXES = {
    "q": 1,
    "k": 1,
    "v": 1,
    "up": 1,
    "gate": 1,
    "o": 0,
    "o.b": 0,
    "down": 0,
    "down.b": 0,
    "n1": 0,
    "n1.b": 0,
    "n2": 0,
    "n2.b": 0,
    "n3": 0,
    "n3.b": 0,
    "n4": 0,
    "n4.b": 0,
    "router0": 1,  # a mixture's routers read the stream (rows: experts)
    "router1": 1,
}
# what each pre-norm's output feeds (experts' projections included, see stream_roles)
NORM_READERS = {"n1": ("q", "k", "v"), "n2": ("up", "gate", "router0", "router1")}


def stream_roles(layer: Layer, folded: bool) -> list[tuple[str, int]]:
    """(role, axis) of each of the layer's tensors that touch the stream (an expert's as its dense
    counterpart's); folded pre-norm scales are 1 and move nowhere."""
    out = []
    for role in layer:
        axis = LAYER_AXES.get(module_role(role))
        if axis is not None and not (folded and role in NORM_READERS):
            out.append((role, axis))
    return out


GROUPS = ("permutation", "orthogonal", "orthogonal_centred")


@dataclass(frozen=True, eq=False)
class ResidualMap:
    """x' = R x; a permutation is kept as an index (new[i] = old[perm[i]]), exactly."""

    perm: torch.Tensor | None = None
    matrix: torch.Tensor | None = None

    @staticmethod
    def identity(d: int, device: torch.device | str = "cpu") -> ResidualMap:
        return ResidualMap(perm=torch.arange(d, device=device))

    def as_matrix(self, d: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        if self.matrix is not None:
            return self.matrix.to(dtype)
        assert self.perm is not None
        eye = torch.eye(d, dtype=dtype, device=self.perm.device)
        return eye[self.perm]

    def apply(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        if self.perm is not None:
            return t.index_select(axis, self.perm.to(t.device))
        assert self.matrix is not None
        moved = t.movedim(axis, 0)
        out = (self.matrix.to(t) @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
        return out.movedim(0, axis).contiguous()

    def undo(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        if self.perm is not None:
            inv = torch.empty_like(self.perm)
            inv[self.perm] = torch.arange(len(self.perm), device=self.perm.device)
            return t.index_select(axis, inv.to(t.device))
        assert self.matrix is not None
        return ResidualMap(matrix=self.matrix.T).apply(t, axis)

    def is_identity(self) -> bool:
        if self.perm is not None:
            return bool((self.perm == torch.arange(len(self.perm), device=self.perm.device)).all())
        assert self.matrix is not None
        eye = torch.eye(self.matrix.shape[0], dtype=self.matrix.dtype, device=self.matrix.device)
        return bool(torch.allclose(self.matrix, eye, atol=1e-12))


def cross(anchor: torch.Tensor, local: torch.Tensor, axis: int) -> torch.Tensor:
    """A_axis B_axis^T (d x d): <A, R . B> = <R, this>."""
    a = anchor.movedim(axis, 0).reshape(anchor.shape[axis], -1).to(torch.float64)
    b = local.movedim(axis, 0).reshape(local.shape[axis], -1).to(torch.float64)
    return a @ b.T


def _procrustes(m: torch.Tensor) -> torch.Tensor:
    u, _s, vh = torch.linalg.svd(m)
    return u @ vh


def solve(m: torch.Tensor, group: str) -> ResidualMap:
    """argmax <R, M> over the group. ``orthogonal_centred``: orthogonal maps with R 1 = 1, the ones under
    which LayerNorm's centring commutes (mean and spread of the stream are kept), solved as Procrustes on
    an orthonormal basis of the complement of 1."""
    if group == "permutation":
        from mergeflow.align.permute import assignment

        return ResidualMap(perm=assignment(m.T))  # rows: source coordinates, columns: anchor coordinates
    if group == "orthogonal":
        return ResidualMap(matrix=_procrustes(m))
    if group != "orthogonal_centred":
        raise ValueError(f"unknown residual group {group!r}")
    d = m.shape[0]
    basis = centred_basis(d, m.dtype, m.device)  # (d, d-1)
    u = torch.full((d, 1), d**-0.5, dtype=m.dtype, device=m.device)
    q = _procrustes(basis.T @ m @ basis)
    return ResidualMap(matrix=u @ u.T + basis @ q @ basis.T)


def centred_basis(
    d: int, dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """An orthonormal basis (d, d-1) of the vectors that sum to zero."""
    full = torch.eye(d, dtype=dtype, device=device)
    full[:, 0] = 1.0
    q, _r = torch.linalg.qr(full)
    return q[:, 1:]


def fold_bias(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """A norm's shift once its scale moves into the readers: gamma * xhat + beta = gamma * (xhat + beta / gamma)."""
    live = beta != 0
    if bool((gamma[live] == 0).any()):
        raise InputError(
            "a norm has a zero scale where its shift is not zero; its scale cannot be folded into "
            "its readers (use permute: {residual: true})"
        )
    return torch.where(live, beta / torch.where(live, gamma, torch.ones_like(gamma)), torch.zeros_like(beta))


def fold_layer(layer: Layer, offset: float = 0.0) -> None:
    """Pre-norm layer: the norms' scales into the weights that read them (q/k/v and up/gate columns),
    leaving scales of 1 (and shifts divided by the scales), so that any orthogonal map of the stream
    commutes with the norms. ``offset``: the norm scales by (stored weight + offset), see Family.norm_offset."""
    for norm, readers in NORM_READERS.items():
        if norm not in layer:
            continue
        gamma = layer[norm] + offset
        for r in list(layer):
            if module_role(r) in readers:
                layer[r] = layer[r] * gamma
        if f"{norm}.b" in layer:
            layer[f"{norm}.b"] = fold_bias(layer[f"{norm}.b"], gamma)
        layer[norm] = torch.full_like(gamma, 1.0 - offset)


def apply_layer(layer: Layer, rmap: ResidualMap, folded: bool, undo: bool = False) -> None:
    for role, axis in stream_roles(layer, folded):
        layer[role] = rmap.undo(layer[role], axis) if undo else rmap.apply(layer[role], axis)


def layer_cross(local: Layer, anchor: Layer, folded: bool) -> torch.Tensor | None:
    total = None
    for role, axis in stream_roles(local, folded):
        c = cross(anchor[role], local[role], axis)
        total = c if total is None else total + c
    return total


def map_stream(
    t: torch.Tensor,
    kind: str,
    axis: int,
    rmap: ResidualMap | None,
    fold: bool,
    gamma: torch.Tensor | None,
    offset: float = 0.0,
) -> torch.Tensor:
    """A tensor outside the stack folded (see stream_value) and mapped (a folded final scale stays 1)."""
    t = stream_value(t, kind, fold, gamma, offset)
    return t if rmap is None or (fold and kind == "final_norm") else rmap.apply(t, axis)


def stream_value(
    t: torch.Tensor, kind: str, fold: bool, gamma: torch.Tensor | None, offset: float = 0.0
) -> torch.Tensor:
    """A tensor outside the stack, folded: final-norm scale into the head, the scale itself to 1.
    ``gamma``: the final norm's stored weight; it scales by (gamma + offset)."""
    if fold and kind == "final_norm":
        return torch.full_like(t, 1.0 - offset)
    if fold and kind == "head" and gamma is not None:
        return t * (gamma.to(t) + offset)
    if fold and kind == "final_norm.b" and gamma is not None:
        return fold_bias(t, gamma.to(t) + offset)
    return t
