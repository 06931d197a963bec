"""Deep-Align's network (Navon et al., ICML 2024): a weight-space encoder equivariant to the permutations of
every hidden layer's units (DWS layers), a projection of its output onto each hidden layer's units, and the
outer product of two networks' unit features per layer, made a soft permutation by Sinkhorn (training) or a
hard one by linear assignment (inference).

A DWS layer maps the weight space of an MLP to itself, equivariantly. The linear maps used here are the ones
that hold for any permutation of a layer's units: each entry's own value, and values pooled (means) over the
units of a layer, carried to the entries that share that layer's unit:

- weight entry (a, b) of layer l: its own channels; unit a's features in layer l; unit b's features in layer
  l-1; the network's global means;
- bias entry a of layer l: its own channels; unit a's features; the global means.

A unit's features are the means of its incoming weights, its bias and the means of its outgoing weights.
The input pixels and output classes are not permuted, so each also gets a learned embedding of its index.
"""

from __future__ import annotations

import torch
from torch import nn

Batch = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: weight [B, d_l, d_l-1, c], bias [B, d_l, c]


def as_batch(nets: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> Batch:
    """Networks (same sizes) stacked, one channel, each layer scaled by its root-mean-square: the scale of a
    layer is not a permutation's business, and the encoder then sees one range of values."""
    out = []
    for layer in zip(*nets, strict=True):
        w = torch.stack([w for w, _ in layer]).float()
        b = torch.stack([b for _, b in layer]).float()
        rms = (w.pow(2).mean((1, 2)) + 1e-12).sqrt()[:, None]
        out.append(((w / rms[..., None])[..., None], (b / rms)[..., None]))
    return out


def unit_features(batch: Batch) -> list[torch.Tensor]:
    """Per neuron layer j = 0..L: [B, d_j, 3c] = (mean incoming weight, bias, mean outgoing weight)."""
    n = len(batch)
    w0 = batch[0][0]
    feats = []
    for j in range(n + 1):
        parts = []
        if j > 0:
            w, b = batch[j - 1]
            parts += [w.mean(2), b]
        else:
            zeros = torch.zeros(w0.shape[0], w0.shape[2], w0.shape[3], dtype=w0.dtype, device=w0.device)
            parts += [zeros, zeros]
        if j < n:
            parts.append(batch[j][0].mean(1))
        else:
            parts.append(torch.zeros_like(parts[-1]))
        feats.append(torch.cat(parts, -1))
    return feats


class DWSLayer(nn.Module):
    def __init__(self, sizes: list[int], c_in: int, c_out: int) -> None:
        super().__init__()
        n = len(sizes) - 1
        self.w_self = nn.ModuleList(nn.Linear(c_in, c_out) for _ in range(n))
        self.w_rows = nn.ModuleList(nn.Linear(3 * c_in, c_out, bias=False) for _ in range(n))
        self.w_cols = nn.ModuleList(nn.Linear(3 * c_in, c_out, bias=False) for _ in range(n))
        self.b_self = nn.ModuleList(nn.Linear(c_in, c_out) for _ in range(n))
        self.b_rows = nn.ModuleList(nn.Linear(3 * c_in, c_out, bias=False) for _ in range(n))
        # messages along the weights: a unit's incoming weights times its sources' features (and outgoing
        # weights times the targets'), summed over the other layer's units: equivariant, and what lets a unit
        # between two hidden layers be told apart by whom it connects to
        self.m_src = nn.ModuleList(nn.Linear(3 * c_in, c_in, bias=False) for _ in range(n))
        self.m_dst = nn.ModuleList(nn.Linear(3 * c_in, c_in, bias=False) for _ in range(n))
        self.m_rows = nn.ModuleList(nn.Linear(c_in, c_out, bias=False) for _ in range(n))
        self.m_cols = nn.ModuleList(nn.Linear(c_in, c_out, bias=False) for _ in range(n))
        self.glob = nn.Linear(2 * n * c_in, 2 * n * c_out, bias=False)
        # the input pixels and output classes are not permuted: a first-layer unit may read its whole row of
        # incoming weights (a last-layer one its column of outgoing weights) through a dense map
        self.first = nn.Linear(sizes[0] * c_in, c_out, bias=False)
        self.last = nn.Linear(sizes[-1] * c_in, c_out, bias=False)
        self.inputs = nn.Parameter(torch.zeros(sizes[0], c_out))  # index embeddings of the fixed units
        self.outputs = nn.Parameter(torch.zeros(sizes[-1], c_out))
        nn.init.normal_(self.inputs, std=0.1)
        nn.init.normal_(self.outputs, std=0.1)

    def forward(self, batch: Batch) -> Batch:
        n = len(batch)
        units = unit_features(batch)
        g = self.glob(
            torch.cat([t.mean((1, 2)) if t.dim() == 4 else t.mean(1) for wb in batch for t in wb], -1)
        )
        gw, gb = g.chunk(2, -1)
        gw, gb = gw.chunk(n, -1), gb.chunk(n, -1)
        w0, wl = batch[0][0], batch[-1][0]
        extra = {1: self.first(w0.reshape(*w0.shape[:2], -1))}  # [B, d_1, c]: first hidden units' rows
        last = self.last(wl.transpose(1, 2).reshape(wl.shape[0], wl.shape[2], -1))  # [B, d_L-1, c]: columns
        extra[n - 1] = extra[n - 1] + last if n - 1 in extra else last
        out = []
        for i, (w, b) in enumerate(batch):
            rows = self.w_rows[i](units[i + 1])  # [B, d_l, c]: unit a of this layer
            cols = self.w_cols[i](units[i])  # [B, d_l-1, c]: unit b of the layer before
            rows = rows + self.m_rows[i]((w * self.m_src[i](units[i])[:, None]).mean(2))
            cols = cols + self.m_cols[i]((w * self.m_dst[i](units[i + 1])[:, :, None]).mean(1))
            if i + 1 in extra:  # never the output layer: extra holds hidden unit layers only
                rows = rows + extra[i + 1]
            if i in extra:
                cols = cols + extra[i]
            if i == 0:
                cols = cols + self.inputs
            if i == n - 1:
                rows = rows + self.outputs
            nw = self.w_self[i](w) + rows[:, :, None] + cols[:, None] + gw[i][:, None, None]
            nb = self.b_self[i](b) + self.b_rows[i](units[i + 1]) + gb[i][:, None]
            if i + 1 in extra:
                nb = nb + extra[i + 1]
            if i == n - 1:
                nb = nb + self.outputs
            out.append((nw, nb))
        return out


def _relu(batch: Batch) -> Batch:
    return [(torch.relu(w), torch.relu(b)) for w, b in batch]


class DeepAlign(nn.Module):
    """Unit features of every hidden layer of a batch of networks: [B, d_j, features] for j = 1..L-1."""

    def __init__(self, sizes: list[int], channels: int = 32, depth: int = 4, features: int = 64) -> None:
        super().__init__()
        self.sizes, self.channels, self.depth, self.features = list(sizes), channels, depth, features
        dims = [1] + [channels] * depth
        self.layers = nn.ModuleList(DWSLayer(self.sizes, a, b) for a, b in zip(dims, dims[1:], strict=False))
        self.project = nn.Sequential(
            nn.Linear(3 * channels, 2 * features), nn.ReLU(), nn.Linear(2 * features, features)
        )

    def config(self) -> dict[str, object]:
        return {
            "sizes": self.sizes,
            "channels": self.channels,
            "depth": self.depth,
            "features": self.features,
        }

    def forward(self, batch: Batch) -> list[torch.Tensor]:
        for k, layer in enumerate(self.layers):
            new = layer(batch)
            if k > 0:  # residual once the widths agree
                new = [(w2 + w1, b2 + b1) for (w2, b2), (w1, b1) in zip(new, batch, strict=True)]
            batch = _relu(new) if k < len(self.layers) - 1 else new
        units = unit_features(batch)
        return [self.project(units[j]) for j in range(1, len(units) - 1)]


def similarities(encoder: DeepAlign, a: Batch, b: Batch) -> list[torch.Tensor]:
    """Per hidden layer, [B, d_j, d_j]: score of pairing unit a of network A with unit b of network B (the
    outer product of their features; swapping A and B transposes it)."""
    fa, fb = encoder(a), encoder(b)
    return [x @ y.transpose(1, 2) / x.shape[-1] ** 0.5 for x, y in zip(fa, fb, strict=True)]


def sinkhorn(scores: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Log of a doubly stochastic matrix near softmax(scores) (rows and columns normalised in turn)."""
    log = scores
    for _ in range(iterations):
        log = log - log.logsumexp(-1, keepdim=True)
        log = log - log.logsumexp(-2, keepdim=True)
    return log
